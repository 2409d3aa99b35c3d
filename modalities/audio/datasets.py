"""Audio datasets in the layouts their releases ship.

=============  ==========================================================================
``esc50``      ``meta/esc50.csv`` (filename, fold, target, category, ...) + ``audio/<filename>``;
               50 classes in target order; ``folds`` keeps some of the 5 folds (zero-shot
               uses all 2000 clips).
``audioset``   segment CSVs (``balanced_train_segments.csv``, ``unbalanced_train_segments.csv``,
               ``eval_segments.csv``: ``# ...`` header lines, then ``YTID, start_seconds,
               end_seconds, "mid,mid,..."``) + ``class_labels_indices.csv`` (index, mid,
               display_name; 527 classes, multi-label) + ``<audio_dir>/<YTID>.<ext>`` (or
               ``Y<YTID>.<ext>``, the naming of the common AudioSet dumps), one file per
               10-second segment. A manifest written by ``tools/prepare_audioset.py`` has the
               same columns plus the clip's path and can stand in for a segment CSV.
``vggsound``   ``vggsound.csv`` (no header: ytid, start seconds, label, train|test) +
               ``<audio_dir>/<ytid>_<start:06d>.<ext>`` (the release's naming; ``<ytid>`` alone
               also works); classes = the sorted labels.
``clotho``     ``clotho_captions_{development,validation,evaluation}.csv`` (file_name,
               caption_1..caption_5) + ``{development,validation,evaluation}/<file_name>``
               (splits train / val / test); text-audio retrieval.
``audiocaps``  ``{train,val,test}.csv`` (audiocap_id, youtube_id, start_time, caption; several
               rows per clip in val/test) + ``<audio_dir>/<youtube_id>.<ext>`` (or
               ``Y<youtube_id>``, or ``<audiocap_id>``); text-audio retrieval.
``concat``     ``datasets: [cfg, cfg, ...]`` concatenated (training on AudioSet + VGGSound).
=============  ==========================================================================

Training samples hold one random clip [T] and a caption (class names through a random sound
template, or one of the clip's captions, normalised as the reference does), with mixup (the
partner drawn from the whole dataset, captions joined by "and"). Evaluation samples hold
``num_clips`` evenly spaced clips [num_clips, T] and the item index as ``group_id``; the
modality's collate flattens them and evaluation averages a file's clip embeddings.

Datasets whose files are named by YouTube id (AudioSet, VGGSound, AudioCaps) index their audio
folder once and leave out, with a warning, the segments that were never downloaded (a large
share of every YouTube dataset); those are listed in ``dataset.missing``. A file that a CSV
or manifest names explicitly and that is absent raises `SampleError` when it is read.
With ``video_dir`` set, training samples of the YouTube datasets carry the video frame at the
clip's centre as image anchor (PyAV or torchcodec must be installed).

Paths read from CSVs and manifests (ESC-50, Clotho, a prepared AudioSet manifest) must stay
inside the dataset root unless ``allow_outside_root: true``. Files longer than
``max_decode_seconds`` are read clip by clip (`load_clips`), never decoded whole.
"""

from __future__ import annotations

import csv
import logging
import os
import re
import contextlib
import io
import json
import tempfile
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import torch
from omniclip.modalities.audio.io import MAX_AMPLITUDE, MAX_DECODE_SECONDS, load_clips
from omniclip.modalities.audio.templates import SOUND_TEMPLATES
from torch.utils.data import ConcatDataset, Dataset

from omniclip.data import read_csv_rows, require_dir, require_file, require_split
from omniclip.errors import ConfigError, SampleError
from omniclip.paths import ALLOW_KEY, resolve_in_root
from omniclip.shards import member_errors

log = logging.getLogger(__name__)

ImageTransform = Callable[[Any], torch.Tensor]
SPLITS = ("train", "val", "test")
#: Suffixes looked for when a file is named by id, in order of preference.
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".opus", ".mp3", ".m4a", ".aac", ".mp4", ".mkv", ".webm")
VIDEO_SUFFIXES = (".mp4", ".mkv", ".webm", ".avi", ".mov")
_CAPTION_PUNCTUATION = re.compile(r"([.!\"()*#:;~])")
_SPACES = re.compile(r"\s{2,}")
_MAX_CAPTION_WORDS = 70
#: Frame times are rounded to this many seconds, so the image-anchor cache stays bounded.
_FRAME_STEP = 0.5
#: Partners drawn for mixup before the clip trains unmixed (bad partners are not its fault).
MIXUP_TRIES = 3


