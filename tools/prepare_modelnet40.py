"""Turn a downloaded ModelNet40 archive into the layout `modelnet40` datasets read.

    python tools/prepare_modelnet40.py ARCHIVE OUT_DIR

ARCHIVE is either

* ``modelnet40_normal_resampled.zip`` (PointNet++ / ULIP / ViT-Lens version, 10000 points per
  shape as ``x,y,z,nx,ny,nz`` lines): extracted as it is; or
* ``ModelNet40.zip`` (Princeton, ``ModelNet40/<class>/{train,test}/<class>_NNNN.off`` meshes):
  rewritten to the same layout with ``.off`` files (sampled by area when read) and the
  ``modelnet40_shape_names.txt`` / ``modelnet40_{train,test}.txt`` lists built from its folders.

Both work offline; OUT_DIR is what a recipe's ``root`` points at.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import zipfile
from pathlib import Path, PurePosixPath

from omniclip.paths import archive_target

DOWNLOAD = (
    "download one of:\n"
    "  https://shapenet.cs.stanford.edu/media/modelnet40_normal_resampled.zip  (resampled, 1.6 GB)\n"
    "  http://modelnet.cs.princeton.edu/ModelNet40.zip                         (meshes, 2 GB)"
)
_PRINCETON = re.compile(r"(?:.*/)?([^/]+)/(train|test)/(\1_\d+)\.off$")


def _members(archive: zipfile.ZipFile) -> list[str]:
    return [m for m in archive.namelist() if not m.endswith("/") and "__MACOSX" not in m]


def _extract(archive: zipfile.ZipFile, member: str, out: Path, relative: str) -> None:
    """Write ``member`` to ``out/relative``; a ``relative`` that leaves ``out`` is refused (zip slip)."""
    target = archive_target(out, relative)
    target.parent.mkdir(parents=True, exist_ok=True)
    with archive.open(member) as src, target.open("wb") as dst:
        shutil.copyfileobj(src, dst)


def prepare(archive_path: Path, out: Path) -> dict[str, int]:
    """Write the resampled layout to ``out``; returns the number of shapes per split."""
    if not archive_path.is_file():
        raise FileNotFoundError(f"{archive_path} not found; {DOWNLOAD}")
    with zipfile.ZipFile(archive_path) as archive:
        members = _members(archive)
        names = [m for m in members if PurePosixPath(m).name == "modelnet40_shape_names.txt"]
        if names:
            prefix = str(PurePosixPath(names[0]).parent)
            prefix = "" if prefix == "." else prefix + "/"
            for member in members:
                if member.startswith(prefix):
                    _extract(archive, member, out, member[len(prefix):])
        else:
            shapes = [(m, _PRINCETON.match(m)) for m in members]
            shapes = [(m, found) for m, found in shapes if found]
            if not shapes:
                raise ValueError(f"{archive_path} holds neither modelnet40_shape_names.txt nor "
                                 f"<class>/<split>/<class>_NNNN.off meshes; {DOWNLOAD}")
            splits: dict[str, list[str]] = {"train": [], "test": []}
            for member, found in shapes:
                cls, split, shape_id = found.groups()
                _extract(archive, member, out, f"{cls}/{shape_id}.off")
                splits[split].append(shape_id)
            classes = sorted({found.group(1) for _, found in shapes})
            (out / "modelnet40_shape_names.txt").write_text("\n".join(classes) + "\n")
            for split, ids in splits.items():
                (out / f"modelnet40_{split}.txt").write_text("\n".join(sorted(ids)) + "\n")
    counts = {}
    for split in ("train", "test"):
        listed = out / f"modelnet40_{split}.txt"
        if not listed.is_file():
            raise ValueError(f"{archive_path}: no modelnet40_{split}.txt in the archive; {DOWNLOAD}")
        ids = [line.strip() for line in listed.read_text().splitlines() if line.strip()]
        missing = [i for i in ids
                   if not any((out / i.rsplit("_", 1)[0] / f"{i}{suffix}").is_file() for suffix in (".txt", ".off"))]
        if missing:
            raise ValueError(f"{listed} names {len(missing)} shapes missing from the archive (first: {missing[0]})")
        counts[split] = len(ids)
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("archive", type=Path, help="modelnet40_normal_resampled.zip or ModelNet40.zip")
    parser.add_argument("out_dir", type=Path)
    args = parser.parse_args(argv)
    try:
        counts = prepare(args.archive, args.out_dir)
    except (FileNotFoundError, ValueError, zipfile.BadZipFile) as err:
        print(f"prepare_modelnet40: {err}", file=sys.stderr)
        return 2
    print(f"ModelNet40 ready in {args.out_dir}: {counts['train']} train, {counts['test']} test shapes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
