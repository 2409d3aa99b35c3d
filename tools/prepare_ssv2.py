"""Turn an extracted Something-Something v2 into the list files the video recipes read, and check it.

    python tools/prepare_ssv2.py SRC OUT_DIR [--short-side 320] [--workers 8]

SRC holds ``something-something-v2-labels.json`` (template -> id), ``-train.json`` and
``-validation.json`` (``{id, label, template, placeholders}``) and the videos
``20bn-something-something-v2/<id>.webm`` (``cat 20bn-something-something-v2-?? | tar zx``).
OUT_DIR receives ``train.txt`` and ``val.txt`` (``path label``; the class is the template without
its brackets), ``classes.csv`` and ``unreadable.txt``. The test labels are withheld, so there is
no test list. Re-encoding (``--short-side``) also turns the VP8/VP9 WebM files into H.264, which
every decoder reads right (decord returns wrong frames on some VP8 files). Works offline.
"""

from __future__ import annotations

import sys

from omniclip.modalities.video.datasets import build_dataset
from omniclip.modalities.video.prepare import run_tool


def add_arguments(parser) -> None:
    parser.add_argument("--video-dir", default="20bn-something-something-v2")


def collect(args):
    lists = {split: build_dataset({"name": "ssv2", "root": str(args.src), "video_dir": args.video_dir}, split)
             for split in ("train", "val")}
    return lists, lists["train"].class_names


def main(argv: list[str] | None = None) -> int:
    return run_tool("prepare_ssv2", argv, __doc__, add_arguments, collect)


if __name__ == "__main__":
    sys.exit(main())
