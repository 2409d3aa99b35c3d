"""Match AudioSet segment CSVs against the clips downloaded, and write manifests of what exists.

    python tools/prepare_audioset.py ROOT [--segments balanced_train_segments.csv ...] [--audio-dir audio]

ROOT holds the segment CSVs (``balanced_train_segments.csv``, ``unbalanced_train_segments.csv``,
``eval_segments.csv`` from research.google.com/audioset/download.html), optionally
``class_labels_indices.csv``, and the clips as ``<audio-dir>/<YTID>.<ext>`` (or ``Y<YTID>.<ext>``).
For each CSV it writes ``<name>_manifest.csv`` (the CSV's columns plus the clip's path relative
to ROOT, readable wherever a segment CSV is: ``segments: [<name>_manifest.csv]``) and
``<name>_missing.txt`` (the YTIDs without a clip), and prints the counts. A dataset reading a
manifest skips the folder scan and reports a listed clip that went missing as a bad sample.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

from omniclip.errors import ConfigError
from omniclip.modalities.audio.datasets import AUDIO_SUFFIXES, index_files, read_audioset_labels, read_segments

DEFAULT_SEGMENTS = ("balanced_train_segments.csv", "unbalanced_train_segments.csv", "eval_segments.csv")


def prepare(root: Path, segments: list[str], audio_dir: str = "audio") -> dict[str, tuple[int, int]]:
    """Write a manifest and a missing list per segment CSV; returns name -> (found, missing)."""
    folder = root / audio_dir
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} does not exist (the folder of downloaded clips)")
    mids = read_audioset_labels(root / "class_labels_indices.csv")[0] \
        if (root / "class_labels_indices.csv").is_file() else None
    files = index_files(folder, AUDIO_SUFFIXES)
    counts = {}
    for name in segments:
        path = root / name
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found (download it from research.google.com/audioset)")
        found, missing = [], []
        for line, (ytid, start, end, labels, *_) in enumerate(read_segments(path, name), 1):
            unknown = [m for m in labels.split(",") if mids is not None and m not in mids]
            if unknown:
                raise ValueError(f"{path}: segment {line} ({ytid}) has label {unknown[0]}, "
                                 "which is not in class_labels_indices.csv")
            clip = files.get(ytid) or files.get(f"Y{ytid}")
            if clip is None:
                missing.append(ytid)
            else:
                found.append([ytid, start, end, labels, clip.relative_to(root).as_posix()])
        stem = Path(name).stem
        with (root / f"{stem}_manifest.csv").open("w", newline="") as handle:
            handle.write(f"# manifest of {name}: {len(found)} segments with a clip in {audio_dir}/\n")
            handle.write("# YTID, start_seconds, end_seconds, positive_labels, path\n")
            csv.writer(handle).writerows(found)
        (root / f"{stem}_missing.txt").write_text("".join(f"{ytid}\n" for ytid in missing))
        counts[name] = (len(found), len(missing))
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("--segments", nargs="+", help=f"segment CSVs in ROOT (default: those of {DEFAULT_SEGMENTS} "
                                                      "that exist)")
    parser.add_argument("--audio-dir", default="audio")
    args = parser.parse_args(argv)
    segments = args.segments or [s for s in DEFAULT_SEGMENTS if (args.root / s).is_file()]
    if not segments:
        print(f"prepare_audioset: no segment CSV in {args.root} (expected one of {', '.join(DEFAULT_SEGMENTS)})",
              file=sys.stderr)
        return 2
    try:
        counts = prepare(args.root, segments, args.audio_dir)
    except (FileNotFoundError, ValueError, ConfigError) as err:
        print(f"prepare_audioset: {err}", file=sys.stderr)
        return 2
    for name, (found, missing) in counts.items():
        stem = Path(name).stem
        print(f"{name}: {found} of {found + missing} segments have a clip ({missing} missing, listed in "
              f"{stem}_missing.txt); manifest {stem}_manifest.csv")
    return 0


if __name__ == "__main__":
    sys.exit(main())