@dataclass(frozen=True)
class ClipOptions:
    """How every dataset turns a file into clips.

    Args:
        sample_rate: rate the waveform is resampled to (the fbank front end's rate).
        clip_seconds: clip length (the reference: 5 s, 498 fbank frames padded to 512).
        num_clips: evenly spaced clips per file in evaluation, embeddings averaged (the
            reference, 5-s clips: ESC-50 2, AudioSet 3, VGGSound 3, Clotho 6, AudioCaps 3).
        pad: how files shorter than a clip are filled: ``repeat`` (the reference) or ``zeros``.
        allow_silent: keep files whose peak is under ``silence_threshold`` (else a bad sample).
        mixup: probability of mixing a training clip with a random other one (reference 0.5).
        mixup_alpha: the mixing weight is Beta(alpha, alpha) (reference 10).
        max_amplitude: a file whose peak exceeds this is a bad sample (float audio lies within
            +-1; ``3e29`` makes the fbank NaN).
        max_decode_seconds: longer files are not decoded whole: only each clip's stretch is
            read (and checked), so an hour-long file costs a clip, not gigabytes.
    """

    sample_rate: int = 16000
    clip_seconds: float = 5.0
    num_clips: int = 3
    pad: str = "repeat"
    allow_silent: bool = False
    silence_threshold: float = 1e-4
    mixup: float = 0.0
    mixup_alpha: float = 10.0
    max_amplitude: float = MAX_AMPLITUDE
    max_decode_seconds: float = MAX_DECODE_SECONDS

    def __post_init__(self) -> None:
        if self.sample_rate < 1:
            raise ConfigError("sample_rate", f"must be positive, got {self.sample_rate}")
        if self.clip_seconds * self.sample_rate < 400:
            raise ConfigError("clip_seconds", f"{self.clip_seconds} s is shorter than one 25 ms fbank frame")
        if self.num_clips < 1:
            raise ConfigError("num_clips", f"must be positive, got {self.num_clips}")
        if self.pad not in ("repeat", "zeros"):
            raise ConfigError("pad", f"must be 'repeat' or 'zeros', got {self.pad!r}")
        if not 0.0 <= self.mixup <= 1.0:
            raise ConfigError("mixup", f"is a probability, got {self.mixup}")
        if self.mixup_alpha <= 0:
            raise ConfigError("mixup_alpha", f"must be positive, got {self.mixup_alpha}")
        if not self.max_amplitude > 0:
            raise ConfigError("max_amplitude", f"must be positive, got {self.max_amplitude}")
        if not self.max_decode_seconds >= 0:
            raise ConfigError("max_decode_seconds", f"must be >= 0, got {self.max_decode_seconds}")


@dataclass
class Item:
    """One audio file: where it is, what it is labelled with, and its captions."""

    path: Path
    labels: list[int] = field(default_factory=list)
    captions: list[str] = field(default_factory=list)
    video_stems: tuple[str, ...] = ()
    #: the class names the labels stand for, joined (a record's, for datasets labelled by class)
    label_text: str = ""
    #: the file's bytes when the item comes from a shard (``path`` then names the source file)
    data: bytes | None = None


def clean_caption(text: str) -> str:
    """Lower case, ``.!"()*#:;~`` to spaces, single spaces, at most 70 words (the reference's
    BLIP caption processor, applied to every training caption)."""
    text = _SPACES.sub(" ", _CAPTION_PUNCTUATION.sub(" ", text.lower())).strip()
    return " ".join(text.split(" ")[:_MAX_CAPTION_WORDS])


# ------------------------------------------------------------------------------------ helpers


def _integer(row: Mapping[str, Any], column: str, path: Path, line: int, key: str = "meta") -> int:
    """``row[column]`` as an int, else a ConfigError naming the file, line and value."""
    value = row.get(column)
    try:
        return int(str(value).strip())
    except ValueError:
        raise ConfigError(key, f"{path} line {line}: `{column}` is {value!r}, not an integer") from None


def index_files(folder: Path, suffixes: Sequence[str]) -> dict[str, Path]:
    """File stem -> path for the files of ``folder`` with one of ``suffixes`` (earlier wins)."""
    rank = {s: i for i, s in enumerate(suffixes)}
    found: dict[str, Path] = {}
    with os.scandir(folder) as entries:
        for entry in entries:
            stem, dot, ext = entry.name.rpartition(".")
            suffix = f"{dot}{ext}".lower()
            if not stem or suffix not in rank or not entry.is_file():
                continue
            if stem not in found or rank[suffix] < rank[found[stem].suffix.lower()]:
                found[stem] = Path(entry.path)
    return found


