"""Turn an extracted UCF101 into the list files the video recipes read, and check it.

    python tools/prepare_ucf101.py SRC OUT_DIR [--folds 1 2 3] [--short-side 320] [--workers 8]

SRC holds ``UCF-101/<Class>/v_<Class>_gXX_cYY.avi`` (``unrar x UCF101.rar``) and the split
lists ``ucfTrainTestlist/`` (``classInd.txt``, ``trainlist0{1,2,3}.txt``, ``testlist0{1,2,3}.txt``)
or their archive ``UCF101TrainTestSplits-RecognitionTask.zip``, read directly. OUT_DIR receives
``train_split{f}.txt`` and ``test_split{f}.txt`` (``path label``, 0-based labels in classInd
order), ``classes.csv`` and ``unreadable.txt``. Works offline.
"""

from __future__ import annotations

import sys
import zipfile

from omniclip.modalities.video.datasets import build_dataset
from omniclip.modalities.video.prepare import run_tool

SPLITS_ZIP = "UCF101TrainTestSplits-RecognitionTask.zip"


def add_arguments(parser) -> None:
    parser.add_argument("--folds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--video-dir", default="UCF-101")


def splits_dir(args) -> str:
    """The split lists' folder; from the official zip (extracted into OUT_DIR) when only it is there."""
    if (args.src / "ucfTrainTestlist" / "classInd.txt").is_file():
        return "ucfTrainTestlist"
    archive = args.src / SPLITS_ZIP
    if not archive.is_file():
        raise ValueError(f"{args.src} has neither ucfTrainTestlist/classInd.txt nor {SPLITS_ZIP}")
    target = args.out_dir / "ucfTrainTestlist"
    target.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(archive) as zipped:
        for member in zipped.namelist():
            name = member.rsplit("/", 1)[-1]
            if name.endswith(".txt"):  # flat file names only: nothing escapes the target
                (target / name).write_bytes(zipped.read(member))
    return str(target.resolve())


def collect(args):
    lists_dir = splits_dir(args)
    lists = {}
    for fold in args.folds:
        for split in ("train", "test"):
            lists[f"{split}_split{fold}"] = build_dataset(
                {"name": "ucf101", "root": str(args.src), "fold": fold, "splits_dir": lists_dir,
                 "video_dir": args.video_dir}, split)
    return lists, next(iter(lists.values())).class_names


def main(argv: list[str] | None = None) -> int:
    return run_tool("prepare_ucf101", argv, __doc__, add_arguments, collect)


if __name__ == "__main__":
    sys.exit(main())
