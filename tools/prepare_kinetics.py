"""Turn a Kinetics-400/600/700 download into the list files the video recipes read, and check it.

    python tools/prepare_kinetics.py SRC OUT_DIR [--classes k400] [--short-side 320] [--workers 8]

SRC holds the official CSVs (``train.csv``, ``validate.csv`` or ``val.csv``, ``test.csv``, also
under ``annotations/``: ``label,youtube_id,time_start,time_end,split``) and the clips named
``<youtube_id>_<start:06d>_<end:06d>.mp4`` in ``train/``, ``val/``, ``test/`` (flat, as the CVDF
download extracts, or one folder per class). OUT_DIR receives ``train.txt`` / ``val.txt`` /
``test.txt`` (``path label``), ``classes.csv`` and ``unreadable.txt``; every clip is decoded once
and unreadable ones are left out. Clips never downloaded (a share of every YouTube dataset) are
counted and left out. ``--short-side 320`` re-encodes every clip (H.264, PyAV). Works offline.
"""

from __future__ import annotations

import sys
from dataclasses import replace

from omniclip.modalities.video.datasets import Kinetics, build_dataset
from omniclip.modalities.video.prepare import run_tool


def add_arguments(parser) -> None:
    parser.add_argument("--classes", default=None,
                        help="class list (k400, k600, an id,name CSV); default: the sorted labels of train.csv")


def collect(args):
    lists = {}
    for split in ("train", "val", "test"):
        if any((args.src / name).is_file() for name in Kinetics.CSV_NAMES[split]):
            lists[split] = build_dataset({"name": "kinetics", "root": str(args.src), "classes": args.classes}, split)
            if lists[split].missing:
                print(f"{split}: {len(lists[split].missing)} clips of the CSV were never downloaded "
                      f"(first: {lists[split].missing[0]})")
    if not lists:
        raise ValueError(f"no Kinetics CSV in {args.src} (train.csv, validate.csv or val.csv, test.csv)")
    names = next(iter(lists.values())).class_names
    index = {name: i for i, name in enumerate(names)}
    for split, data in lists.items():  # without --classes each CSV sorted its own labels: use the first's
        unknown = sorted(set(data.class_names) - set(index))
        if unknown:
            raise ValueError(f"{split} has label `{unknown[0]}`, which the {next(iter(lists))} CSV does not")
        data.items = [replace(item, label=index[data.class_names[item.label]]) for item in data.items]
        data.class_names = names
    return lists, names


def main(argv: list[str] | None = None) -> int:
    return run_tool("prepare_kinetics", argv, __doc__, add_arguments, collect)


if __name__ == "__main__":
    sys.exit(main())