def _folder(root: Path, name: str, key: str) -> Path:
    folder = root / name
    if not folder.is_dir():
        raise ConfigError(key, f"folder {folder} does not exist")
    return folder


def video_backend() -> str:
    """``"av"`` (PyAV) or ``"torchcodec"``, whichever is installed; ConfigError if neither."""
    for module in ("av", "torchcodec"):
        try:
            __import__(module)
            return module
        except (ImportError, OSError, RuntimeError):
            continue
    raise ConfigError("video_dir", "reading video frames needs PyAV (pip install av) or torchcodec with FFmpeg; "
                                   "install one, or set video_dir: null to train without image anchors")


def read_video_frame(path: Path, seconds: float) -> Any:
    """The frame of ``path`` shown at ``seconds`` (the last one if the video is shorter), as PIL."""
    from PIL import Image

    backend = video_backend()
    try:
        if backend == "av":
            import av

            with av.open(str(path)) as container:
                stream = container.streams.video[0]
                container.seek(int(seconds / stream.time_base), stream=stream, backward=True)
                frame = None
                for frame in container.decode(stream):
                    if frame.time is not None and frame.time >= seconds:
                        break
                if frame is None:
                    raise SampleError(path, "the video holds no frames")
                return frame.to_image()
        from torchcodec.decoders import VideoDecoder

        decoder = VideoDecoder(str(path))
        duration = decoder.metadata.duration_seconds
        at = seconds if duration is None else min(seconds, max(duration - 1e-3, 0.0))
        return Image.fromarray(decoder.get_frame_played_at(at).data.permute(1, 2, 0).numpy())
    except (OSError, RuntimeError, ValueError, IndexError) as err:
        raise SampleError(path, f"cannot decode a video frame at {seconds:.1f} s: {err}") from err


# ------------------------------------------------------------------------------------ datasets


