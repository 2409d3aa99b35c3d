"""Turn an extracted HMDB51 into the list files the video recipes read, and check it.

    python tools/prepare_hmdb51.py SRC OUT_DIR [--folds 1 2 3] [--short-side 320] [--workers 8]

SRC holds the videos, one folder per class (``hmdb51_org.rar`` holds one rar per class: extract
them all into ``videos/<class>/`` or ``hmdb51_org/<class>/``), and the split files
``testTrainMulti_7030_splits/<class>_test_split{1,2,3}.txt`` (``name.avi 1|2|0``: train / test /
unused; from ``test_train_splits.rar``). OUT_DIR receives ``train_split{f}.txt`` and
``test_split{f}.txt`` (``path label``, classes sorted), ``classes.csv`` and ``unreadable.txt``.
Works offline.
"""

from __future__ import annotations

import sys

from omniclip.modalities.video.datasets import build_dataset
from omniclip.modalities.video.prepare import run_tool


def add_arguments(parser) -> None:
    parser.add_argument("--folds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--video-dir", default=None, help="default: videos/ or hmdb51_org/, whichever exists")
    parser.add_argument("--splits-dir", default="testTrainMulti_7030_splits")


def collect(args):
    video_dir = args.video_dir or next((d for d in ("videos", "hmdb51_org") if (args.src / d).is_dir()), None)
    if video_dir is None:
        raise ValueError(f"{args.src} has no videos/ or hmdb51_org/ folder of class folders (pass --video-dir)")
    lists = {}
    for fold in args.folds:
        for split in ("train", "test"):
            lists[f"{split}_split{fold}"] = build_dataset(
                {"name": "hmdb51", "root": str(args.src), "fold": fold, "splits_dir": args.splits_dir,
                 "video_dir": video_dir}, split)
    return lists, next(iter(lists.values())).class_names


def main(argv: list[str] | None = None) -> int:
    return run_tool("prepare_hmdb51", argv, __doc__, add_arguments, collect)


if __name__ == "__main__":
    sys.exit(main())
