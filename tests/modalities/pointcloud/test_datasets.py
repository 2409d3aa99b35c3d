"""Point-cloud datasets on small files in their published layouts, generated here.

The ``make_*`` helpers are also used by the recipe and preparation tests.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

from omniclip.data import SeededDataset
from omniclip.errors import ConfigError, SampleError
from omniclip.modalities.pointcloud.datasets import CloudOptions, ULIPShapeNet, build_dataset
from omniclip.modalities.pointcloud.templates import ULIP_TEMPLATES

MODELNET_CLASSES = [line.strip() for line in (
    Path(__file__).parents[3] / "modalities/pointcloud/classnames/modelnet40.txt").read_text().splitlines()]
SYNSETS = {"02691156": "airplane,aeroplane,plane", "03001627": "chair"}


def cloud(n: int, seed: int, channels: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    pts = rng.normal(size=(n, 3)) * (1 + seed % 3)
    if channels == 6:
        pts = np.concatenate([pts, rng.random((n, 3))], axis=1)
    return pts.astype(np.float32)


def make_modelnet40(root: Path, per_split: int = 4, points: int = 80) -> Path:
    """``modelnet40_normal_resampled`` layout: shape names, split files, ``x,y,z,nx,ny,nz`` .txt files."""
    root.mkdir(parents=True, exist_ok=True)
    names = [c.replace(" ", "_") for c in MODELNET_CLASSES]
    (root / "modelnet40_shape_names.txt").write_text("\n".join(names) + "\n")
    for split, offset in (("train", 0), ("test", 100)):
        ids = [f"{names[i * 7 % 40]}_{offset + i + 1:04d}" for i in range(per_split)]
        (root / f"modelnet40_{split}.txt").write_text("\n".join(ids) + "\n")
        for i, shape_id in enumerate(ids):
            folder = root / shape_id.rsplit("_", 1)[0]
            folder.mkdir(exist_ok=True)
            xyz = cloud(points, offset + i)
            normals = -np.abs(np.random.default_rng(i).normal(size=(points, 3)))
            np.savetxt(folder / f"{shape_id}.txt", np.concatenate([xyz, normals], 1), fmt="%.6f", delimiter=",")
    return root


def make_scanobjectnn(root: Path, count: int = 6, points: int = 64) -> Path:
    """``h5_files/main_split/{training,test}_objectdataset.h5`` with ``data`` and ``label``."""
    folder = root / "main_split"
    folder.mkdir(parents=True, exist_ok=True)
    for prefix in ("training", "test"):
        with h5py.File(folder / f"{prefix}_objectdataset.h5", "w") as h5:
            h5["data"] = np.stack([cloud(points, i) for i in range(count)])
            h5["label"] = (np.arange(count) * 4 % 15).astype(np.uint8)
    return root


def make_ulip_shapenet(root: Path, per_synset: int = 3, points: int = 64) -> Path:
    """ULIP shapenet-55: taxonomy.json, split lists, shapenet_pc/*.npy, rendered_images/<id>/<id>_r_<deg>*.png."""
    root.mkdir(parents=True, exist_ok=True)
    taxonomy = [{"synsetId": s, "name": n, "children": [], "numInstances": per_synset} for s, n in SYNSETS.items()]
    (root / "taxonomy.json").write_text(json.dumps(taxonomy))
    files = [f"{s}-model{i:02d}.npy" for s in SYNSETS for i in range(per_synset)]
    (root / "train.txt").write_text("\n".join(files[::2]) + "\n")
    (root / "test.txt").write_text("\n".join(files[1::2]) + "\n")
    (root / "shapenet_pc").mkdir(exist_ok=True)
    for i, name in enumerate(files):
        np.save(root / "shapenet_pc" / name, cloud(points, i))
        stem = name[:-4]
        folder = root / "rendered_images" / stem
        folder.mkdir(parents=True, exist_ok=True)
        for deg in range(0, 360, 12):
            for kind in ("", "_depth0001"):
                Image.new("RGB", (8, 8), (i * 40 % 256, deg % 256, 128)).save(folder / f"{stem}_r_{deg:03d}{kind}.png")
    return root


def make_objaverse_lvis(root: Path, count: int = 6, points: int = 64) -> Path:
    """OpenShape-style ``lvis.json`` (uid, category, data_path with the release prefix) + .npy clouds."""
    (root / "clouds").mkdir(parents=True, exist_ok=True)
    entries = []
    for i in range(count):
        np.save(root / "clouds" / f"uid{i}.npy", cloud(points, i, channels=6))
        entries.append({"uid": f"uid{i}", "category": ["zebra", "apple", "kite"][i % 3],
                        "data_path": f"/mnt/data/objaverse-processed/clouds/uid{i}.npy", "group": 0})
    (root / "lvis.json").write_text(json.dumps(entries))
    return root


def make_objaverse_triplets(root: Path, count: int = 6, points: int = 64) -> Path:
    """A ``triplets.jsonl`` manifest of {pc, images, texts} with .npy clouds and .png views."""
    (root / "pc").mkdir(parents=True, exist_ok=True)
    (root / "img").mkdir(exist_ok=True)
    lines = []
    for i in range(count):
        np.save(root / "pc" / f"o{i}.npy", cloud(points, i, channels=6))
        images = []
        for v in range(2):
            Image.new("RGB", (8, 8), (i * 30, v * 100, 50)).save(root / "img" / f"o{i}_{v}.png")
            images.append(f"img/o{i}_{v}.png")
        lines.append(json.dumps({"pc": f"pc/o{i}.npy", "images": images, "texts": [f"object {i}", f"thing {i}"]}))
    (root / "triplets.jsonl").write_text("\n".join(lines) + "\n")
    return root


def identity_transform(img: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(img, dtype=np.float32).copy()).permute(2, 0, 1) / 255


def unit_sphere(points: np.ndarray) -> np.ndarray:
    xyz = points[:, :3] - points[:, :3].mean(0)
    return xyz / np.linalg.norm(xyz, axis=1).max()


# ----------------------------------------------------------------------------------------------- ModelNet40


def test_modelnet40_reads_resampled_txt_with_labels_and_unit_sphere(tmp_path):
    root = make_modelnet40(tmp_path / "mn40")
    ds = build_dataset({"name": "modelnet40", "root": str(root), "num_points": None, "min_points": 8}, "test")
    assert len(ds) == 4 and len(ds.class_names) == 40 and ds.class_names[16] == "glass box"
    sample = ds[1]
    shape_id = (root / "modelnet40_test.txt").read_text().split()[1]
    raw = np.loadtxt(root / shape_id.rsplit("_", 1)[0] / f"{shape_id}.txt", delimiter=",")
    np.testing.assert_allclose(sample["inputs"].numpy(), unit_sphere(raw[:, :3]), atol=1e-5)  # normals dropped
    assert sample["label"] == MODELNET_CLASSES.index(shape_id.rsplit("_", 1)[0].replace("_", " "))
    assert sample["path"].endswith(f"{shape_id}.txt")


def test_modelnet40_fps_and_colour_fill(tmp_path):
    root = make_modelnet40(tmp_path / "mn40")
    ds = build_dataset({"name": "modelnet40", "root": str(root), "num_points": 16, "sampling": "fps",
                        "with_color": True, "min_points": 8}, "test")
    a, b = SeededDataset(ds, seed=0)[(0, 2)], SeededDataset(ds, seed=0)[(0, 2)]
    assert torch.equal(a["inputs"], b["inputs"]) and a["inputs"].shape == (16, 6)
    assert torch.all(a["inputs"][:, 3:] == 0.4)
    assert a["inputs"][:, :3].norm(dim=1).max() == pytest.approx(1.0, abs=1e-5)


def test_modelnet40_reads_off_meshes(tmp_path):
    root = tmp_path / "mn40"
    root.mkdir()
    (root / "modelnet40_shape_names.txt").write_text("\n".join(c.replace(" ", "_") for c in MODELNET_CLASSES))
    (root / "modelnet40_test.txt").write_text("chair_0001\n")
    (root / "chair").mkdir()
    (root / "chair" / "chair_0001.off").write_text("OFF4 2 0\n0 0 0\n1 0 0\n0 1 0\n1 1 0\n3 0 1 2\n3 1 3 2\n")
    sample = build_dataset({"name": "modelnet40", "root": str(root), "num_points": 50}, "test")[0]
    assert sample["inputs"].shape == (50, 3) and torch.all(sample["inputs"][:, 2] == 0)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", r"empty file"),
        ("1,2,3\nnan,0,0\n" + "0,0,1\n" * 40, r"1 of 42 points have NaN or inf coordinates"),
        ("1,2,3,4\n", r"expected 3 \(xyz\) or 6 .* columns, got 4"),
        ("0,0,0\n1,1,1\n", r"2 points, fewer than min_points=32"),
        ("0,0,0\n" * 40, r"degenerate cloud: all points coincide"),
    ],
)
def test_modelnet40_bad_files_raise_sample_error_naming_the_file(tmp_path, content, message):
    root = make_modelnet40(tmp_path / "mn40")
    shape_id = (root / "modelnet40_test.txt").read_text().split()[0]
    path = root / shape_id.rsplit("_", 1)[0] / f"{shape_id}.txt"
    path.write_text(content)
    ds = build_dataset({"name": "modelnet40", "root": str(root), "num_points": 64}, "test")
    with pytest.raises(SampleError, match=message) as info:
        ds[0]
    assert info.value.path == str(path)


def test_modelnet40_missing_file_named_in_split_list(tmp_path):
    root = make_modelnet40(tmp_path / "mn40")
    shape_id = (root / "modelnet40_test.txt").read_text().split()[2]
    (root / shape_id.rsplit("_", 1)[0] / f"{shape_id}.txt").unlink()
    with pytest.raises(SampleError, match=rf"{shape_id}\.txt: file not found"):
        build_dataset({"name": "modelnet40", "root": str(root)}, "test")[2]


def test_modelnet40_construction_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"config `root`: folder .*nowhere does not exist"):
        build_dataset({"name": "modelnet40", "root": str(tmp_path / "nowhere")}, "test")
    root = make_modelnet40(tmp_path / "mn40")
    (root / "modelnet40_test.txt").unlink()
    with pytest.raises(ConfigError, match=r"config `root`: .*modelnet40_test.txt not found \(expected the "
                                          r"modelnet40_normal_resampled layout"):
        build_dataset({"name": "modelnet40", "root": str(root)}, "test")
    with pytest.raises(ConfigError, match=r"config `split`: `val` is not one of \('train', 'test'\)"):
        build_dataset({"name": "modelnet40", "root": str(root)}, "val")
    with pytest.raises(ConfigError, match=r"config `colour`: unknown option for dataset `modelnet40`"):
        build_dataset({"name": "modelnet40", "root": str(root), "colour": True}, "train")
    with pytest.raises(ConfigError, match=r"config `name`: unknown point-cloud dataset `shapenet`"):
        build_dataset({"name": "shapenet", "root": str(root)}, "train")


def test_train_split_augments_reproducibly_per_sample(tmp_path):
    root = make_modelnet40(tmp_path / "mn40")
    cfg = {"name": "modelnet40", "root": str(root), "num_points": None, "min_points": 8, "augment": {}}
    seeded = SeededDataset(build_dataset(cfg, "train"), seed=3)
    plain = build_dataset({**cfg, "augment": None}, "train")
    a, b = seeded[(0, 1)]["inputs"], seeded[(0, 1)]["inputs"]
    assert torch.equal(a, b)
    assert not torch.equal(a, seeded[(1, 1)]["inputs"])  # another epoch, another augmentation
    assert not torch.allclose(a, plain[1]["inputs"])


# ----------------------------------------------------------------------------------------------- ScanObjectNN


def test_scanobjectnn_reads_h5_split(tmp_path):
    root = make_scanobjectnn(tmp_path / "h5_files")
    ds = build_dataset({"name": "scanobjectnn", "root": str(root), "num_points": None, "min_points": 8}, "test")
    assert len(ds) == 6
    sample = ds[3]
    assert sample["label"] == 12
    np.testing.assert_allclose(sample["inputs"].numpy(), unit_sphere(cloud(64, 3)), atol=1e-5)
    assert sample["path"].endswith("main_split/test_objectdataset.h5[3]")


def test_scanobjectnn_bad_cloud_and_missing_variant(tmp_path):
    root = make_scanobjectnn(tmp_path / "h5_files")
    with h5py.File(root / "main_split" / "test_objectdataset.h5", "r+") as h5:
        data = h5["data"][()]
        data[2, 5, 1] = np.inf
        h5["data"][...] = data
    ds = build_dataset({"name": "scanobjectnn", "root": str(root), "min_points": 8}, "test")
    with pytest.raises(SampleError, match=r"test_objectdataset\.h5\[2\]: 1 of 64 points have NaN or inf values"):
        ds[2]
    with pytest.raises(ConfigError, match=r"config `root`: .*main_split_nobg/training_objectdataset_augmentedrot"
                                          r"_scale75\.h5 not found"):
        build_dataset({"name": "scanobjectnn", "root": str(root), "variant": "main_split_nobg",
                       "file": "objectdataset_augmentedrot_scale75"}, "train")


# ----------------------------------------------------------------------------------------------- ULIP ShapeNet


def test_ulip_shapenet_triplet_has_image_caption_and_content_key(tmp_path):
    root = make_ulip_shapenet(tmp_path / "shapenet-55")
    ds = build_dataset({"name": "ulip_shapenet", "root": str(root), "num_points": 32, "min_points": 8},
                       "train", image_transform=identity_transform)
    assert len(ds) == 6  # whole: test list + train list, as the reference trains
    sample = SeededDataset(ds, seed=0)[(0, 0)]
    name = ds.files[0]
    synset, model = name[:-4].split("-", 1)
    key = sample["image_key"]
    assert key.startswith(f"rendered_images/{synset}-{model}/{synset}-{model}_r_") and key.endswith(".png")
    expected = identity_transform(Image.open(root / key).convert("RGB"))
    assert torch.equal(sample["image"], expected)
    words = SYNSETS[synset].split(",")
    assert any(sample["text"] == t.format(w) for t in ULIP_TEMPLATES for w in words)
    assert sample["inputs"].shape == (32, 3)


def test_ulip_shapenet_without_transform_and_bad_entries(tmp_path):
    root = make_ulip_shapenet(tmp_path / "shapenet-55")
    ds = ULIPShapeNet(root, "test", CloudOptions(num_points=16, min_points=8), None)
    assert "image" not in ds[0] and len(ds) == 3
    first = ds.files[0][:-4]
    for png in (root / "rendered_images" / first).glob("*.png"):
        png.write_bytes(b"not a png")
    with_images = build_dataset({"name": "ulip_shapenet", "root": str(root), "num_points": 16, "min_points": 8},
                                "test", image_transform=identity_transform)
    with pytest.raises(SampleError, match=rf"{first}_r_\d{{3}}.*\.png: unreadable image"):
        with_images[0]
    (root / "test.txt").write_text("09999999-ghost.npy\n")
    with pytest.raises(SampleError, match=r"ghost\.npy: synset `09999999` is not in taxonomy\.json"):
        build_dataset({"name": "ulip_shapenet", "root": str(root)}, "test")[0]
    (root / "taxonomy.json").unlink()
    with pytest.raises(ConfigError, match=r"config `root`: .*taxonomy\.json not found"):
        build_dataset({"name": "ulip_shapenet", "root": str(root)}, "test")


# ----------------------------------------------------------------------------------------------- Objaverse


def test_objaverse_lvis_class_names_from_annotation_and_prefix_mapping(tmp_path):
    root = make_objaverse_lvis(tmp_path / "lvis")
    ds = build_dataset({"name": "objaverse_lvis", "root": str(root), "num_points": 64, "with_color": True,
                        "min_points": 8, "swap_yz": True}, "test")
    assert ds.class_names == ["apple", "kite", "zebra"]
    sample = ds[1]
    assert sample["label"] == 0 and sample["path"] == str(root / "clouds" / "uid1.npy")
    raw = cloud(64, 1, channels=6)
    expected = np.concatenate([unit_sphere(raw[:, [0, 2, 1]]), raw[:, 3:]], axis=1)
    np.testing.assert_allclose(sample["inputs"].numpy(), expected, atol=1e-5)


def test_objaverse_lvis_openshape_pickled_dicts_need_trust(tmp_path):
    root = make_objaverse_lvis(tmp_path / "lvis", count=1)
    raw = cloud(40, 0, channels=6)
    np.save(root / "clouds" / "uid0.npy", np.array({"xyz": raw[:, :3], "rgb": raw[:, 3:] * 255}, dtype=object))
    cfg = {"name": "objaverse_lvis", "root": str(root), "num_points": None, "with_color": True, "min_points": 8}
    with pytest.raises(SampleError, match=r"uid0\.npy: holds a pickled object .*set trust_pickle: true"):
        build_dataset(cfg, "test")[0]
    sample = build_dataset({**cfg, "trust_pickle": True}, "test")[0]
    np.testing.assert_allclose(sample["inputs"][:, 3:].numpy(), raw[:, 3:], atol=1e-5)


def test_objaverse_lvis_csv_annotation_and_missing_file(tmp_path):
    root = make_objaverse_lvis(tmp_path / "lvis", count=2)
    (root / "lvis.csv").write_text("uid,category,data_path\nuid0,zebra,clouds/uid0.npy\nuid9,kite,clouds/uid9.npy\n")
    ds = build_dataset({"name": "objaverse_lvis", "root": str(root), "annotation": "lvis.csv", "min_points": 8}, "test")
    assert ds.class_names == ["kite", "zebra"] and ds[0]["label"] == 1
    with pytest.raises(SampleError, match=r"uid9\.npy: file not found"):
        ds[1]
    with pytest.raises(ConfigError, match=r"config `annotation`: .*nope\.json not found"):
        build_dataset({"name": "objaverse_lvis", "root": str(root), "annotation": "nope.json"}, "test")


def test_objaverse_triplets_sample_image_and_caption(tmp_path):
    root = make_objaverse_triplets(tmp_path / "objaverse")
    ds = build_dataset({"name": "objaverse_triplets", "root": str(root), "num_points": 32, "with_color": True,
                        "min_points": 8}, "train", image_transform=identity_transform)
    sample = SeededDataset(ds, seed=1)[(0, 4)]
    assert sample["text"] in ("object 4", "thing 4")
    assert sample["image_key"] in ("img/o4_0.png", "img/o4_1.png")
    assert sample["inputs"].shape == (32, 6)
    (root / "pc" / "o5.npy").unlink()
    with pytest.raises(SampleError, match=r"o5\.npy: file not found"):
        ds[5]
    (root / "triplets.jsonl").write_text(json.dumps({"images": []}) + "\n")
    with pytest.raises(ConfigError, match=r"config `manifest`: .*entry 1 has no `pc`"):
        build_dataset({"name": "objaverse_triplets", "root": str(root)}, "train")
