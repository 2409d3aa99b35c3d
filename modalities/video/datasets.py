"""Video datasets in the layouts their releases ship, and the clip pipeline they share.

============  ===================================================================================
``list``      ``path label`` lines (0-based labels; the ViFi-CLIP / X-CLIP / ILA lists and what the
              ``tools/prepare_*.py`` scripts write), paths relative to ``root / video_dir``;
              ``classes``: an ``id,name`` CSV, a file of one name per line, or a shipped list
              (``k400``, ``k600``, ``ucf101``, ``hmdb51``, ``ssv2``).
``kinetics``  Kinetics-400/600/700 CSVs (``label,youtube_id,time_start,time_end,split``) with
              files named ``<ytid>_<start:06d>_<end:06d>.<ext>`` anywhere under ``video_dir``
              (flat or one folder per class); classes: ``classes`` (e.g. ``k400``) or the sorted
              labels of the CSV. Clips never downloaded are left out with a warning (``missing``).
``ucf101``    ``classInd.txt`` (``1 ApplyEyeMakeup``, 1-based), ``trainlist0{1,2,3}.txt``
              (``Class/v_X_g08_c01.avi 1``) and ``testlist0{1,2,3}.txt`` (paths only) in
              ``splits_dir``, videos in ``video_dir/<Class>/``; ``fold`` picks the split.
``hmdb51``    ``<class>_test_split{1,2,3}.txt`` in ``splits_dir`` (``name.avi 1|2|0``: train / test
              / unused), videos in ``video_dir/<class>/``; classes are the sorted class folders
              (``brush_hair`` is named "brush hair").
``ssv2``      Something-Something v2: the labels JSON (template -> id), the train / validation
              JSON lists (``{id, label, template, placeholders}``; the class is the template
              without its brackets), videos ``video_dir/<id>.webm``.
``folder``    one folder per class (``root/<class>/<video or frame folder>``), or
              ``root/<split>/<class>/...`` when that folder exists; classes sorted.
============  ===================================================================================

val and test read the test lists where a dataset has no validation split (UCF101, HMDB51) and
the validation list where its test labels are withheld (SSv2).

Protocol keys make any of them a view (`protocol_view`): ``class_subset`` keeps some classes,
renumbered (``hmdb51_base``: the base half of a base-to-novel split), and ``shots`` keeps K
samples per class drawn with ``shot_seed`` (the few-shot training sets).

Every item is a video file or a frame folder. Training samples hold one clip ``[T, 3, S, S]``,
the label and a caption (the class name through ``text_template``); evaluation samples hold
``num_clips x num_crops`` views ``[V, T, 3, S, S]`` and the item index as ``group_id``, which
the modality's collate flattens and evaluation averages. A listed file that is missing, a
label outside the class list, a path escaping the root (absolute or climbing out with ``..``,
unless ``allow_outside_root: true``), and every unreadable video raise
`SampleError` naming the file when the item is read, so the trainer's stop / skip policy
applies to each. Decoders are opened inside ``__getitem__`` and never kept.

`ClipPipeline` is the whole per-video path (probe, sample, decode, transform) and takes a path
or the encoded bytes, so a sharded reader reuses it unchanged.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import re
from dataclasses import dataclass, fields
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from torch.utils.data import Dataset

from omniclip.data import read_csv_rows, require_dir, require_file, require_split
from omniclip.errors import ConfigError, SampleError
from omniclip.paths import ALLOW_KEY, resolve_in_root
from omniclip.shards import member_errors
from omniclip.protocols import ClassSubset, few_shot_subset
from omniclip.modalities.video.io import IMAGE_SUFFIXES, VIDEO_SUFFIXES, DecodeOptions, VideoSource, probe, read_frames
from omniclip.modalities.video.sampling import ClipTooShort, SamplingOptions, sample_indices
from omniclip.modalities.video.transforms import ClipTransform, TransformOptions

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
#: Published class splits (`omniclip.modalities.video.splits`): base / novel halves and the three
#: 160-class K600 zero-shot sets, each a class list of its own, in its label order.
SPLIT_CLASS_FILES = {
    **{f"{name}_{part}": f"{name}_{part}.txt" for name in ("k400", "hmdb51", "ucf101", "ssv2")
       for part in ("base", "novel")},
    **{f"k600_zs_split{i}": f"k600_zs_split{i}.txt" for i in (1, 2, 3)},
}
#: Shipped class-name files (one name per line, in label order) by dataset name.
CLASS_NAME_FILES = {"k400": "k400.txt", "k600": "k600.txt", "ucf101": "ucf101.txt", "hmdb51": "hmdb51.txt",
                    "ssv2": "ssv2.txt", **SPLIT_CLASS_FILES}


def shipped_class_names(name: str) -> list[str]:
    if name not in CLASS_NAME_FILES:
        raise ConfigError("classes", f"no shipped class list `{name}` (shipped: {', '.join(CLASS_NAME_FILES)})")
    text = resources.files("omniclip.modalities.video").joinpath("classnames", CLASS_NAME_FILES[name]).read_text()
    return [line.strip() for line in text.splitlines() if line.strip()]


def read_class_names(spec: str, root: Path) -> list[str]:
    """Class names from a shipped list name, an ``id,name`` CSV, or a one-name-per-line file."""
    if spec in CLASS_NAME_FILES:
        return shipped_class_names(spec)
    path = Path(spec) if Path(spec).is_absolute() else root / spec
    require_file(path, "classes", f"a class list: an `id,name` CSV, one name per line, or one of "
                                  f"{', '.join(CLASS_NAME_FILES)}")
    lines = [line for line in path.read_text(encoding="utf-8-sig").splitlines() if line.strip()]
    if lines and lines[0].replace(" ", "").lower() == "id,name":
        rows = list(csv.reader(lines[1:]))
        ids = [int(row[0]) for row in rows if row]
        if ids != list(range(len(ids))):
            raise ConfigError("classes", f"{path}: ids are not 0..{len(ids) - 1} in order")
        return [row[1].strip() for row in rows if row]
    return [line.strip() for line in lines]


# ------------------------------------------------------------------------------------ pipeline


class ClipPipeline:
    """One video (path or bytes) -> clip ``[T, 3, S, S]`` (training) or views ``[V, T, 3, S, S]``.

    Probe, sample the indices of every view, decode them in one call, transform each view.
    """

    def __init__(self, decode: DecodeOptions, sampling: SamplingOptions, transform: TransformOptions, train: bool):
        self.decode = decode
        self.sampling = sampling
        self.train = train
        self.transform = ClipTransform(transform, train)

    def __call__(self, source: VideoSource, name: str | None = None) -> torch.Tensor:
        name = name or (str(source) if not isinstance(source, bytes) else "<in-memory video>")
        info = probe(source, self.decode)
        try:
            indices = sample_indices(info.num_frames, self.sampling, train=self.train)
        except ClipTooShort as err:
            raise SampleError(name, f"clip too short: {err} (short_clip: error)") from None
        views, length = indices.shape
        frames = read_frames(source, indices.reshape(-1), self.decode, info=info, layout="TCHW")
        clips = [self.transform(frames[v * length:(v + 1) * length]) for v in range(views)]
        if self.train:
            return clips[0]
        # three-crop views come as [3, T, ...] per temporal view; centre-crop views as [T, ...]
        return torch.cat([c if c.dim() == 5 else c[None] for c in clips])


@dataclass(frozen=True)
class Item:
    """One video of a dataset: its path as listed (relative to the video folder), its label,
    and where it was listed (for messages)."""

    path: str
    label: int
    where: str = ""


@dataclass
class VideoRecord:
    """One item before its per-access randomness: the video (a path, or its encoded bytes from
    a shard), its label and class name, the item index (evaluation groups views by it) and the
    caption template. Map-style datasets and the shard reader both call `make_video_sample`."""

    path: str
    source: Path | bytes
    label: int
    class_name: str | None
    index: int
    text_template: str = "a photo of a {}."


def make_video_sample(record: VideoRecord, pipeline: ClipPipeline, train: bool, name: str | None = None
                      ) -> dict[str, Any]:
    """Sample, decode and transform the clip (`ClipPipeline`); add the caption (training) or the
    group id (evaluation)."""
    inputs = pipeline(record.source, name=name or record.path)
    sample: dict[str, Any] = {"inputs": inputs, "label": record.label, "path": record.path}
    if train:
        if record.class_name is not None:
            sample["text"] = record.text_template.format(record.class_name)
    else:
        sample["group_id"] = record.index
    return sample


# ------------------------------------------------------------------------------------ datasets


class VideoDataset(Dataset):
    """Base of the video datasets: subclasses fill ``items`` and ``class_names``."""

    multilabel = False
    #: Read listed paths outside the video folder too (``allow_outside_root: true`` in a recipe).
    allow_outside_root = False

    def __init__(self, root: Path, split: str, pipeline: ClipPipeline, video_dir: str = "",
                 text_template: str = "a photo of a {}."):
        require_split(split, SPLITS)
        self.root = root
        self.split = split
        self.train = split == "train"
        self.pipeline = pipeline
        self.video_root = root / video_dir if video_dir else root
        self.text_template = text_template
        self.items: list[Item] = []
        self.class_names: list[str] | None = None
        self.num_classes: int | None = None
        self.missing: list[str] = []

    def __len__(self) -> int:
        return len(self.items)

    def resolve(self, item: Item) -> Path:
        """The file of ``item``; a listed path that leaves the video folder (absolute, or ``..``)
        is a bad sample unless ``allow_outside_root`` (`omniclip.paths.resolve_in_root`)."""
        try:
            return resolve_in_root(self.video_root, item.path, allow_outside=self.allow_outside_root)
        except SampleError as err:
            raise SampleError(err.path, f"{err.problem} ({item.where})") from None

    def record(self, index: int) -> "VideoRecord":
        item = self.items[index]
        path = self.resolve(item)
        classes = self.num_classes if self.class_names is None else len(self.class_names)
        if classes is not None and not 0 <= item.label < classes:
            raise SampleError(path, f"label {item.label} is outside the {classes} classes ({item.where})")
        if not path.exists():
            raise SampleError(path, f"file not found ({item.where})")
        name = None if self.class_names is None else self.class_names[item.label]
        return VideoRecord(str(path), path, item.label, name, index, self.text_template)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return make_video_sample(self.record(index), self.pipeline, self.train)


class VideoList(VideoDataset):
    """``path label`` lines (0-based labels)."""

    def __init__(self, root: Path, split: str, pipeline: ClipPipeline, list_file: str | None = None,
                 video_dir: str = "", classes: str | None = None, num_classes: int | None = None,
                 text_template: str = "a photo of a {}."):
        super().__init__(root, split, pipeline, video_dir, text_template)
        if list_file is None:
            raise ConfigError("list_file", "missing: set the `path label` list to read")
        table = require_file(root / list_file, "list_file", "a list of `path label` lines")
        if classes is not None:
            self.class_names = read_class_names(classes, root)
        self.num_classes = num_classes
        for line_no, line in enumerate(table.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            parts = line.rsplit(maxsplit=1)
            if len(parts) != 2 or not re.fullmatch(r"-?\d+", parts[1]):
                raise ConfigError("list_file", f"{table} line {line_no}: expected `path label`, got {line!r}")
            self.items.append(Item(parts[0], int(parts[1]), f"{table.name} line {line_no}"))


def index_videos(folder: Path) -> dict[str, Path]:
    """File stem -> path of every video under ``folder`` (recursively; the first found wins)."""
    found: dict[str, Path] = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        for name in sorted(filenames):
            stem, suffix = os.path.splitext(name)
            if suffix.lower() in VIDEO_SUFFIXES and stem not in found:
                found[stem] = Path(dirpath) / name
    return found


def _first_existing(root: Path, names: Sequence[str], key: str, what: str) -> Path:
    for name in names:
        if (root / name).exists():
            return root / name
    raise ConfigError(key, f"none of {', '.join(str(root / n) for n in names)} exists ({what})")


class Kinetics(VideoDataset):
    """Kinetics CSVs + files named ``<ytid>_<start:06d>_<end:06d>``."""

    CSV_NAMES = {"train": ("train.csv", "annotations/train.csv"),
                 "val": ("validate.csv", "val.csv", "annotations/val.csv"),
                 "test": ("test.csv", "annotations/test.csv")}
    VIDEO_DIRS = {"train": ("train",), "val": ("val", "validate"), "test": ("test",)}

    def __init__(self, root: Path, split: str, pipeline: ClipPipeline, csv_file: str | None = None,
                 video_dir: str | None = None, classes: str | None = None,
                 text_template: str = "a photo of a {}."):
        table = root / csv_file if csv_file else _first_existing(root, self.CSV_NAMES[split], "csv_file",
                                                                     "a Kinetics CSV; see tools/prepare_kinetics.py")
        require_file(table, "csv_file", "a Kinetics CSV (label,youtube_id,time_start,time_end,split)")
        if video_dir is None:
            video_dir = next((d for d in self.VIDEO_DIRS[split] if (root / d).is_dir()), "")
        super().__init__(root, split, pipeline, "", text_template)
        rows = read_csv_rows(table, "csv_file", ("label", "youtube_id", "time_start", "time_end"))
        self.class_names = (read_class_names(classes, root) if classes is not None
                            else sorted({r["label"] for r in rows}))
        index = {name: i for i, name in enumerate(self.class_names)}
        folder = root / video_dir
        if not folder.is_dir():
            raise ConfigError("video_dir", f"folder {folder} does not exist")
        files = index_videos(folder)
        for line_no, row in enumerate(rows, 2):
            if row["label"] not in index:
                raise ConfigError("classes", f"{table} line {line_no}: label `{row['label']}` is not a class "
                                             f"of {classes or 'the CSV'}")
            stem = f"{row['youtube_id']}_{int(float(row['time_start'])):06d}_{int(float(row['time_end'])):06d}"
            path = files.get(stem) or files.get(row["youtube_id"])
            if path is None:
                self.missing.append(stem)
                continue
            self.items.append(Item(path.relative_to(root).as_posix(), index[row["label"]],
                                   f"{table.name} line {line_no}"))
        if self.missing:
            log.warning("Kinetics: %d of %d clips of %s are not under %s and are left out (first: %s)",
                        len(self.missing), len(rows), table.name, folder, self.missing[0])


class UCF101(VideoDataset):
    def __init__(self, root: Path, split: str, pipeline: ClipPipeline, fold: int = 1,
                 splits_dir: str = "ucfTrainTestlist", video_dir: str = "UCF-101",
                 text_template: str = "a photo of a {}."):
        super().__init__(root, split, pipeline, video_dir, text_template)
        if fold not in (1, 2, 3):
            raise ConfigError("fold", f"UCF101 has splits 1, 2, 3; got {fold}")
        lists = root / splits_dir
        class_ind = require_file(lists / "classInd.txt", "splits_dir", "UCF101's classInd.txt; see "
                                                                       "tools/prepare_ucf101.py")
        pairs = [line.split() for line in class_ind.read_text().splitlines() if line.strip()]
        if [int(p[0]) for p in pairs] != list(range(1, len(pairs) + 1)):
            raise ConfigError("splits_dir", f"{class_ind}: class ids are not 1..{len(pairs)} in order")
        self.class_names = [p[1] for p in pairs]
        index = {name: i for i, name in enumerate(self.class_names)}
        name = f"trainlist0{fold}.txt" if self.train else f"testlist0{fold}.txt"
        table = require_file(lists / name, "splits_dir", f"UCF101's {name}")
        for line_no, line in enumerate(table.read_text().splitlines(), 1):
            if not line.strip():
                continue
            path, *label = line.split()
            folder = path.split("/")[0]
            if folder not in index:
                raise ConfigError("splits_dir", f"{table} line {line_no}: `{folder}` is not in classInd.txt")
            if label and int(label[0]) - 1 != index[folder]:
                raise ConfigError("splits_dir", f"{table} line {line_no}: label {label[0]} is not the id of {folder}")
            self.items.append(Item(path, index[folder], f"{name} line {line_no}"))


class HMDB51(VideoDataset):
    def __init__(self, root: Path, split: str, pipeline: ClipPipeline, fold: int = 1,
                 splits_dir: str = "testTrainMulti_7030_splits", video_dir: str = "videos",
                 text_template: str = "a photo of a {}."):
        super().__init__(root, split, pipeline, video_dir, text_template)
        if fold not in (1, 2, 3):
            raise ConfigError("fold", f"HMDB51 has splits 1, 2, 3; got {fold}")
        lists = root / splits_dir
        if not lists.is_dir():
            raise ConfigError("splits_dir", f"folder {lists} does not exist (HMDB51's split files; see "
                                            "tools/prepare_hmdb51.py)")
        suffix = f"_test_split{fold}.txt"
        tables = sorted(p for p in lists.iterdir() if p.name.endswith(suffix))
        if not tables:
            raise ConfigError("splits_dir", f"no *{suffix} in {lists}")
        folders = [t.name[: -len(suffix)] for t in tables]
        self.class_names = [f.replace("_", " ") for f in folders]
        wanted = "1" if self.train else "2"
        for label, (folder, table) in enumerate(zip(folders, tables)):
            for line_no, line in enumerate(table.read_text().splitlines(), 1):
                parts = line.split()
                if not parts:
                    continue
                if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
                    raise ConfigError("splits_dir", f"{table} line {line_no}: expected `name.avi 0|1|2`, got {line!r}")
                if parts[1] == wanted:
                    self.items.append(Item(f"{folder}/{parts[0]}", label, f"{table.name} line {line_no}"))


class SSv2(VideoDataset):
    def __init__(self, root: Path, split: str, pipeline: ClipPipeline,
                 labels_json: str = "something-something-v2-labels.json",
                 train_json: str = "something-something-v2-train.json",
                 validation_json: str = "something-something-v2-validation.json",
                 video_dir: str = "20bn-something-something-v2", text_template: str = "{}"):
        super().__init__(root, split, pipeline, video_dir, text_template)
        labels = self._json(root / labels_json, "labels_json")
        if not isinstance(labels, dict):
            raise ConfigError("labels_json", f"{labels_json}: expected an object template -> id")
        ids = sorted((int(v), k) for k, v in labels.items())
        if [i for i, _ in ids] != list(range(len(ids))):
            raise ConfigError("labels_json", f"{labels_json}: ids are not 0..{len(ids) - 1}")
        self.class_names = [k for _, k in ids]
        index = {k: i for i, k in enumerate(self.class_names)}
        name = train_json if self.train else validation_json
        entries = self._json(root / name, "train_json" if self.train else "validation_json")
        for position, entry in enumerate(entries):
            template = entry.get("template", "").replace("[", "").replace("]", "")
            if template not in index:
                raise ConfigError("labels_json", f"{name} entry {position} (id {entry.get('id')}): template "
                                                 f"`{template}` is not in {labels_json}")
            self.items.append(Item(f"{entry['id']}.webm", index[template], f"{name} entry {position}"))

    @staticmethod
    def _json(path: Path, key: str) -> Any:
        require_file(path, key, "Something-Something v2's JSON files; see tools/prepare_ssv2.py")
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ConfigError(key, f"{path}: unreadable JSON ({err})") from None


class VideoFolder(VideoDataset):
    """``root[/<split>]/<class>/<video file or frame folder>``."""

    def __init__(self, root: Path, split: str, pipeline: ClipPipeline, text_template: str = "a photo of a {}."):
        base = root / split if (root / split).is_dir() else root
        super().__init__(root, split, pipeline, base.relative_to(root).as_posix() if base != root else "",
                         text_template)
        folders = sorted(p for p in base.iterdir() if p.is_dir())
        if not folders:
            raise ConfigError("root", f"{base} has no class folders")
        self.class_names = [f.name.replace("_", " ") for f in folders]
        for label, folder in enumerate(folders):
            for entry in sorted(folder.iterdir()):
                is_video = entry.is_file() and entry.suffix.lower() in VIDEO_SUFFIXES
                is_frames = entry.is_dir() and any(p.suffix.lower() in IMAGE_SUFFIXES for p in entry.iterdir())
                if is_video or is_frames:
                    self.items.append(Item(f"{folder.name}/{entry.name}", label, f"class folder {folder.name}"))


# ------------------------------------------------------------------------------------- factory

DATASETS: dict[str, type[VideoDataset]] = {
    "list": VideoList, "kinetics": Kinetics, "ucf101": UCF101, "hmdb51": HMDB51, "ssv2": SSv2,
    "folder": VideoFolder,
}
#: Recipe keys of the three option groups, and the dataclass field each one sets.
_OPTION_KEYS: dict[str, tuple[type, str]] = {
    **{f.name: (DecodeOptions, f.name) for f in fields(DecodeOptions)},
    **{f.name: (TransformOptions, f.name) for f in fields(TransformOptions)},
    "num_frames": (SamplingOptions, "num_frames"), "sampling": (SamplingOptions, "method"),
    "frame_stride": (SamplingOptions, "stride"), "num_clips": (SamplingOptions, "num_views"),
    "short_clip": (SamplingOptions, "short_clip"),
}
#: Protocol keys, applied after the dataset is read (`protocol_view`).
PROTOCOL_KEYS = ("class_subset", "shots", "shot_seed")


def build_pipeline(options: Mapping[str, Any], train: bool) -> ClipPipeline:
    """`ClipPipeline` from flat recipe keys (see `_OPTION_KEYS`)."""
    groups: dict[type, dict[str, Any]] = {DecodeOptions: {}, SamplingOptions: {}, TransformOptions: {}}
    for key, value in options.items():
        cls, name = _OPTION_KEYS[key]
        groups[cls][name] = tuple(value) if key == "reject" else value
    return ClipPipeline(DecodeOptions(**groups[DecodeOptions]), SamplingOptions(**groups[SamplingOptions]),
                        TransformOptions(**groups[TransformOptions]), train)


def _own_keys(cls: type) -> set[str]:
    import inspect

    return set(inspect.signature(cls.__init__).parameters) - {"self", "root", "split", "pipeline"}


def build_dataset(cfg: Mapping[str, Any], split: str, image_transform: Callable[[Any], torch.Tensor] | None = None
                  ) -> Dataset:
    """The dataset ``cfg['name']`` for ``split``; other keys are its own, the clip options, or the
    protocol keys (`PROTOCOL_KEYS`, which make it a `protocol_view`)."""
    params = dict(cfg)
    name = params.pop("name", None)
    params.pop("split", None)  # the caller's split wins (evaluation passes it separately)
    if name not in DATASETS:
        raise ConfigError("name", f"unknown video dataset `{name}` (known: {', '.join(DATASETS)})")
    cls = DATASETS[name]
    root = require_dir(params.pop("root", None))
    own = _own_keys(cls)
    protocol = {key: params.pop(key) for key in PROTOCOL_KEYS if key in params}
    unknown = sorted(set(params) - own - set(_OPTION_KEYS) - {ALLOW_KEY})
    if unknown:
        known = ", ".join(sorted(own | set(_OPTION_KEYS) | set(PROTOCOL_KEYS) | {"root", "split", ALLOW_KEY}))
        raise ConfigError(unknown[0], f"unknown option for video dataset `{name}` (known: {known})")
    require_split(split, SPLITS)
    allow_outside = bool(params.pop(ALLOW_KEY, False))
    pipeline = build_pipeline({k: params.pop(k) for k in list(params) if k in _OPTION_KEYS}, split == "train")
    dataset = cls(root, split, pipeline, **params)
    dataset.allow_outside_root = allow_outside
    return protocol_view(dataset, root, **protocol) if protocol else dataset


def protocol_view(dataset: VideoDataset, root: Path, class_subset: str | Sequence[str] | None = None,
                  shots: int | None = None, shot_seed: int | None = None) -> Dataset:
    """The part of ``dataset`` an evaluation protocol uses (`omniclip.protocols.ClassSubset`).

    ``class_subset`` (a shipped list such as ``hmdb51_base``, a class file as for ``classes``, or
    a list of names) keeps only those classes, labelled in that list's order: base-only
    training, and evaluation of each half with a classifier over that half alone. ``shots``
    keeps K samples of every (kept) class, drawn with ``shot_seed`` (default 0): the few-shot
    training sets.
    """
    if shot_seed is not None and shots is None:
        raise ConfigError("shot_seed", "only used with `shots` (the few-shot draw)")
    classes = None
    if class_subset is not None:
        names = (read_class_names(class_subset, root) if isinstance(class_subset, str)
                 else [str(n) for n in class_subset])
        index = {name: i for i, name in enumerate(dataset.class_names or [])}
        unknown = [n for n in names if n not in index]
        if unknown:
            raise ConfigError("class_subset", f"{len(unknown)} classes are not classes of the dataset "
                                              f"(first: `{unknown[0]}`)")
        if not names or len(set(names)) != len(names):
            raise ConfigError("class_subset", "expected distinct class names, at least one")
        classes = [index[n] for n in names]
    view = ClassSubset(dataset, classes=classes)
    if shots is None:
        return view
    if isinstance(shots, bool) or not isinstance(shots, int) or shots < 1:
        raise ConfigError("shots", f"must be a positive integer (samples per class), got {shots!r}")
    if shot_seed is not None and (isinstance(shot_seed, bool) or not isinstance(shot_seed, int)):
        raise ConfigError("shot_seed", f"must be an integer, got {shot_seed!r}")
    try:
        chosen = few_shot_subset(view.labels, shots, 0 if shot_seed is None else shot_seed, view.class_names)
    except ValueError as err:
        raise ConfigError("shots", f"{err} in the {dataset.split} split") from None
    return ClassSubset(dataset, indices=[view.indices[i] for i in chosen], classes=classes)


# ------------------------------------------------------------------------------------- shards


class VideoShardCodec:
    """A `VideoRecord` as WebDataset members: the original file's bytes under its own suffix
    (``mp4``, ``avi``, ``webm``...; never re-encoded, so frames decode as from the file), a
    ``json`` (path, label, class name, index, caption template, the video member's suffix),
    ``cls`` and ``txt`` (the class name). Frame folders are not written (a bad sample naming
    the folder). The reader decodes the bytes through the same `ClipPipeline`."""

    modality = "video"

    def __init__(self, pipeline: ClipPipeline, train: bool, text_template: str | None):
        self.pipeline = pipeline
        self.train = train
        self.text_template = text_template

    def encode(self, record: VideoRecord) -> dict[str, bytes]:
        path = Path(record.source) if not isinstance(record.source, bytes) else None
        if path is not None and path.is_dir():
            raise SampleError(path, "is a frame folder: shards hold video files (encode the frames to a video "
                                    "first, e.g. with ffmpeg)")
        suffix = (Path(record.path).suffix.lstrip(".").lower() or "mp4")
        if suffix in ("json", "cls", "txt"):
            raise SampleError(record.path, f"a video suffix `.{suffix}` would clash with the shard's other members")
        data = path.read_bytes() if path is not None else record.source
        meta = {"path": record.path, "label": record.label, "class_name": record.class_name, "index": record.index,
                "text_template": record.text_template, "video": suffix}
        members = {suffix: data, "json": json.dumps(meta).encode(), "cls": str(record.label).encode()}
        if record.class_name is not None:
            members["txt"] = record.class_name.encode()
        return members  # type: ignore[return-value]

    def decode(self, members: Mapping[str, bytes], where: str) -> dict[str, Any]:
        with member_errors(where):
            meta = json.loads(members["json"])
            data = members[meta["video"]]
        record = VideoRecord(meta["path"], bytes(data), int(meta["label"]), meta.get("class_name"),
                             int(meta["index"]), self.text_template or meta["text_template"])
        return make_video_sample(record, self.pipeline, self.train, name=where)


def shard_codec(cfg: Mapping[str, Any], split: str, image_transform: Callable[[Any], torch.Tensor] | None = None
                ) -> VideoShardCodec:
    """The codec for shards of any video dataset: the clip options of ``cfg`` (`_OPTION_KEYS`)
    and ``text_template`` apply; layout and protocol keys were applied when the shards were written."""
    options = {k: v for k, v in cfg.items() if k in _OPTION_KEYS}
    return VideoShardCodec(build_pipeline(options, split == "train"), split == "train", cfg.get("text_template"))
