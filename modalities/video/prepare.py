"""What the ``tools/prepare_*.py`` scripts share: from a dataset parsed in its published layout to
the ``path label`` lists the recipes read, with every video checked once and, optionally,
re-encoded to a smaller short side.

Output folder::

    OUT/videos/...         the videos: a link to the source folder, or the re-encoded copies
    OUT/<list>.txt         one ``path label`` line per readable video (paths relative to videos/)
    OUT/classes.csv        ``id,name``
    OUT/unreadable.txt     ``path<TAB>problem`` for every video left out

A recipe then reads ``name: list, root: OUT, video_dir: videos, list_file: <list>.txt,
classes: classes.csv``.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from omniclip.errors import ConfigError, SampleError
from omniclip.modalities.video.datasets import VideoDataset
from omniclip.modalities.video.io import DecodeOptions, probe, read_frames


@dataclass
class Report:
    """Per list: videos written; and every unreadable video with its problem."""

    written: dict[str, int] = field(default_factory=dict)
    unreadable: list[tuple[str, str]] = field(default_factory=list)

    def summary(self) -> str:
        parts = ", ".join(f"{name}: {n}" for name, n in self.written.items())
        bad = f"; {len(self.unreadable)} unreadable (listed in unreadable.txt)" if self.unreadable else ""
        return f"{parts}{bad}"


def check_video(path: Path, opts: DecodeOptions = DecodeOptions()) -> str | None:
    """None if ``path`` probes and its first and last frames decode, else the problem."""
    try:
        info = probe(path, opts)
        read_frames(path, [0, info.num_frames - 1], opts, info=info)
    except SampleError as err:
        return err.problem
    return None


def reencode(src: Path, dst: Path, short_side: int = 320, opts: DecodeOptions = DecodeOptions()) -> None:
    """``src`` -> H.264 mp4 ``dst`` with its short side at most ``short_side`` (even sizes), the
    same frame rate and timestamps, the rotation kept as metadata, a keyframe every 16 frames;
    audio dropped."""
    import av

    info = probe(src, opts)
    coded_w, coded_h = (info.height, info.width) if info.rotation % 180 else (info.width, info.height)
    scale = min(1.0, short_side / min(coded_w, coded_h))
    width, height = (max(2, int(round(coded_w * scale / 2)) * 2), max(2, int(round(coded_h * scale / 2)) * 2))
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".part")
    try:
        with av.open(str(src)) as source, av.open(str(tmp), "w", format="mp4") as out:
            stream_in = source.streams.video[0]
            stream_out = out.add_stream("libx264", rate=Fraction(stream_in.average_rate or Fraction(round(info.fps))))
            stream_out.width, stream_out.height, stream_out.pix_fmt = width, height, "yuv420p"
            stream_out.codec_context.time_base = stream_in.time_base
            # A keyframe every 16 frames: a TSN seek then decodes at most 15 frames before its
            # target, where web video's 2-s GOPs cost up to 49 (decoding dominates the loader).
            stream_out.options = {"crf": "23", "preset": "veryfast", "x264-params": "keyint=16:min-keyint=16"}
            if info.rotation:
                stream_out.set_display_rotation(info.rotation)
            for frame in source.decode(stream_in):
                picture = frame.reformat(width=width, height=height, format="yuv420p")
                picture.pts, picture.time_base = frame.pts, stream_in.time_base
                for packet in stream_out.encode(picture):
                    out.mux(packet)
            for packet in stream_out.encode():
                out.mux(packet)
        os.replace(tmp, dst)
    except (av.FFmpegError, OSError, ValueError) as err:
        tmp.unlink(missing_ok=True)
        raise SampleError(src, f"cannot re-encode: {err}") from None


def _relative(data: VideoDataset, item: Any) -> str:
    try:
        return data.resolve(item).relative_to(data.video_root).as_posix()
    except SampleError as err:  # a path escaping the folder: listed as unreadable, never followed
        raise ValueError(f"{err.path}: {err.problem}") from None


def _process(src: Path, dst: Path | None, short_side: int, check: bool, opts: DecodeOptions) -> str | None:
    try:
        if dst is not None and not dst.exists():
            reencode(src, dst, short_side, opts)
        return check_video(dst or src, opts) if check else None
    except SampleError as err:
        return err.problem


def prepare_lists(lists: Mapping[str, VideoDataset], class_names: list[str], out: Path, *,
                  short_side: int | None = None, check: bool = True, workers: int = 1,
                  opts: DecodeOptions = DecodeOptions()) -> Report:
    """Write ``out/<name>.txt`` for each dataset of ``lists`` (see the module docstring)."""
    out.mkdir(parents=True, exist_ok=True)
    first = next(iter(lists.values()))
    videos = out / "videos"
    if short_side is None:
        if videos.exists() and not videos.is_symlink():
            raise ValueError(f"{videos} holds re-encoded videos; pass the same --short-side or choose another output")
        if videos.is_symlink():
            videos.unlink()
        videos.symlink_to(first.video_root.resolve(), target_is_directory=True)
    else:
        if videos.is_symlink():
            videos.unlink()
        videos.mkdir(exist_ok=True)
    # Every distinct video once, whatever the number of lists (UCF101's folds share them).
    jobs: dict[str, tuple[Path, Path | None]] = {}
    for data in lists.values():
        if data.video_root.resolve() != first.video_root.resolve():
            raise ValueError(f"lists read videos from {data.video_root} and {first.video_root}; one folder expected")
        for item in data.items:
            rel = _relative(data, item)
            target = videos / Path(rel).with_suffix(".mp4") if short_side is not None else None
            jobs.setdefault(rel, (data.video_root / rel, target))
    args = [(src, dst, short_side or 0, check, opts) for src, dst in jobs.values()]
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            results = list(pool.map(_process, *zip(*args), chunksize=8)) if args else []
    else:
        results = [_process(*a) for a in args]
    problems = dict(zip(jobs, results))
    report = Report()
    for name, data in lists.items():
        lines = []
        for item in data.items:
            rel = _relative(data, item)
            if problems[rel] is None:
                listed = Path(rel).with_suffix(".mp4").as_posix() if short_side is not None else rel
                lines.append(f"{listed} {item.label}\n")
        (out / f"{name}.txt").write_text("".join(lines))
        report.written[name] = len(lines)
    report.unreadable = sorted((rel, problem) for rel, problem in problems.items() if problem is not None)
    (out / "unreadable.txt").write_text("".join(f"{rel}\t{problem}\n" for rel, problem in report.unreadable))
    with (out / "classes.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "name"])
        writer.writerows(enumerate(class_names))
    return report


def run_tool(prog: str, argv: Sequence[str] | None, doc: str, add_arguments: Callable[[Any], None],
             collect: Callable[[Any], tuple[dict[str, VideoDataset], list[str]]]) -> int:
    """The command line every prepare tool shares: SRC OUT [--short-side N] [--no-check] [--workers N].

    ``collect(args)`` parses the source layout into the lists to write and the class names.
    """
    parser = argparse.ArgumentParser(prog=prog, description=doc.split("\n\n")[0])
    parser.add_argument("src", type=Path, help="the extracted dataset, in its published layout")
    parser.add_argument("out_dir", type=Path, help="where the lists (and re-encoded videos) go")
    parser.add_argument("--short-side", type=int, default=None, help="re-encode to this short side (e.g. 320)")
    parser.add_argument("--no-check", action="store_true", help="do not decode every video once")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds one video may take to check")
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        lists, class_names = collect(args)
        report = prepare_lists(lists, class_names, args.out_dir, short_side=args.short_side,
                               check=not args.no_check, workers=args.workers, opts=DecodeOptions(timeout=args.timeout))
    except (ConfigError, ValueError, OSError) as err:
        print(f"{prog}: {err}", file=sys.stderr)
        return 2
    print(f"{args.out_dir}: {len(class_names)} classes; {report.summary()}")
    for rel, problem in report.unreadable[:10]:
        print(f"  unreadable: {rel}: {problem}")
    return 0
