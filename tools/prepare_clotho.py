"""Put Clotho v2 in the layout the `clotho` dataset reads, and check it.

    python tools/prepare_clotho.py SRC OUT_DIR [--copy]

SRC holds the Zenodo downloads (https://zenodo.org/records/4783391): the caption CSVs
``clotho_captions_{development,validation,evaluation}.csv`` and the audio archives
``clotho_audio_<split>.7z`` already extracted (``7z x``), which gives folders ``<split>/`` (a
folder named ``clotho_audio_<split>/`` is accepted too). OUT_DIR receives the CSVs and one audio
folder per split, ``<split>/``, linked to SRC's (``--copy`` copies the files instead). Splits
without a CSV are skipped; files a CSV names that are absent are reported.
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import sys
from pathlib import Path

SPLITS = ("development", "validation", "evaluation")


def _audio_folder(src: Path, split: str) -> Path:
    for name in (split, f"clotho_audio_{split}"):
        if (src / name).is_dir():
            return src / name
    archive = src / f"clotho_audio_{split}.7z"
    hint = f"extract {archive.name} first (7z x {archive.name})" if archive.is_file() else \
        f"download clotho_audio_{split}.7z from Zenodo and extract it"
    raise FileNotFoundError(f"no audio folder for the {split} split in {src}; {hint}")


def prepare(src: Path, out: Path, copy: bool = False) -> dict[str, tuple[int, list[str]]]:
    """Write OUT's layout; returns split -> (files named by its CSV, those missing)."""
    if not src.is_dir():
        raise FileNotFoundError(f"{src} is not a folder")
    result = {}
    for split in SPLITS:
        table = src / f"clotho_captions_{split}.csv"
        if not table.is_file():
            continue
        audio = _audio_folder(src, split)
        with table.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            if "file_name" not in (reader.fieldnames or []):
                raise ValueError(f"{table} has no file_name column")
            names = [row["file_name"] for row in reader]
        out.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(table, out / table.name)
        target = out / split
        if copy:
            shutil.copytree(audio, target, dirs_exist_ok=True)
        elif not target.exists():
            os.symlink(audio.resolve(), target, target_is_directory=True)
        result[split] = (len(names), [n for n in names if not (target / n).is_file()])
    if not result:
        raise FileNotFoundError(f"no clotho_captions_<split>.csv in {src}; download them from "
                                "https://zenodo.org/records/4783391")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("src", type=Path)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--copy", action="store_true", help="copy the audio files instead of linking the folders")
    args = parser.parse_args(argv)
    try:
        result = prepare(args.src, args.out_dir, args.copy)
    except (FileNotFoundError, ValueError) as err:
        print(f"prepare_clotho: {err}", file=sys.stderr)
        return 2
    for split, (count, missing) in result.items():
        note = f", {len(missing)} missing (first: {missing[0]})" if missing else ""
        print(f"{split}: {count} files{note}")
    return 1 if any(missing for _, missing in result.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
