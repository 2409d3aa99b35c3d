"""The bad point-cloud files and manifests of issue 7, generated here, each with its exact outcome.

Every file is built by its case (no binary fixture is committed); the bombs are tiny on disk and
run under a memory limit, the FIFO under a time limit, so a missing guard fails the test rather
than the machine.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import struct
import zipfile
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch

from omniclip.data import SafeDataset, Skipped, collate_skipping
from omniclip.errors import ConfigError, SampleError
from omniclip.modalities.pointcloud import PointCloudModality, build_tokenizer, datasets
from omniclip.modalities.pointcloud.datasets import CloudOptions, build_dataset
from omniclip.modalities.pointcloud.io import normalize_unit_sphere, read_point_cloud
from tests.modalities.limits import memory_limit, time_limit
from tests.modalities.pointcloud.test_datasets import (
    cloud,
    make_modelnet40,
    make_objaverse_lvis,
    make_objaverse_triplets,
    make_ulip_shapenet,
)
from tests.modalities.pointcloud.test_io import XYZ, pcd_header, ply_header

NORMALS = -np.abs(np.random.default_rng(5).normal(size=(7, 3)))


def npy_bytes(header: dict, body: bytes = b"") -> bytes:
    """A .npy file with a header written by hand (it may claim any shape)."""
    out = io.BytesIO()
    np.lib.format.write_array_header_1_0(out, header)
    return out.getvalue() + body


def zipped(name: str, data: bytes, compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression) as archive:
        archive.writestr(name, data)
    return out.getvalue()


def corrupt_crc_npz() -> bytes:
    out = io.BytesIO()
    np.savez(out, xyz=XYZ)  # stored, not compressed: the last data byte is a coordinate byte
    raw = bytearray(out.getvalue())
    at = raw.find(XYZ.tobytes()) + len(XYZ.tobytes()) - 1
    raw[at] ^= 0xFF
    return bytes(raw)


def pcd_more_fields_than_sizes() -> bytes:
    head = pcd_header("x y z", "4 4 4", "F F F", 7, "binary").replace(b"FIELDS x y z", b"FIELDS x y z rgb")
    head = head.replace(b"COUNT 1 1 1", b"COUNT 1 1 1 1")
    return head + np.concatenate([XYZ, np.zeros((7, 1), np.float32)], 1).tobytes()


# name, file name, contents, read_point_cloud kwargs, the exact problem
CORPUS: list[tuple[str, str, Callable[[], bytes], dict, str]] = [
    ("ply_vertex_count_minus_one", "neg.ply",
     lambda: ply_header("binary_little_endian", -1, False) + XYZ.tobytes(), {},
     "PLY element 'vertex' declares -1 items (a count must be >= 0)"),
    ("ply_binary_count_below_data", "short.ply",
     lambda: ply_header("binary_little_endian", 5, False) + XYZ.tobytes(), {},
     "binary PLY has 24 bytes after its last element 'vertex': the header's element counts are below the data"),
    ("ply_ascii_count_below_data", "short_ascii.ply",
     lambda: ply_header("ascii", 5, False) + "".join(f"{x} {y} {z}\n" for x, y, z in XYZ.tolist()).encode(), {},
     "ascii PLY has 2 lines after its last element 'vertex': the header's element counts are below the data"),
    ("off_negative_count", "neg.off", lambda: b"OFF\n-2 0 0\n0 0 0\n1 1 1\n2 2 2\n", {},
     "OFF counts line '-2 0 0' declares a negative count"),
    ("pcd_fields_outnumber_size_type", "fields.pcd", pcd_more_fields_than_sizes, {},
     "PCD header lists 4 FIELDS, 3 SIZE, 3 TYPE, 4 COUNT entries; each field needs one SIZE, TYPE and COUNT"),
    ("pcd_points_minus_one", "neg.pcd",
     lambda: pcd_header("x y z", "4 4 4", "F F F", -1, "binary") + XYZ.tobytes(), {},
     "PCD header declares -1 points (a count must be >= 0)"),
    ("pcd_size_zero", "size0.pcd",
     lambda: pcd_header("x y z", "4 4 0", "F F F", 7, "binary") + XYZ.tobytes(), {},
     "PCD header declares SIZE [4, 4, 0] and COUNT [1, 1, 1]; each must be >= 1"),
    ("float64_beyond_float32", "huge.npy",
     lambda: npy_bytes({"descr": "<f8", "fortran_order": False, "shape": (7, 3)},
                       np.where(np.arange(21).reshape(7, 3) == 4, 1e300, XYZ.astype("<f8")).tobytes()), {},
     "1 of 7 points have coordinates beyond float32's range (largest magnitude 1e+300 > 3.4e+38)"),
    ("float64_beyond_float32_text", "huge.txt", lambda: b"0 0 0\n1 2 3\n4e39 0 1\n", {},
     "1 of 3 points have coordinates beyond float32's range (largest magnitude 4e+39 > 3.4e+38)"),
    ("text_file_named_npy", "text.npy", lambda: b"1 2 3\n4 5 6\n", {},
     "the file is not a NumPy .npy array (no \\x93NUMPY magic; starts with b'1 2 3\\n')"),
    ("raw_pickle_named_npy", "pickle.npy", lambda: pickle.dumps({"xyz": XYZ}), {},
     "the file holds a pickled object, which is never loaded (not a NumPy array)"),
    ("npy_header_claims_more_than_the_file", "claims.npy",
     lambda: npy_bytes({"descr": "<f4", "fortran_order": False, "shape": (1000, 3)}, XYZ.tobytes()), {},
     "truncated .npy: header declares shape [1000, 3] (12000 bytes), 84 bytes follow"),
    ("npy_header_bomb", "bomb.npy",
     lambda: npy_bytes({"descr": "<f8", "fortran_order": False, "shape": (10**11, 3)}, XYZ.tobytes()), {},
     "the file declares shape [100000000000, 3] of float64 (2400000000000 bytes), more than the "
     "1073741824-byte limit (max_bytes)"),
    ("corrupt_npz", "corrupt.npz", lambda: b"PK\x03\x04" + bytes(range(200)), {},
     "not a valid .npz (zip) archive (File is not a zip file)"),
    ("npz_bad_crc", "crc.npz", corrupt_crc_npz, {},
     "unreadable .npz member 'xyz.npy' (BadZipFile: Bad CRC-32 for file 'xyz.npy')"),
    # 2.4 TB declared by the member's .npy header, 8 MB inflated, 8 kB on disk
    ("npz_header_bomb", "bomb.npz",
     lambda: zipped("xyz.npy", npy_bytes({"descr": "<f8", "fortran_order": False, "shape": (10**11, 3)},
                                         bytes(8 << 20))), {},
     "array 'xyz' declares shape [100000000000, 3] of float64 (2400000000000 bytes), more than the "
     "1073741824-byte limit (max_bytes)"),
    # the zip directory itself declares more than the limit: refused before inflating
    ("npz_inflates_past_limit", "inflate.npz",
     lambda: zipped("xyz.npy", npy_bytes({"descr": "<f4", "fortran_order": False, "shape": (1 << 20, 3)},
                                         bytes(12 << 20))), {"max_bytes": 1 << 20},
     "array 'xyz' inflates to 12583040 bytes ({compressed} compressed), more than the 1048576-byte limit (max_bytes)"),
    ("npz_object_array", "objects.npz",
     lambda: zipped("xyz.npy", npy_bytes({"descr": "|O", "fortran_order": False, "shape": (1,)}, b"\x80\x04N.")),
     {}, "array 'xyz' holds pickled objects (dtype object), which are never loaded"),
    ("npy_normals_asked_as_colour", "normals.npy",
     lambda: npy_bytes({"descr": "<f8", "fortran_order": False, "shape": (7, 6)},
                       np.concatenate([XYZ, NORMALS], 1).astype("<f8").tobytes()), {"with_color": True},
     "columns 4-6 hold negative values, so they are normals, not the rgb asked for"),
]


@pytest.mark.parametrize(("name", "filename", "contents", "kwargs", "problem"), CORPUS, ids=[c[0] for c in CORPUS])
def test_bad_file_is_a_sample_error_naming_it(tmp_path, name, filename, contents, kwargs, problem):
    path = tmp_path / filename
    path.write_bytes(contents())
    assert path.stat().st_size < 64 << 10  # every bomb is tiny on disk
    with memory_limit(512 << 20), pytest.raises(SampleError) as err:
        read_point_cloud(path, **kwargs)
    if "{compressed}" in problem:  # zlib's output size differs between versions
        with zipfile.ZipFile(path) as archive:
            problem = problem.format(compressed=archive.infolist()[0].compress_size)
    assert err.value.path == str(path)
    assert err.value.problem == problem
    assert str(err.value) == f"{path}: {problem}"


def test_pickles_are_a_distinct_error_and_corrupt_files_are_not(tmp_path):
    from omniclip.modalities.pointcloud.io import PickledFileError

    (tmp_path / "p.npy").write_bytes(pickle.dumps({"xyz": XYZ}))
    (tmp_path / "t.npy").write_bytes(b"1 2 3\n")
    with pytest.raises(PickledFileError):
        read_point_cloud(tmp_path / "p.npy")
    with pytest.raises(SampleError) as err:
        read_point_cloud(tmp_path / "t.npy")
    assert type(err.value) is SampleError and "pickle" not in err.value.problem


def test_fifo_named_txt_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "cloud.txt"
    os.mkfifo(fifo)
    with time_limit(5), pytest.raises(SampleError) as err:
        read_point_cloud(fifo)
    assert str(err.value) == f"{fifo}: not a regular file (a FIFO, socket or device); refusing to read it"


def test_fifo_named_h5_is_refused_without_blocking(tmp_path):
    from omniclip.modalities.pointcloud.io import read_h5_split

    fifo = tmp_path / "test_objectdataset.h5"
    os.mkfifo(fifo)
    with time_limit(5), pytest.raises(SampleError) as err:
        read_h5_split(fifo)
    assert str(err.value) == f"{fifo}: not a regular file (a directory, FIFO, socket or device)"


def test_oversized_file_is_refused_before_reading(tmp_path):
    path = tmp_path / "big.xyz"
    path.write_text("0 0 0\n" * 1000)
    with pytest.raises(SampleError) as err:
        read_point_cloud(path, max_bytes=1000)
    assert err.value.problem == "6000 bytes, more than the 1000-byte limit (max_bytes)"


def test_xyz_plus_normals_npy_reads_as_xyz_when_colour_is_not_asked(tmp_path):
    np.save(tmp_path / "n.npy", np.concatenate([XYZ, NORMALS], 1))
    np.testing.assert_array_equal(read_point_cloud(tmp_path / "n.npy"), XYZ)
    np.savez(tmp_path / "n.npz", xyz=np.concatenate([XYZ, NORMALS], 1))
    np.testing.assert_array_equal(read_point_cloud(tmp_path / "n.npz"), XYZ)


def test_coordinate_near_float32_max_normalises_without_collapsing():
    points = np.concatenate([XYZ, [[3e38, 0, 0]]]).astype(np.float32)
    out = normalize_unit_sphere(points)
    assert out.dtype == np.float32 and np.isfinite(out).all()
    assert np.linalg.norm(out, axis=1).max() == pytest.approx(1.0, abs=1e-6)
    # centroid at 3e38/8: the far point is the radius away (x = 1), the others at x = -(1/8)/(7/8)
    assert out[-1, 0] == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(out[:-1, 0], -1 / 7, atol=1e-6)


def test_dataset_refuses_float64_beyond_float32_before_the_cast(tmp_path):
    opts = CloudOptions(num_points=None, min_points=1)
    values = np.concatenate([XYZ, [[1e300, 0, 0]]]).astype(np.float64)
    with pytest.raises(SampleError) as err:
        opts.finish(values, "pickled.npy", train=False)
    assert err.value.problem == ("1 of 8 points have coordinates beyond float32's range "
                                 "(largest magnitude 1e+300 > 3.4e+38)")


def test_fps_of_a_huge_cloud_runs_on_a_bounded_reproducible_subset(monkeypatch):
    seen = []
    real = datasets.farthest_point_sample

    def spy(xyz, npoint, start_idx=None):
        seen.append(xyz.shape[1])
        return real(xyz, npoint, start_idx=start_idx)

    monkeypatch.setattr(datasets, "farthest_point_sample", spy)
    opts = CloudOptions(num_points=64, sampling="fps", min_points=1)
    big = cloud(20_000, 1)
    runs = []
    for _ in range(2):
        np.random.seed(3)
        runs.append(opts.finish(big, "big.npy", train=False))
    assert seen == [datasets.FPS_POOL * 64] * 2
    assert torch.equal(runs[0], runs[1]) and runs[0].shape == (64, 3)


# ------------------------------------------------------------------------------ num_points vs tokenizer


def test_num_points_below_min_points_fails_at_dataset_build(tmp_path):
    root = make_modelnet40(tmp_path / "mn")
    with pytest.raises(ConfigError) as err:
        build_dataset({"name": "modelnet40", "root": str(root), "num_points": 16}, "test")
    assert str(err.value) == ("config `num_points`: 16 is below min_points=32 (the tokenizer's group size): "
                              "every cloud would be too small to group")


@pytest.mark.parametrize(("tokenizer", "data", "message"), [
    ({"name": "pointbert", "num_groups": 64, "group_size": 8}, {"num_points": 32},
     "config `num_points`: 32 points per cloud cannot make the tokenizer's groups "
     "(modality.tokenizer.num_groups=64, group_size=8): set num_points >= 64"),
    ({"name": "pointbert", "num_groups": 4, "group_size": 48}, {"num_points": 40},
     "config `num_points`: 40 points per cloud cannot make the tokenizer's groups "
     "(modality.tokenizer.num_groups=4, group_size=48): set num_points >= 48"),
    ({"name": "pnsa", "num_groups": 64, "group_size": 8, "mlp": [8], "token_dim": 8}, {"num_points": None},
     "config `min_points`: 32 with num_points: null lets clouds smaller than the tokenizer's groups through "
     "(modality.tokenizer.num_groups=64, group_size=8): set min_points >= 64"),
])
def test_tokenizer_and_dataset_sizes_are_checked_before_training(tokenizer, data, message):
    with pytest.raises(ConfigError) as err:
        PointCloudModality().check_data(tokenizer, data)
    assert str(err.value) == message
    PointCloudModality().check_data(tokenizer, {"num_points": 64, "min_points": 64})
    build_tokenizer(tokenizer)  # the same config builds: the check reads the same defaults


def test_recipe_defaults_pass_the_size_check():
    modality = PointCloudModality()
    modality.check_data({}, {})  # pointbert 512 x 32 and 8192 points
    modality.check_data({"name": "pnsa"}, {"num_points": 10000, "with_color": True})
    with pytest.raises(ConfigError, match=r"^config `num_points`: 2048 points per cloud cannot make"):
        modality.check_data({"num_groups": 4096}, {"num_points": 2048})
    modality.check_data({"name": "nope"}, {"num_points": 1})  # left to the tokenizer build, which names its key


def test_tokenizer_forward_names_the_keys_when_clouds_are_too_small():
    tok = build_tokenizer({"name": "pointbert", "num_groups": 16, "group_size": 8, "encoder_dim": 8, "token_dim": 8})
    with pytest.raises(ValueError) as err:
        tok(torch.zeros(2, 10, 3))
    assert str(err.value) == ("clouds of 10 points cannot make 16 groups of 8 (modality.tokenizer.num_groups / "
                              "group_size): set the datasets' num_points to at least 16")


# ------------------------------------------------------------------------------------------ manifests


def triplets(tmp_path: Path, entries: list[dict], **cfg) -> tuple[Path, object]:
    root = make_objaverse_triplets(tmp_path / "tri", count=1)
    (root / "triplets.jsonl").write_text("".join(json.dumps(e) + "\n" for e in entries))
    ds = build_dataset({"name": "objaverse_triplets", "root": str(root), "num_points": 32, "min_points": 8,
                        "with_color": True, **cfg}, "train", lambda img: torch.zeros(1))
    return root, ds


GOOD = {"pc": "pc/o0.npy", "images": ["img/o0_0.png"], "texts": ["object 0"]}
BAD_ENTRIES = [
    ({**GOOD, "texts": None}, "`texts` is None; expected a caption or a list of captions"),
    ({**GOOD, "texts": []}, "`texts` is []; expected a caption or a list of captions"),
    ({**GOOD, "texts": ["fine", None]}, "`texts` is ['fine', None]; expected a caption or a list of captions"),
    ({**GOOD, "images": 7}, "`images` is 7; expected an image path or a list of them"),
    ({**GOOD, "pc": 12}, "path is int 12, not a string"),
    ({**GOOD, "pc": None}, "path is NoneType None, not a string"),
    ({**GOOD, "pc": "../../etc/passwd"}, "path '../../etc/passwd' climbs out of the folder with '..': manifest paths "
                                         "must stay inside the dataset root {root} (set `allow_outside_root: true` "
                                         "to read files outside it)"),
    ({**GOOD, "pc": "/etc/passwd"}, "path '/etc/passwd' is absolute: manifest paths must stay inside the dataset "
                                    "root {root} (set `allow_outside_root: true` to read files outside it)"),
    ({**GOOD, "images": ["../secret.png"]}, "path '../secret.png' climbs out of the folder with '..': manifest paths "
                                            "must stay inside the dataset root {root} (set `allow_outside_root: "
                                            "true` to read files outside it)"),
]


def test_bad_triplet_entries_are_counted_by_the_skip_policy(tmp_path):
    root, ds = triplets(tmp_path, [GOOD] + [entry for entry, _ in BAD_ENTRIES])
    for number, (_, problem) in enumerate(BAD_ENTRIES, 2):
        with pytest.raises(SampleError) as err:
            ds[number - 1]
        assert err.value.path == f"{root / 'triplets.jsonl'} entry {number}"
        assert err.value.problem == problem.format(root=root)
    safe = SafeDataset(ds, "skip")
    samples = [safe[i] for i in range(len(ds))]
    assert [isinstance(s, Skipped) for s in samples] == [False] + [True] * len(BAD_ENTRIES)
    batch = collate_skipping(lambda kept: {"n": len(kept)})(samples)
    assert batch["n"] == 1 and len(batch["skipped"]) == len(BAD_ENTRIES)


def test_images_as_a_string_is_one_image_not_its_characters(tmp_path):
    _, ds = triplets(tmp_path, [{**GOOD, "images": "img/o0_1.png", "texts": "one caption"}])
    sample = ds[0]
    assert sample["image_key"] == "img/o0_1.png" and sample["text"] == "one caption"


def test_allow_outside_root_reads_absolute_paths(tmp_path):
    outside = tmp_path / "elsewhere.npy"
    np.save(outside, cloud(40, 2))
    _, ds = triplets(tmp_path, [{**GOOD, "pc": str(outside)}], allow_outside_root=True)
    assert ds[0]["path"] == str(outside)


def test_lvis_null_category_and_escaping_paths_fail_at_build(tmp_path):
    root = make_objaverse_lvis(tmp_path / "lvis", count=2)
    entries = json.loads((root / "lvis.json").read_text())
    cfg = {"name": "objaverse_lvis", "root": str(root), "num_points": 32, "min_points": 8}
    (root / "lvis.json").write_text(json.dumps([entries[0], {**entries[1], "category": None}]))
    with pytest.raises(ConfigError) as err:
        build_dataset(cfg, "test")
    assert str(err.value) == f"config `annotation`: {root / 'lvis.json'} entry 2: `category` is None, not a class name"
    (root / "lvis.json").write_text(json.dumps([entries[0], {**entries[1], "data_path": "/etc/passwd"}]))
    with pytest.raises(ConfigError) as err:
        build_dataset(cfg, "test")
    assert str(err.value) == (f"config `annotation`: {root / 'lvis.json'} entry 2: path '/etc/passwd' is absolute: "
                              f"manifest paths must stay inside the dataset root {root} (set "
                              "`allow_outside_root: true` to read files outside it)")
    (root / "lvis.json").write_text(json.dumps([entries[0], {**entries[1], "data_path": 3}]))
    with pytest.raises(ConfigError, match=r"entry 2: path is int 3, not a string$"):
        build_dataset({**cfg, "allow_outside_root": True}, "test")


def test_lvis_corrupt_npy_gets_no_pickle_hint_trusted_or_not(tmp_path):
    root = make_objaverse_lvis(tmp_path / "lvis", count=1)
    (root / "clouds" / "uid0.npy").write_text("1 2 3\n")
    for trust in (False, True):
        ds = build_dataset({"name": "objaverse_lvis", "root": str(root), "num_points": 32, "min_points": 8,
                            "trust_pickle": trust}, "test")
        with pytest.raises(SampleError) as err:
            ds[0]
        assert err.value.problem == "the file is not a NumPy .npy array (no \\x93NUMPY magic; starts with b'1 2 3\\n')"


def test_lvis_trusted_pickle_that_fails_to_unpickle_is_a_sample_error(tmp_path):
    root = make_objaverse_lvis(tmp_path / "lvis", count=1)
    (root / "clouds" / "uid0.npy").write_bytes(pickle.dumps({"xyz": XYZ})[:-5])
    ds = build_dataset({"name": "objaverse_lvis", "root": str(root), "num_points": 32, "min_points": 8,
                        "trust_pickle": True}, "test")
    with pytest.raises(SampleError, match=r"uid0\.npy: unreadable pickled \.npy \((UnpicklingError|EOFError)"):
        ds[0]


@pytest.mark.parametrize(("content", "problem"), [
    ("{not json", "unreadable JSON (Expecting property name enclosed in double quotes: line 1 column 2 (char 1))"),
    ('{"02691156": "airplane"}', "expected a list of {synsetId, name} entries, got dict"),
    ('[{"synsetId": "02691156"}]', 'entry 1 is not {"synsetId": str, "name": str} (got {"synsetId": "02691156"})'),
    ('[{"synsetId": "02691156", "name": 5}]',
     'entry 1 is not {"synsetId": str, "name": str} (got {"synsetId": "02691156", "name": 5})'),
    ('[{"synsetId": "02691156", "name": " , "}]', "entry 1 (02691156) has an empty name"),
])
def test_malformed_ulip_taxonomy_is_a_config_error(tmp_path, content, problem):
    root = make_ulip_shapenet(tmp_path / "ulip", per_synset=1)
    (root / "taxonomy.json").write_text(content)
    with pytest.raises(ConfigError) as err:
        build_dataset({"name": "ulip_shapenet", "root": str(root), "num_points": 32}, "train")
    assert str(err.value) == f"config `root`: {root / 'taxonomy.json'}: {problem}"


def test_split_lists_cannot_point_outside_the_root(tmp_path):
    root = make_ulip_shapenet(tmp_path / "ulip", per_synset=1)
    (root / "test.txt").write_text("../../../etc/passwd\n")
    with pytest.raises(ConfigError) as err:
        build_dataset({"name": "ulip_shapenet", "root": str(root), "num_points": 32}, "test")
    assert str(err.value) == (f"config `root`: {root / 'test.txt'} line 1: path '../../../etc/passwd' climbs out of "
                              f"the folder with '..': manifest paths must stay inside the dataset root "
                              f"{root / 'shapenet_pc'} (set `allow_outside_root: true` to read files outside it)")
    mn = make_modelnet40(tmp_path / "mn", per_split=1)
    (mn / "modelnet40_shape_names.txt").write_text("..\n")
    (mn / "modelnet40_test.txt").write_text(".._0001\n")
    with pytest.raises(ConfigError, match=r"modelnet40_test\.txt line 1: path '\.\./\.\._0001' climbs out"):
        build_dataset({"name": "modelnet40", "root": str(mn), "num_points": 32}, "test")


def test_every_bad_file_is_skipped_and_counted_in_a_dataset(tmp_path):
    """The corpus through a dataset and the skip policy: each bad file is one counted skip with
    its own message, and the good cloud still comes through."""
    cases = [case for case in CORPUS if not case[3]]  # those read with the default options
    root = make_objaverse_triplets(tmp_path / "tri", count=1)
    (root / "bad").mkdir()
    for _, filename, contents, _, _ in cases:
        (root / "bad" / filename).write_bytes(contents())
    entries = [{"pc": "pc/o0.npy", "texts": "good"}] + [{"pc": f"bad/{c[1]}", "texts": c[0]} for c in cases]
    (root / "triplets.jsonl").write_text("".join(json.dumps(e) + "\n" for e in entries))
    ds = build_dataset({"name": "objaverse_triplets", "root": str(root), "num_points": 32, "min_points": 8}, "train",
                       None)
    with memory_limit(512 << 20):
        samples = [SafeDataset(ds, "skip")[i] for i in range(len(ds))]
    assert not isinstance(samples[0], Skipped)
    assert [(s.path, s.problem) for s in samples[1:]] == [(str(root / "bad" / c[1]), c[4]) for c in cases]
    batch = collate_skipping(PointCloudModality().collate)(samples)
    assert batch["inputs"].shape == (1, 32, 3) and len(batch["skipped"]) == len(cases)
    with pytest.raises(SampleError, match=r"bad/neg\.ply: PLY element 'vertex' declares -1 items"):
        SafeDataset(ds, "stop")[1]