class AudioClips(Dataset):
    """Base of the audio datasets: subclasses fill ``items`` and say how items become captions."""

    #: Labels are multi-hot [C] (AudioSet); zero-shot evaluation then reports mAP.
    multilabel = False

    def __init__(self, root: Path, split: str, opts: ClipOptions, image_transform: ImageTransform | None,
                 video_dir: str | None = None):
        self.root = root
        self.split = split
        self.train = split == "train"
        self.opts = opts
        self.items: list[Item] = []
        self.missing: list[str] = []
        self.image_transform = image_transform
        self.videos: dict[str, Path] | None = None
        if video_dir is not None and self.train and image_transform is not None:
            video_backend()
            self.videos = index_files(_folder(root, video_dir, "video_dir"), VIDEO_SUFFIXES)

    def __len__(self) -> int:
        return len(self.items)

    # Subclasses: the training caption of an item, and the plain text a mixup partner adds.
    def caption(self, item: Item) -> str:
        raise NotImplementedError

    def plain_caption(self, item: Item) -> str:
        raise NotImplementedError

    def target(self, item: Item) -> int | torch.Tensor | None:
        """The evaluation label of ``item`` (None for retrieval sets)."""
        return None

    def clips(self, path: Path, num_clips: int, train: bool, data: bytes | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """`load_clips` with the dataset's options: clips [n, T] and their centre times (s).

        ``data`` (a shard's bytes of the file ``path`` names) is decoded through a temporary
        file with ``path``'s suffix, since the readers open files by name; problems name ``path``.
        """
        opts = self.opts
        if data is not None:
            with _bytes_as_file(data, path.suffix) as tmp:
                try:
                    return self.clips(tmp, num_clips, train)
                except SampleError as err:
                    raise SampleError(path, err.problem) from None
        return load_clips(path, opts.sample_rate, opts.clip_seconds, num_clips, train=train, pad=opts.pad,
                          max_decode_seconds=opts.max_decode_seconds, allow_silent=opts.allow_silent,
                          silence_threshold=opts.silence_threshold, max_amplitude=opts.max_amplitude)

    def label_text(self, item: Item) -> str:
        """The names of ``item``'s classes, joined ("" for datasets captioned per file)."""
        return ""

    def record(self, index: int) -> Item:
        """Item ``index`` with its label text: what a shard stores of it (`AudioShardCodec`)."""
        item = self.items[index]
        return replace(item, label_text=self.label_text(item))

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.make_sample(self.items[index], index)

    def make_sample(self, item: Item, index: int) -> dict[str, Any]:
        """The sample of ``item`` (map-style, or rebuilt from a shard): clips, caption, mixup."""
        opts = self.opts
        if not self.train:
            clips, _ = self.clips(item.path, opts.num_clips, train=False, data=item.data)
            sample: dict[str, Any] = {"inputs": clips, "group_id": index, "path": str(item.path)}
            target = self.target(item)
            if target is not None:
                sample["label"] = target
            return sample
        clips, centres = self.clips(item.path, 1, train=True, data=item.data)
        clip, centre = clips[0], float(centres[0])
        text = self.caption(item)
        if opts.mixup > 0 and np.random.rand() < opts.mixup:
            partner = self._mixup_partner()
            if partner is not None:
                other, partner_item = partner
                weight = float(np.random.beta(opts.mixup_alpha, opts.mixup_alpha))
                clip = weight * clip + (1.0 - weight) * other
                text = f"{text.removesuffix('.')} and {self.plain_caption(partner_item).lower()}"
        sample = {"inputs": clip, "text": text, "path": str(item.path)}
        if self.videos is not None:
            sample.update(self._frame(item, centre))
        return sample

    def _mixup_partner(self) -> tuple[torch.Tensor, Item] | None:
        """A clip of a random other item to mix in, or None when `MIXUP_TRIES` draws were all bad.

        A bad partner must not cost the good clip its sample, nor be counted here: its own
        access (every item is drawn once an epoch) is where the skip policy counts it.
        """
        for _ in range(MIXUP_TRIES):
            partner = self.items[np.random.randint(len(self.items))]
            try:
                return self.clips(partner.path, 1, train=True)[0][0], partner
            except SampleError as err:
                log.debug("mixup partner %s skipped: %s", err.path, err.problem)
        return None

    def _frame(self, item: Item, seconds: float) -> dict[str, Any]:
        path = next((self.videos[s] for s in item.video_stems if s in self.videos), None)
        if path is None:
            raise SampleError(item.path, f"no video named {' or '.join(item.video_stems)} in the video folder")
        at = round(seconds / _FRAME_STEP) * _FRAME_STEP
        image = read_video_frame(path, at)
        return {"image": self.image_transform(image.convert("RGB")),
                "image_key": f"{path.relative_to(self.root).as_posix()}@{at:.1f}s"}

    def _resolve(self, files: Mapping[str, Path], stems: Sequence[str], what: str) -> Path | None:
        """The first of ``stems`` present in ``files``; a miss is recorded in ``missing``."""
        for stem in stems:
            if stem in files:
                return files[stem]
        self.missing.append(what)
        return None

    def _warn_missing(self, folder: Path) -> None:
        if self.missing:
            log.warning("%s: %d of %d clips are not in %s and are left out (first: %s)", type(self).__name__,
                        len(self.missing), len(self.missing) + len(self.items), folder, self.missing[0])


class LabelledClips(AudioClips):
    """Datasets labelled by class names: captions are the names through a sound template."""

    class_names: list[str]

    def label_text(self, item: Item) -> str:
        return ", ".join(self.class_names[i] for i in item.labels)

    def plain_caption(self, item: Item) -> str:
        return self.label_text(item)

    def caption(self, item: Item) -> str:
        return sound_caption(self.plain_caption(item))

    def target(self, item: Item) -> int | torch.Tensor:
        if not self.multilabel:
            return item.labels[0]
        hot = torch.zeros(len(self.class_names))
        hot[item.labels] = 1.0
        return hot


class CaptionedClips(AudioClips):
    """Datasets with free-text captions (retrieval): ``captions`` lists them per item."""

    @property
    def captions(self) -> list[list[str]]:
        return [item.captions for item in self.items]

    def plain_caption(self, item: Item) -> str:
        return item.captions[np.random.randint(len(item.captions))]

    def caption(self, item: Item) -> str:
        return clean_caption(self.plain_caption(item))


def sound_caption(label_text: str) -> str:
    """Class names through a random sound template, cleaned (`clean_caption`)."""
    template = SOUND_TEMPLATES[np.random.randint(len(SOUND_TEMPLATES))]
    return clean_caption(template.replace("{}", label_text))


def esc50_class_names() -> list[str]:
    from importlib import resources

    text = resources.files("omniclip.modalities.audio").joinpath("classnames", "esc50.txt").read_text()
    return [line.strip() for line in text.splitlines() if line.strip()]


class ESC50(LabelledClips):
    """ESC-50: 2000 five-second clips, 50 classes, 5 folds (``folds`` keeps some of them)."""

    def __init__(self, root: str | Path, split: str, opts: ClipOptions, image_transform: ImageTransform | None = None,
                 folds: Sequence[int] | None = None, meta: str = "meta/esc50.csv", audio_dir: str = "audio",
                 allow_outside_root: bool = False):
        root = require_dir(root)
        require_split(split, SPLITS)
        super().__init__(root, split, opts, image_transform)
        hint = "expected the ESC-50 layout; see tools/prepare_esc50.py"
        meta_path = require_file(root / meta, "root", hint)
        rows = read_csv_rows(meta_path, "meta", ("filename", "fold", "target", "category"))
        self.class_names = esc50_class_names()
        keep = None if folds is None else {int(f) for f in folds}
        for line, row in enumerate(rows, 2):
            target, fold = (_integer(row, column, meta_path, line) for column in ("target", "fold"))
            name = (row["category"] or "").replace("_", " ")
            if not 0 <= target < 50 or self.class_names[target] != name:
                raise ConfigError("meta", f"{meta_path} line {line}: category `{row['category']}` with target "
                                          f"{target} is not an ESC-50 class")
            if keep is None or fold in keep:
                clip = resolve_in_root(root / audio_dir, row["filename"], allow_outside=allow_outside_root,
                                       where=f"{meta_path} line {line}", key="meta")
                self.items.append(Item(clip, [target]))
        if not self.items:
            raise ConfigError("folds", f"no clip of {meta_path} is in folds {sorted(keep or [])}")


def read_segments(path: Path, key: str) -> list[list[str]]:
    """Rows of an AudioSet segment CSV (``#`` lines skipped): YTID, start, end, labels[, path]."""
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            lines = (line for line in handle if not line.startswith("#") and line.strip())
            rows = list(csv.reader(lines, skipinitialspace=True))
    except (csv.Error, UnicodeDecodeError) as err:
        raise ConfigError(key, f"{path}: unreadable segment CSV ({err})") from None
    for line, row in enumerate(rows, 1):
        if len(row) not in (4, 5):
            raise ConfigError(key, f"{path}: segment {line} has {len(row)} fields; expected YTID, start_seconds, "
                                   "end_seconds, positive_labels (and a path in a prepared manifest)")
    return rows


def read_audioset_labels(path: Path, key: str = "labels") -> tuple[dict[str, int], list[str]]:
    """mid -> index and the lower-cased display names, from ``class_labels_indices.csv``."""
    rows = read_csv_rows(require_file(path, key, "AudioSet's class_labels_indices.csv"), key,
                     ("index", "mid", "display_name"))
    for line, row in enumerate(rows, 2):
        index = _integer(row, "index", path, line, key)
        if index != line - 2:
            raise ConfigError(key, f"{path} line {line}: index {index}, expected {line - 2} (indices are "
                                   f"0..{len(rows) - 1} in order)")
        for column in ("mid", "display_name"):
            if not (row[column] or "").strip():
                raise ConfigError(key, f"{path} line {line}: empty `{column}`")
    mids = [r["mid"].strip() for r in rows]
    if len(set(mids)) != len(mids):
        twice = next(m for m in mids if mids.count(m) > 1)
        raise ConfigError(key, f"{path}: mid `{twice}` is listed twice")
    return {mid: i for i, mid in enumerate(mids)}, [r["display_name"].strip().lower() for r in rows]


class AudioSet(LabelledClips):
    """AudioSet segments (multi-label, 527 classes) with the clips found in ``audio_dir``."""

    multilabel = True

    def __init__(self, root: str | Path, split: str, opts: ClipOptions, image_transform: ImageTransform | None = None,
                 segments: str | Sequence[str] = "balanced_train_segments.csv",
                 labels: str = "class_labels_indices.csv", audio_dir: str = "audio", video_dir: str | None = None,
                 allow_outside_root: bool = False):
        root = require_dir(root)
        require_split(split, SPLITS)
        super().__init__(root, split, opts, image_transform, video_dir)
        index, self.class_names = read_audioset_labels(root / labels)
        folder = _folder(root, audio_dir, "audio_dir")
        files: dict[str, Path] | None = None
        for name in [segments] if isinstance(segments, str) else list(segments):
            seg_path = require_file(root / name, "segments", "an AudioSet segment CSV or a prepared manifest")
            for line, (ytid, _start, _end, mids, *path) in enumerate(read_segments(seg_path, "segments"), 1):
                unknown = [m for m in mids.split(",") if m not in index]
                if unknown:
                    raise ConfigError("segments", f"{seg_path}: segment {line} ({ytid}) has label `{unknown[0]}`, "
                                                  f"which is not in {labels}")
                labels_of = sorted({index[m] for m in mids.split(",")})
                if path:
                    clip = resolve_in_root(root, path[0], allow_outside=allow_outside_root,
                                           where=f"{seg_path} segment {line}", key="segments")
                else:
                    files = index_files(folder, AUDIO_SUFFIXES) if files is None else files
                    clip = self._resolve(files, (ytid, f"Y{ytid}"), ytid)
                if clip is not None:
                    self.items.append(Item(clip, labels_of, video_stems=(ytid, f"Y{ytid}")))
        self._warn_missing(folder)


class VGGSound(LabelledClips):
    """VGGSound (``vggsound.csv``: ytid, start, label, train|test); val and test read the test rows."""

    def __init__(self, root: str | Path, split: str, opts: ClipOptions, image_transform: ImageTransform | None = None,
                 csv_file: str = "vggsound.csv", audio_dir: str = "audio", video_dir: str | None = None):
        root = require_dir(root)
        require_split(split, SPLITS)
        super().__init__(root, split, opts, image_transform, video_dir)
        table = require_file(root / csv_file, "root", "VGGSound's vggsound.csv")
        try:
            with table.open(newline="", encoding="utf-8") as handle:
                rows = [r for r in csv.reader(handle) if r]
        except (csv.Error, UnicodeDecodeError) as err:
            raise ConfigError("csv_file", f"{table}: unreadable CSV ({err})") from None
        for line, row in enumerate(rows, 1):
            if len(row) != 4 or row[3] not in ("train", "test") or not row[1].strip().isdigit():
                raise ConfigError("csv_file", f"{table} line {line}: expected `ytid,start,label,train|test`, "
                                              f"got {','.join(row)!r}")
        self.class_names = sorted({row[2] for row in rows})
        index = {name: i for i, name in enumerate(self.class_names)}
        wanted = "train" if self.train else "test"
        folder = _folder(root, audio_dir, "audio_dir")
        files = index_files(folder, AUDIO_SUFFIXES)
        for ytid, start, label, part in rows:
            if part != wanted:
                continue
            stems = (f"{ytid}_{int(start):06d}", f"{ytid}_{int(start)}", ytid)
            clip = self._resolve(files, stems, stems[0])
            if clip is not None:
                self.items.append(Item(clip, [index[label]], video_stems=stems))
        self._warn_missing(folder)


class Clotho(CaptionedClips):
    """Clotho v2: five captions per file; train / val / test = development / validation / evaluation."""

    SPLIT_NAMES = {"train": "development", "val": "validation", "test": "evaluation"}

    def __init__(self, root: str | Path, split: str, opts: ClipOptions, image_transform: ImageTransform | None = None,
                 captions_csv: str | None = None, audio_dir: str | None = None, allow_outside_root: bool = False):
        root = require_dir(root)
        require_split(split, SPLITS)
        super().__init__(root, split, opts, image_transform)
        part = self.SPLIT_NAMES[split]
        table = require_file(root / (captions_csv or f"clotho_captions_{part}.csv"), "root",
                              "expected the Clotho layout; see tools/prepare_clotho.py")
        columns = [f"caption_{i}" for i in range(1, 6)]
        folder = root / (audio_dir or part)
        for line, row in enumerate(read_csv_rows(table, "captions_csv", ("file_name", *columns)), 2):
            captions = [row[c].strip() for c in columns if row[c] and row[c].strip()]
            if not captions:
                raise ConfigError("captions_csv", f"{table}: `{row['file_name']}` has no caption")
            clip = resolve_in_root(folder, row["file_name"], allow_outside=allow_outside_root,
                                   where=f"{table} line {line}", key="captions_csv")
            self.items.append(Item(clip, captions=captions))


class AudioCaps(CaptionedClips):
    """AudioCaps (``{split}.csv``: audiocap_id, youtube_id, start_time, caption), one item per clip."""

    def __init__(self, root: str | Path, split: str, opts: ClipOptions, image_transform: ImageTransform | None = None,
                 csv_file: str | None = None, audio_dir: str | None = None, video_dir: str | None = None):
        root = require_dir(root)
        require_split(split, SPLITS)
        super().__init__(root, split, opts, image_transform, video_dir)
        table = require_file(root / (csv_file or f"{split}.csv"), "root", "AudioCaps' {train,val,test}.csv")
        rows = read_csv_rows(table, "csv_file", ("audiocap_id", "youtube_id", "start_time", "caption"))
        folder = _folder(root, audio_dir or split, "audio_dir")
        files = index_files(folder, AUDIO_SUFFIXES)
        by_clip: dict[str, Item] = {}
        for row in rows:
            ytid = row["youtube_id"]
            if ytid not in by_clip:
                stems = (ytid, f"Y{ytid}", f"{ytid}_{row['start_time']}", row["audiocap_id"])
                clip = self._resolve(files, stems, ytid)
                if clip is None:
                    continue
                by_clip[ytid] = Item(clip, video_stems=stems)
                self.items.append(by_clip[ytid])
            by_clip[ytid].captions.append(row["caption"].strip())
        self._warn_missing(folder)


_CLIP_KEYS = {f.name for f in fields(ClipOptions)}
DATASETS: dict[str, tuple[type[AudioClips], frozenset[str]]] = {
    "esc50": (ESC50, frozenset({"folds", "meta", "audio_dir", ALLOW_KEY})),
    "audioset": (AudioSet, frozenset({"segments", "labels", "audio_dir", "video_dir", ALLOW_KEY})),
    "vggsound": (VGGSound, frozenset({"csv_file", "audio_dir", "video_dir"})),
    "clotho": (Clotho, frozenset({"captions_csv", "audio_dir", ALLOW_KEY})),
    "audiocaps": (AudioCaps, frozenset({"csv_file", "audio_dir", "video_dir"})),
}


def build_dataset(cfg: Mapping[str, Any], split: str, image_transform: ImageTransform | None = None) -> Dataset:
    """The dataset ``cfg['name']`` for ``split``; other keys are its options or `ClipOptions`.

    ``name: concat`` with ``datasets: [...]`` concatenates several (errors name
    ``datasets.<i>.<key>``).
    """
    params = dict(cfg)
    name = params.pop("name", None)
    params.pop("split", None)  # the caller's split wins (evaluation passes it separately)
    if name == "concat":
        parts = params.pop("datasets", None)
        if params:
            raise ConfigError(sorted(params)[0], "a `concat` dataset takes only `datasets`")
        if not parts:
            raise ConfigError("datasets", "a `concat` dataset needs a non-empty list of datasets")
        return ConcatDataset([_scoped(f"datasets.{i}", part, split, image_transform) for i, part in enumerate(parts)])
    if name not in DATASETS:
        raise ConfigError("name", f"unknown audio dataset `{name}` (known: {', '.join([*DATASETS, 'concat'])})")
    cls, own = DATASETS[name]
    root = params.pop("root", None)
    unknown = sorted(set(params) - _CLIP_KEYS - own)
    if unknown:
        known = ", ".join(sorted(_CLIP_KEYS | own | {"root", "split"}))
        raise ConfigError(unknown[0], f"unknown option for dataset `{name}` (known: {known})")
    opts = ClipOptions(**{k: params.pop(k) for k in list(params) if k in _CLIP_KEYS})
    return cls(root, split, opts, image_transform, **params)


def _scoped(prefix: str, cfg: Mapping[str, Any], split: str, image_transform: ImageTransform | None) -> Dataset:
    try:
        return build_dataset(cfg, split, image_transform)
    except ConfigError as err:
        raise ConfigError(f"{prefix}.{err.key}", err.problem) from err



# ------------------------------------------------------------------------------------- shards

#: libsndfile PCM subtypes a FLAC file holds losslessly (same integer samples, same float decode).
_FLAC_SUBTYPES = {"PCM_16": "int16", "PCM_24": "int32", "PCM_S8": "int16"}


@contextlib.contextmanager
def _bytes_as_file(data: bytes, suffix: str) -> Iterator[Path]:
    folder = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    with tempfile.NamedTemporaryFile(suffix=suffix, dir=folder) as handle:
        handle.write(data)
        handle.flush()
        yield Path(handle.name)


def flac_bytes(path: Path) -> tuple[str, bytes]:
    """``(suffix, bytes)`` to store for an audio file: FLAC when the file is integer PCM that
    libsndfile reads (a lossless re-encode: the decoded floats are identical), else the file
    as it is (FLAC already, or MP3, float WAV, Ogg... which FLAC would change)."""
    import soundfile

    suffix = path.suffix.lstrip(".").lower()
    if suffix != "flac":
        try:
            info = soundfile.info(str(path))
        except (soundfile.LibsndfileError, RuntimeError):
            info = None
        if info is not None and info.subtype in _FLAC_SUBTYPES and info.format != "FLAC":
            data, rate = soundfile.read(str(path), dtype=_FLAC_SUBTYPES[info.subtype], always_2d=True)
            buffer = io.BytesIO()
            soundfile.write(buffer, data, rate, format="FLAC", subtype=info.subtype)
            return "flac", buffer.getvalue()
    return suffix or "audio", path.read_bytes()


class ShardClips(AudioClips):
    """The audio dataset of a shard reader: no items of its own; each sample's `Item` (bytes,
    labels, captions, label text) comes from the shard and goes through `AudioClips.make_sample`."""

    def __init__(self, split: str, opts: ClipOptions):
        super().__init__(Path("."), split, opts, None)

    def plain_caption(self, item: Item) -> str:
        return item.captions[np.random.randint(len(item.captions))] if item.captions else item.label_text

    def caption(self, item: Item) -> str:
        return clean_caption(self.plain_caption(item)) if item.captions else sound_caption(item.label_text)


class AudioShardCodec:
    """An audio `Item` as WebDataset members: the audio as ``flac`` (integer PCM re-encoded
    losslessly, other files under their own suffix: `flac_bytes`) and a ``json`` (path, labels,
    captions, label text, the audio member's suffix); ``txt`` holds the label text or first
    caption. The reader rebuilds the item and calls `AudioClips.make_sample`."""

    modality = "audio"

    def __init__(self, dataset: ShardClips):
        self.dataset = dataset

    def encode(self, record: Item) -> dict[str, bytes]:
        path = Path(record.path)
        if not path.is_file():
            raise SampleError(path, "file not found")
        suffix, data = flac_bytes(path)
        if suffix in ("json", "txt"):
            raise SampleError(path, f"an audio suffix `.{suffix}` would clash with the shard's other members")
        meta = {"path": str(path), "labels": record.labels, "captions": record.captions,
                "label_text": record.label_text, "audio": suffix}
        text = record.label_text or (record.captions[0] if record.captions else "")
        return {suffix: data, "json": json.dumps(meta).encode(), "txt": text.encode()}

    def decode(self, members: Mapping[str, bytes], where: str) -> dict[str, Any]:
        with member_errors(where):
            meta = json.loads(members["json"])
            data = bytes(members[meta["audio"]])
        path = Path(meta["path"]).with_suffix(f".{meta['audio']}")
        item = Item(path, list(meta["labels"]), list(meta["captions"]), label_text=meta["label_text"], data=data)
        try:
            sample = self.dataset.make_sample(item, -1)
        except SampleError as err:
            raise SampleError(where, f"{err.problem} (from {meta['path']})") from None
        sample["path"] = meta["path"]  # the source file, as the map-style sample names it
        return sample


def shard_codec(cfg: Mapping[str, Any], split: str, image_transform: ImageTransform | None = None) -> AudioShardCodec:
    """The codec for shards of any audio dataset, with the `ClipOptions` keys of ``cfg``.

    Shards are read for training: per-sample mixup draws its partner from the whole dataset,
    which a stream cannot, and video frames as image anchors need the video files, which the
    shards do not hold; both are refused here with the key to change.
    """
    if split != "train":
        raise ConfigError("shards", "audio shards are read for training (data.train); evaluate on the files")
    if float(cfg.get("mixup") or 0.0) > 0:
        raise ConfigError("mixup", "per-sample mixup draws its partner from the whole dataset, which a shard stream "
                                   "cannot: set mixup: 0 to train from shards")
    if cfg.get("video_dir") is not None or any(p.get("video_dir") for p in cfg.get("datasets") or []):
        raise ConfigError("video_dir", "shards hold no video files for image anchors: set video_dir: null")
    parts = list(cfg.get("datasets") or [])  # a concat source: its parts' clip options, which must agree
    options = [{k: v for k, v in part.items() if k in _CLIP_KEYS} for part in parts] or [{}]
    if any(o != options[0] for o in options):
        raise ConfigError("datasets", "the concatenated datasets' clip options differ; shards decode with one set")
    opts = ClipOptions(**{**options[0], **{k: v for k, v in cfg.items() if k in _CLIP_KEYS}})
    return AudioShardCodec(ShardClips(split, opts))
