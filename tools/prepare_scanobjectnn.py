"""Turn the downloaded ScanObjectNN ``h5_files.zip`` into the layout `scanobjectnn` datasets read.

    python tools/prepare_scanobjectnn.py h5_files.zip OUT_DIR

The archive (obtained through the request form at https://hkust-vgd.github.io/scanobjectnn/)
holds ``h5_files/<variant>/{training,test}_<file>.h5`` for the variants ``main_split``,
``main_split_nobg``, ``split1`` ... ``split4_nobg``; each h5 has ``data`` [S, 2048, 3] and
``label`` [S]. They are copied to ``OUT_DIR/<variant>/`` and checked; offline.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import zipfile
from pathlib import Path

import h5py

from omniclip.paths import archive_target

DOWNLOAD = "request and download h5_files.zip from https://hkust-vgd.github.io/scanobjectnn/"
_H5 = re.compile(r"(?:.*/)?([^/]+)/((?:training|test)_[^/]+\.h5)$")


def prepare(archive_path: Path, out: Path) -> dict[str, int]:
    """Copy and check every h5 split; returns ``{"<variant>/<file>": number of clouds}``."""
    if not archive_path.is_file():
        raise FileNotFoundError(f"{archive_path} not found; {DOWNLOAD}")
    counts: dict[str, int] = {}
    with zipfile.ZipFile(archive_path) as archive:
        for member in archive.namelist():
            found = _H5.match(member)
            if found is None or "__MACOSX" in member:
                continue
            target = archive_target(out, f"{found.group(1)}/{found.group(2)}")  # refuses `../` (zip slip)
            target.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(member) as src, target.open("wb") as dst:
                shutil.copyfileobj(src, dst)
            try:
                with h5py.File(target, "r") as h5:
                    if "data" not in h5 or "label" not in h5:
                        raise ValueError(f"{member}: no `data` and `label` datasets (has {sorted(h5.keys())})")
                    if h5["data"].shape[0] != h5["label"].shape[0]:
                        raise ValueError(f"{member}: {h5['data'].shape[0]} clouds but {h5['label'].shape[0]} labels")
                    counts[f"{found.group(1)}/{found.group(2)}"] = int(h5["data"].shape[0])
            except OSError as err:
                raise ValueError(f"{member}: unreadable HDF5 ({err})") from None
    if not counts:
        raise ValueError(f"{archive_path} holds no <variant>/{{training,test}}_*.h5 files; {DOWNLOAD}")
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("archive", type=Path, help="h5_files.zip")
    parser.add_argument("out_dir", type=Path)
    args = parser.parse_args(argv)
    try:
        counts = prepare(args.archive, args.out_dir)
    except (FileNotFoundError, ValueError, zipfile.BadZipFile) as err:
        print(f"prepare_scanobjectnn: {err}", file=sys.stderr)
        return 2
    for name, count in sorted(counts.items()):
        print(f"{name}: {count} clouds")
    print(f"ScanObjectNN ready in {args.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
