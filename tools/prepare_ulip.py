"""Assemble the ULIP ShapeNet-55 triplets into the layout the `ulip_shapenet` dataset reads.

    python tools/prepare_ulip.py OUT_DIR ARCHIVE [ARCHIVE ...]

The ULIP release (https://github.com/salesforce/ULIP, "ShapeNet55 triplets") comes as archives
(.zip or .tar[.gz]) holding, under some top folder:

* ``train.txt``, ``test.txt`` (``<synset>-<model>.npy`` per line) and ``taxonomy.json``
  (ViT-Lens also ships it: ``vitlens/src/open_clip/modal_3d/data/taxonomy.json``);
* ``shapenet_pc/<synset>-<model>.npy`` (8192 x 3 clouds);
* ``rendered_images/<synset>-<model>/<synset>-<model>_r_<deg>[_depth0001].png``.

Each piece is found wherever it sits in the archives and written to ``OUT_DIR`` as
``taxonomy.json``, ``{train,test}.txt``, ``shapenet_pc/``, ``rendered_images/``; then every
listed cloud is checked. Offline.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tarfile
import zipfile
from pathlib import Path, PurePosixPath
from typing import IO, Callable, Iterator

from omniclip.paths import archive_target

DOWNLOAD = ("download the ULIP ShapeNet55 triplets (point clouds, rendered images, split lists) as described "
            "at https://github.com/salesforce/ULIP#download-datasets; taxonomy.json is in ViT-Lens "
            "(vitlens/src/open_clip/modal_3d/data/taxonomy.json)")
_TOP_FILES = ("train.txt", "test.txt", "taxonomy.json")
_FOLDERS = ("shapenet_pc", "rendered_images")


def _entries(path: Path) -> Iterator[tuple[str, Callable[[], IO[bytes]]]]:
    """(member name, opener) for each file of a zip or tar archive."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            for name in archive.namelist():
                if not name.endswith("/"):
                    yield name, lambda name=name: archive.open(name)
    elif tarfile.is_tarfile(path):
        with tarfile.open(path) as archive:
            for member in archive:
                if member.isfile():
                    yield member.name, lambda member=member: archive.extractfile(member)
    else:
        raise ValueError(f"{path} is neither a zip nor a tar archive; {DOWNLOAD}")


def _target(name: str) -> str | None:
    """Where an archive member goes inside OUT_DIR, or None if it is not part of the triplets."""
    parts = PurePosixPath(name).parts
    if "__MACOSX" in parts:
        return None
    if parts[-1] in _TOP_FILES:
        return parts[-1]
    for folder in _FOLDERS:
        if folder in parts[:-1]:
            return "/".join(parts[parts.index(folder):])
    return None


def prepare(out: Path, archives: list[Path]) -> dict[str, int]:
    """Write the layout; returns counts of listed clouds and of models with rendered views."""
    for path in archives:
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found; {DOWNLOAD}")
    for path in archives:
        for name, opener in _entries(path):
            target = _target(name)
            if target is None:
                continue
            dest = archive_target(out, target)  # refuses `shapenet_pc/../../x` (zip slip)
            dest.parent.mkdir(parents=True, exist_ok=True)
            with opener() as src, dest.open("wb") as dst:
                shutil.copyfileobj(src, dst)
    missing = [f for f in _TOP_FILES if not (out / f).is_file()]
    if missing:
        raise ValueError(f"no {missing[0]} in {', '.join(map(str, archives))}; {DOWNLOAD}")
    counts = {}
    for split in ("train", "test"):
        files = [line.strip() for line in (out / f"{split}.txt").read_text().splitlines() if line.strip()]
        absent = [f for f in files if not (out / "shapenet_pc" / f).is_file()]
        if absent:
            raise ValueError(f"{split}.txt lists {len(absent)} clouds absent from shapenet_pc/ (first: {absent[0]})")
        counts[split] = len(files)
    images = out / "rendered_images"
    counts["with_images"] = sum(1 for d in images.iterdir() if d.is_dir()) if images.is_dir() else 0
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("archives", type=Path, nargs="+", help="ULIP ShapeNet55 archives (.zip, .tar, .tar.gz)")
    args = parser.parse_args(argv)
    try:
        counts = prepare(args.out_dir, args.archives)
    except (FileNotFoundError, ValueError, zipfile.BadZipFile, tarfile.TarError) as err:
        print(f"prepare_ulip: {err}", file=sys.stderr)
        return 2
    print(f"ULIP ShapeNet-55 ready in {args.out_dir}: {counts['train']} train, {counts['test']} test clouds, "
          f"{counts['with_images']} models with rendered views")
    if counts["with_images"] == 0:
        print("warning: no rendered_images/: training will have text anchors only", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
