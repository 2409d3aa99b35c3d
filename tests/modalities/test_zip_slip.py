"""tools/prepare_*.py refuse archive members that would be written outside the output folder."""

from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path

import pytest

from tests.modalities.audio.test_datasets import make_esc50
from tests.modalities.pointcloud.test_prepare import load_tool


def write_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)  # writestr keeps the name as given, `..` included
    return path


def write_tar(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def esc50_archive(tmp_path: Path, evil: str) -> Path:
    src = make_esc50(tmp_path / "src", rows=((1, 0),))
    members = {f"ESC-50-master/{p.relative_to(src).as_posix()}": p.read_bytes() for p in src.rglob("*") if p.is_file()}
    return write_zip(tmp_path / "ESC-50-master.zip", {**members, f"ESC-50-master/{evil}": b"pwned"})


CASES = [
    ("prepare_esc50", lambda t: esc50_archive(t, "audio/../../../evil.txt"), "audio/../../../evil.txt", "archive"),
    ("prepare_modelnet40",
     lambda t: write_zip(t / "modelnet40_normal_resampled.zip", {
         "modelnet40_normal_resampled/modelnet40_shape_names.txt": b"airplane\n",
         "modelnet40_normal_resampled/../../../evil.txt": b"pwned"}),
     "../../../evil.txt", "archive"),
    ("prepare_modelnet40",
     lambda t: write_zip(t / "ModelNet40.zip", {"ModelNet40/../train/.._0001.off": b"OFF\n0 0 0\n"}),
     "../.._0001.off", "archive"),
    ("prepare_scanobjectnn",
     lambda t: write_zip(t / "h5_files.zip", {"h5_files/../training_objectdataset.h5": b"pwned"}),
     "../training_objectdataset.h5", "archive"),
    ("prepare_ulip",
     lambda t: write_tar(t / "ulip.tar", {"ulip/shapenet_pc/../../../../evil.npy": b"pwned"}),
     "shapenet_pc/../../../../evil.npy", "ulip"),
    ("prepare_ulip",
     lambda t: write_zip(t / "ulip.zip", {"ulip/rendered_images/../../../evil.png": b"pwned"}),
     "rendered_images/../../../evil.png", "ulip"),
]


@pytest.mark.parametrize(("tool_name", "make", "member", "order"), CASES,
                         ids=[f"{c[0]}:{c[2]}" for c in CASES])
def test_member_escaping_the_output_folder_is_refused(tmp_path, capsys, tool_name, make, member, order):
    tool = load_tool(tool_name)
    archive = make(tmp_path)
    out = tmp_path / "a" / "b" / "c" / "out"
    args = [str(out), str(archive)] if order == "ulip" else [str(archive), str(out)]
    assert tool.main(args) == 2
    err = capsys.readouterr().err
    assert f"{tool_name}: archive member {member!r} would be written outside {out} (path {member!r} climbs out of " \
           "the folder with '..'); refusing the archive" in err
    written = [p for p in tmp_path.rglob("*") if p.is_file() and p.read_bytes() == b"pwned"
               and p != archive and not p.is_relative_to(out)]
    assert written == []
