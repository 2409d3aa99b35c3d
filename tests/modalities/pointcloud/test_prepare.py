"""tools/prepare_*.py on small archives in the published layouts, generated here (offline)."""

from __future__ import annotations

import importlib.util
import tarfile
import zipfile
from pathlib import Path

import h5py
import numpy as np
import torch

from omniclip.modalities.pointcloud.datasets import build_dataset
from tests.modalities.pointcloud.test_datasets import (
    identity_transform,
    make_modelnet40,
    make_scanobjectnn,
    make_ulip_shapenet,
)

TOOLS = Path(__file__).parents[3] / "tools"


def load_tool(name: str):
    spec = importlib.util.spec_from_file_location(name, TOOLS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def zip_tree(src: Path, archive: Path, top: str) -> Path:
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(src.rglob("*")):
            if path.is_file():
                zf.write(path, f"{top}/{path.relative_to(src).as_posix()}")
        zf.writestr(f"__MACOSX/{top}/._junk", b"\x00")
    return archive


def test_modelnet40_resampled_zip(tmp_path, capsys):
    tool = load_tool("prepare_modelnet40")
    src = make_modelnet40(tmp_path / "src")
    archive = zip_tree(src, tmp_path / "modelnet40_normal_resampled.zip", "modelnet40_normal_resampled")
    assert tool.main([str(archive), str(tmp_path / "out")]) == 0
    assert "4 train, 4 test shapes" in capsys.readouterr().out
    cfg = {"name": "modelnet40", "num_points": None, "min_points": 8}
    ours, theirs = (build_dataset({**cfg, "root": str(r)}, "test") for r in (tmp_path / "out", src))
    assert torch.equal(ours[3]["inputs"], theirs[3]["inputs"]) and ours[3]["label"] == theirs[3]["label"]


def test_modelnet40_princeton_off_zip(tmp_path):
    tool = load_tool("prepare_modelnet40")
    square = "OFF\n4 2 0\n0 0 0\n1 0 0\n0 1 0\n1 1 0\n3 0 1 2\n3 1 3 2\n"
    archive = tmp_path / "ModelNet40.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for cls, split, n in [("chair", "train", 1), ("chair", "test", 2), ("airplane", "train", 3), ("bed", "test", 4)]:
            zf.writestr(f"ModelNet40/{cls}/{split}/{cls}_{n:04d}.off", square)
        zf.writestr("ModelNet40/README.txt", "ModelNet40")
    counts = tool.prepare(archive, tmp_path / "out")
    assert counts == {"train": 2, "test": 2}
    out = tmp_path / "out"
    assert (out / "modelnet40_shape_names.txt").read_text().split() == ["airplane", "bed", "chair"]
    assert (out / "modelnet40_test.txt").read_text().split() == ["bed_0004", "chair_0002"]
    ds = build_dataset({"name": "modelnet40", "root": str(out), "num_points": 40}, "test")
    assert ds.suffix == ".off" and ds[1]["label"] == 2 and ds[1]["inputs"].shape == (40, 3)


def test_modelnet40_bad_inputs_say_what_to_download(tmp_path, capsys):
    tool = load_tool("prepare_modelnet40")
    assert tool.main([str(tmp_path / "missing.zip"), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "missing.zip not found" in err and "modelnet40_normal_resampled.zip" in err
    with zipfile.ZipFile(tmp_path / "other.zip", "w") as zf:
        zf.writestr("something/else.txt", "x")
    assert tool.main([str(tmp_path / "other.zip"), str(tmp_path / "out")]) == 2
    assert "holds neither modelnet40_shape_names.txt" in capsys.readouterr().err


def test_scanobjectnn_h5_zip(tmp_path, capsys):
    tool = load_tool("prepare_scanobjectnn")
    src = make_scanobjectnn(tmp_path / "h5_files")
    archive = zip_tree(src, tmp_path / "h5_files.zip", "h5_files")
    assert tool.main([str(archive), str(tmp_path / "out")]) == 0
    assert "main_split/test_objectdataset.h5: 6 clouds" in capsys.readouterr().out
    ds = build_dataset({"name": "scanobjectnn", "root": str(tmp_path / "out"), "min_points": 8, "num_points": None}, "test")
    assert len(ds) == 6 and ds[2]["label"] == 8
    with h5py.File(src / "main_split" / "test_objectdataset.h5", "r+") as h5:
        del h5["label"]
    broken = zip_tree(src, tmp_path / "broken.zip", "h5_files")
    assert tool.main([str(broken), str(tmp_path / "out2")]) == 2
    assert "test_objectdataset.h5: no `data` and `label` datasets" in capsys.readouterr().err


def test_ulip_tar_and_zip_archives(tmp_path, capsys):
    tool = load_tool("prepare_ulip")
    src = make_ulip_shapenet(tmp_path / "src")
    clouds = tmp_path / "shapenet-55.tar.gz"
    with tarfile.open(clouds, "w:gz") as tf:
        for name in ("train.txt", "test.txt", "taxonomy.json", "shapenet_pc"):
            tf.add(src / name, f"ULIP/shapenet-55/{name}")
    images = tmp_path / "rendered_images.zip"
    with zipfile.ZipFile(images, "w") as zf:
        for path in sorted((src / "rendered_images").rglob("*.png")):
            zf.write(path, f"only_rgb_depth_images/{path.relative_to(src).as_posix()}")
    out = tmp_path / "out"
    assert tool.main([str(out), str(clouds), str(images)]) == 0
    assert "3 train, 3 test clouds, 6 models with rendered views" in capsys.readouterr().out
    cfg = {"name": "ulip_shapenet", "num_points": 32, "min_points": 8, "augment": None}
    ours = build_dataset({**cfg, "root": str(out)}, "test", image_transform=identity_transform)
    theirs = build_dataset({**cfg, "root": str(src)}, "test", image_transform=identity_transform)
    np.random.seed(0)
    a = ours[1]
    np.random.seed(0)
    b = theirs[1]
    assert torch.equal(a["inputs"], b["inputs"]) and torch.equal(a["image"], b["image"]) and a["text"] == b["text"]


def test_ulip_missing_pieces(tmp_path, capsys):
    tool = load_tool("prepare_ulip")
    src = make_ulip_shapenet(tmp_path / "src", per_synset=1)
    buffer = tmp_path / "partial.zip"
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("shapenet-55/train.txt", (src / "train.txt").read_text())
        zf.writestr("shapenet-55/test.txt", (src / "test.txt").read_text())
    assert tool.main([str(tmp_path / "out"), str(buffer)]) == 2
    assert "no taxonomy.json" in capsys.readouterr().err
    with zipfile.ZipFile(buffer, "a") as zf:
        zf.writestr("shapenet-55/taxonomy.json", (src / "taxonomy.json").read_text())
    assert tool.main([str(tmp_path / "out"), str(buffer)]) == 2
    assert "train.txt lists 1 clouds absent from shapenet_pc/" in capsys.readouterr().err
    (tmp_path / "junk.bin").write_bytes(b"junk")
    assert tool.main([str(tmp_path / "out"), str(tmp_path / "junk.bin")]) == 2
    assert "neither a zip nor a tar archive" in capsys.readouterr().err
