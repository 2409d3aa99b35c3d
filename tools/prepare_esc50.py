"""Put ESC-50 in the layout the `esc50` dataset reads, and check it.

    python tools/prepare_esc50.py SRC OUT_DIR

SRC is the GitHub archive ``ESC-50-master.zip`` (https://github.com/karolpiczak/ESC-50,
"Download ZIP") or the folder it extracts to. OUT_DIR receives ``audio/*.wav`` and
``meta/esc50.csv``; every row of the CSV must name a file that is there and a known class.
OUT_DIR is what the recipe's ``root`` points at. Works offline.
"""

from __future__ import annotations

import argparse
import csv
import shutil
import sys
import zipfile
from pathlib import Path, PurePosixPath

from omniclip.modalities.audio.datasets import esc50_class_names
from omniclip.paths import archive_target

DOWNLOAD = "download https://github.com/karolpiczak/ESC-50/archive/master.zip (ESC-50-master.zip, 600 MB)"


def _copy_from_zip(archive_path: Path, out: Path) -> None:
    with zipfile.ZipFile(archive_path) as archive:
        members = [m for m in archive.namelist() if not m.endswith("/") and "__MACOSX" not in m]
        metas = [m for m in members if m.endswith("meta/esc50.csv")]
        if not metas:
            raise ValueError(f"{archive_path} holds no meta/esc50.csv; {DOWNLOAD}")
        prefix = metas[0][: -len("meta/esc50.csv")]
        for member in members:
            rel = PurePosixPath(member[len(prefix):]) if member.startswith(prefix) else None
            if rel is None or rel.parts[0] not in ("audio", "meta"):
                continue
            target = archive_target(out, member[len(prefix):])  # refuses `audio/../../x` (zip slip)
            target.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(member) as src, target.open("wb") as dst:
                shutil.copyfileobj(src, dst)


def prepare(src: Path, out: Path) -> dict[int, int]:
    """Copy ESC-50 from ``src`` to ``out`` and check it; returns the number of clips per fold."""
    if src.is_file():
        _copy_from_zip(src, out)
    elif src.is_dir():
        if not (src / "meta" / "esc50.csv").is_file():
            raise ValueError(f"{src} has no meta/esc50.csv; {DOWNLOAD}")
        if src.resolve() != out.resolve():
            for part in ("audio", "meta"):
                shutil.copytree(src / part, out / part, dirs_exist_ok=True)
    else:
        raise FileNotFoundError(f"{src} not found; {DOWNLOAD}")
    names = esc50_class_names()
    folds: dict[int, int] = {}
    missing: list[str] = []
    with (out / "meta" / "esc50.csv").open(newline="") as handle:
        for line, row in enumerate(csv.DictReader(handle), 2):
            for column in ("target", "fold"):
                if not str(row.get(column)).strip().isdigit():
                    raise ValueError(f"meta/esc50.csv line {line}: `{column}` is {row.get(column)!r}, not an integer")
            target = int(row["target"])
            if not 0 <= target < len(names) or names[target] != row["category"].replace("_", " "):
                raise ValueError(f"meta/esc50.csv line {line}: `{row['category']}` / target {target} "
                                 "is not an ESC-50 class")
            if not (out / "audio" / row["filename"]).is_file():
                missing.append(row["filename"])
            folds[int(row["fold"])] = folds.get(int(row["fold"]), 0) + 1
    if missing:
        raise ValueError(f"meta/esc50.csv names {len(missing)} clips missing from audio/ (first: {missing[0]})")
    return dict(sorted(folds.items()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("src", type=Path, help="ESC-50-master.zip or its extracted folder")
    parser.add_argument("out_dir", type=Path)
    args = parser.parse_args(argv)
    try:
        folds = prepare(args.src, args.out_dir)
    except (FileNotFoundError, ValueError, KeyError, zipfile.BadZipFile) as err:
        print(f"prepare_esc50: {err}", file=sys.stderr)
        return 2
    per_fold = ", ".join(f"fold {f}: {n}" for f, n in folds.items())
    print(f"ESC-50 ready in {args.out_dir}: {sum(folds.values())} clips ({per_fold})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
