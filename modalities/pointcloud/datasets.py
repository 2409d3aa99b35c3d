"""Point-cloud datasets in their published layouts.

=====================  ====================================================================
``modelnet40``         ``modelnet40_normal_resampled`` layout: ``modelnet40_shape_names.txt``,
                       ``modelnet40_{train,test}.txt`` (shape ids such as ``airplane_0627``) and
                       ``<class>/<shape id>.txt`` (``x,y,z,nx,ny,nz`` lines) or ``.off`` meshes.
``scanobjectnn``       ``h5_files/<variant>/{training,test}_<file>.h5`` (``data`` [S, 2048, 3],
                       ``label`` [S]); variants ``main_split``, ``main_split_nobg``, ``split1``...
                       files ``objectdataset``, ``objectdataset_augmentedrot_scale75``, ...
``ulip_shapenet``      ULIP ShapeNet-55 triplets: ``taxonomy.json``, ``{train,test}.txt`` (file
                       names ``<synset>-<model>.npy``), ``shapenet_pc/<file>`` (8192 x 3) and
                       ``rendered_images/<synset>-<model>/<synset>-<model>_r_<deg><type>.png``.
``objaverse_lvis``     OpenShape's ``lvis.json`` (``uid``, ``category``, ``data_path``) or a CSV
                       with those columns; clouds as ``.npy``/``.npz`` arrays (xyz or xyz+rgb),
                       or OpenShape's pickled ``{xyz, rgb}`` dicts with ``trust_pickle: true``.
``objaverse_triplets`` a manifest (``.json`` list or ``.jsonl``) of ``{pc, images, texts}``
                       entries, paths relative to the root (ULIP-2 / OpenShape triplets exported).
=====================  ====================================================================

Every dataset turns a file into a float32 tensor [num_points, 3] (or [num_points, 6] with
``with_color``): sub-sampled (random or farthest-point) or repeated to ``num_points``, y/z
swapped if asked (OpenShape data is z-up), centred and scaled to the unit sphere, and augmented
in the train split. Problems with one file raise `SampleError` from ``__getitem__``; a missing
root or split file raises `ConfigError` at construction.

Paths read from data files (split lists, manifests) must stay inside the dataset root: an
absolute path or one climbing out with ``..`` is refused (`omniclip.paths.resolve_in_root`)
unless the dataset sets ``allow_outside_root: true``.
"""

from __future__ import annotations

import csv
import io
import json
import pickle
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from omniclip.modalities.pointcloud.io import (
    PickledFileError,
    coordinate_problem,
    normalize_unit_sphere,
    read_point_cloud,
    read_regular_file,
)
from omniclip.modalities.pointcloud.ops import farthest_point_sample
from omniclip.modalities.pointcloud.templates import TEMPLATES
from omniclip.modalities.pointcloud.transforms import PointAugment
from torch.utils.data import Dataset

from omniclip.data import require_dir, require_file, require_split
from omniclip.errors import ConfigError, SampleError
from omniclip.paths import ALLOW_KEY, resolve_in_root
from omniclip.shards import member_errors

ImageTransform = Callable[[Any], torch.Tensor]
SPLITS = ("train", "val", "test")
#: FPS runs on at most this many times ``num_points`` candidates (see `CloudOptions`).
FPS_POOL = 4


@dataclass(frozen=True)
class CloudOptions:
    """How every dataset turns a raw cloud into the tensor a tokenizer reads.

    Args:
        num_points: points per sample (8192 for Point-BERT, 10000 for bigG); ``None`` keeps the
            file's count (then the collate function pads a batch to its largest cloud).
        sampling: ``random`` subset, or ``fps`` (farthest points from a random start, as the
            reference prepares ModelNet40). Clouds with fewer points get random repeats.
        with_color: return xyz + rgb [N, 6] (bigG); files without colour get ``default_color``.
        default_color: grey level for colourless clouds (OpenShape uses 0.4); ``None`` makes a
            colourless file an error when ``with_color`` is set.
        min_points: fewer points than this (the tokenizer's group size) is a bad sample.
        swap_yz: swap the y and z axes (OpenShape's ``y_up``).
        augment: `PointAugment` settings applied in the train split (``None``: none).

    Farthest-point sampling costs ``num_points`` passes over the cloud, so a cloud of more than
    ``FPS_POOL`` x ``num_points`` points is first cut to that many by a random subset (drawn
    from NumPy's global generator, which the loaders seed per sample, so it is reproducible).
    """

    num_points: int | None = 8192
    sampling: str = "random"
    with_color: bool = False
    default_color: float | None = 0.4
    min_points: int = 32
    swap_yz: bool = False
    augment: PointAugment | None = None

    def __post_init__(self) -> None:
        if self.sampling not in ("random", "fps"):
            raise ConfigError("sampling", f"must be 'random' or 'fps', got {self.sampling!r}")
        if self.num_points is not None and self.num_points < 1:
            raise ConfigError("num_points", f"must be positive, got {self.num_points}")
        if self.min_points < 1:
            raise ConfigError("min_points", f"must be positive, got {self.min_points}")
        if self.num_points is not None and self.num_points < self.min_points:
            # every sample would have fewer points than a tokenizer group: fail at build time
            raise ConfigError("num_points", f"{self.num_points} is below min_points={self.min_points} (the "
                                            "tokenizer's group size): every cloud would be too small to group")

    def finish(self, points: np.ndarray, path: str, train: bool) -> torch.Tensor:
        """Validate, resample, normalise and (in training) augment one raw cloud [N, C]."""
        points = np.asarray(points)
        if points.ndim != 2 or points.shape[1] not in (3, 6):
            raise SampleError(path, f"cloud has shape {list(points.shape)}; expected [N, 3] or [N, 6]")
        if len(points) == 0:
            raise SampleError(path, "empty cloud (0 points)")
        bad = int((~np.isfinite(points).all(axis=1)).sum())
        if bad:
            raise SampleError(path, f"{bad} of {len(points)} points have NaN or inf values")
        problem = coordinate_problem(points[:, :3])  # before the float32 cast below
        if problem:
            raise SampleError(path, problem)
        if len(points) < self.min_points:
            raise SampleError(path, f"{len(points)} points, fewer than min_points={self.min_points} (the group size)")
        if self.with_color and points.shape[1] == 3:
            if self.default_color is None:
                raise SampleError(path, "no colour (rgb) in the cloud, and with_color is set")
            points = np.concatenate([points, np.full_like(points, self.default_color)], axis=1)
        elif not self.with_color:
            points = points[:, :3]
        points = self._resample(points.astype(np.float32))
        if self.swap_yz:
            points = points[:, [0, 2, 1, *range(3, points.shape[1])]]
        try:
            points = normalize_unit_sphere(points)
        except ValueError as err:
            raise SampleError(path, f"degenerate cloud: {str(err).removeprefix('cannot normalise: ')}") from None
        if train and self.augment is not None:
            points = self.augment(points)
        return torch.from_numpy(np.ascontiguousarray(points, dtype=np.float32))

    def _resample(self, points: np.ndarray) -> np.ndarray:
        n, target = len(points), self.num_points
        if target is None or n == target:
            return points
        if n < target:
            return np.concatenate([points, points[np.random.randint(0, n, target - n)]])
        if self.sampling == "fps":
            if n > FPS_POOL * target:  # bound the O(n * target) cost (10M points took minutes)
                points = points[np.random.permutation(n)[: FPS_POOL * target]]
                n = len(points)
            xyz = torch.from_numpy(np.ascontiguousarray(points[None, :, :3]))
            idx = farthest_point_sample(xyz, target, start_idx=int(np.random.randint(n)))[0]
            return points[idx.numpy()]
        return points[np.random.permutation(n)[:target]]


def read_cloud(path: Path, opts: CloudOptions) -> np.ndarray:
    """A point file as an array [N, 3 or 6]; meshes are sampled by area to ``num_points``."""
    try:
        return read_point_cloud(path, None, with_color=opts.with_color, default_color=opts.default_color)
    except ValueError as err:  # a mesh: it must be sampled while reading
        if opts.num_points is None:
            raise SampleError(path, f"is a mesh and num_points is not set ({err})") from None
    rng = np.random.default_rng(np.random.randint(0, 2**31 - 1))
    return read_point_cloud(path, opts.num_points, opts.with_color, rng, default_color=opts.default_color)





@dataclass
class CloudRecord:
    """What one item of a point-cloud dataset is before its per-access randomness.

    Every dataset reads its item into this (``record``), and `make_cloud_sample` turns it into
    the sample; the shard reader (`CloudShardCodec`) rebuilds the same record from a shard's
    members, so a sharded sample goes through exactly the code a map-style one does.
    ``images`` are the paired-image candidates: key -> file (a path, or the encoded bytes, or
    ``None`` when the file was absent at write time).
    """

    path: str
    cloud: np.ndarray
    label: int | None = None
    texts: list[str] | None = None
    images: dict[str, Path | bytes | None] = field(default_factory=dict)


def make_cloud_sample(record: CloudRecord, opts: CloudOptions, train: bool,
                      image_transform: ImageTransform | None) -> dict[str, Any]:
    """Resample, normalise and augment the cloud; draw one caption and one paired image."""
    sample: dict[str, Any] = {"inputs": opts.finish(record.cloud, record.path, train)}
    if record.label is not None:
        sample["label"] = record.label
    if record.texts:
        sample["text"] = record.texts[np.random.randint(len(record.texts))]
    sample["path"] = record.path
    if image_transform is not None and record.images:
        keys = list(record.images)
        key = keys[np.random.randint(len(keys))]
        source = record.images[key]
        sample["image"] = load_image(key if source is None else source, image_transform, where=key)
        sample["image_key"] = key
    return sample


def _read_lines(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


class ModelNet40(Dataset):
    """ModelNet40 in the ``modelnet40_normal_resampled`` layout (labels = shape-names order)."""

    def __init__(self, root: str | Path, split: str, opts: CloudOptions, suffix: str = "auto",
                 allow_outside_root: bool = False):
        self.root = require_dir(root)
        require_split(split, ("train", "test"))
        hint = "expected the modelnet40_normal_resampled layout; see tools/prepare_modelnet40.py"
        names = _read_lines(require_file(self.root / "modelnet40_shape_names.txt", "root", hint))
        ids = _read_lines(require_file(self.root / f"modelnet40_{split}.txt", "root", hint))
        index = {name: i for i, name in enumerate(names)}
        self.items: list[tuple[str, int]] = []
        for line, shape_id in enumerate(ids, 1):
            shape = shape_id.rsplit("_", 1)[0]
            if shape not in index:
                raise ConfigError("root", f"modelnet40_{split}.txt line {line}: class `{shape}` of `{shape_id}` "
                                          "is not in modelnet40_shape_names.txt")
            resolve_in_root(self.root, f"{shape}/{shape_id}", allow_outside=allow_outside_root, key="root",
                            where=f"{self.root / f'modelnet40_{split}.txt'} line {line}")
            self.items.append((f"{shape}/{shape_id}", index[shape]))
        if suffix == "auto":
            first = self.root / self.items[0][0] if self.items else None
            suffix = ".off" if first is not None and not first.with_suffix(".txt").exists() \
                and first.with_suffix(".off").exists() else ".txt"
        self.suffix = suffix
        self.opts = opts
        # Columns 4-6 of the resampled files are normals, never colour: read xyz only, and let
        # `finish` add the default colour when colour is asked for.
        self.read_opts = replace(opts, with_color=False)
        self.train = split == "train"
        self.class_names = [name.replace("_", " ") for name in names]

    def __len__(self) -> int:
        return len(self.items)

    def record(self, index: int) -> CloudRecord:
        stem, label = self.items[index]
        path = self.root / f"{stem}{self.suffix}"
        return CloudRecord(str(path), read_cloud(path, self.read_opts), label)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return make_cloud_sample(self.record(index), self.opts, self.train, None)


class ScanObjectNN(Dataset):
    """One ScanObjectNN h5 split, held in memory (labels in the dataset's own class order)."""

    def __init__(self, root: str | Path, split: str, opts: CloudOptions, variant: str = "main_split",
                 file: str = "objectdataset"):
        import h5py

        self.root = require_dir(root)
        require_split(split, ("train", "test"))
        prefix = "training" if split == "train" else "test"
        self.path = self.root / variant / f"{prefix}_{file}.h5"
        hint = "expected h5_files/<variant>/{training,test}_<file>.h5; see tools/prepare_scanobjectnn.py"
        require_file(self.path, "root", hint)
        try:
            with h5py.File(self.path, "r") as h5:
                missing = [k for k in ("data", "label") if k not in h5]
                if missing:
                    raise ConfigError("root", f"{self.path}: no `{missing[0]}` dataset (has {sorted(h5.keys())})")
                self.data = np.asarray(h5["data"][()])
                self.labels = np.asarray(h5["label"][()]).reshape(-1).astype(np.int64)
        except OSError as err:
            raise ConfigError("root", f"{self.path}: unreadable HDF5 file ({err})") from None
        if self.data.ndim != 3 or len(self.data) != len(self.labels):
            raise ConfigError("root", f"{self.path}: `data` {list(self.data.shape)} and `label` "
                                      f"{list(self.labels.shape)} do not describe the same clouds")
        self.opts = opts
        self.train = split == "train"

    def __len__(self) -> int:
        return len(self.labels)

    def record(self, index: int) -> CloudRecord:
        where = f"{self.path}[{index}]"
        label = int(self.labels[index])
        if not 0 <= label < 15:
            raise SampleError(where, f"label {label} is outside the 15 ScanObjectNN classes")
        return CloudRecord(where, self.data[index][:, :3], label)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return make_cloud_sample(self.record(index), self.opts, self.train, None)


def read_taxonomy(path: Path) -> dict[str, list[str]]:
    """synset id -> its names, from ShapeNet's ``taxonomy.json`` (a list of ``{synsetId, name}``)."""
    try:
        taxonomy = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConfigError("root", f"{path}: unreadable JSON ({err})") from None
    if not isinstance(taxonomy, list):
        raise ConfigError("root", f"{path}: expected a list of {{synsetId, name}} entries, "
                                  f"got {type(taxonomy).__name__}")
    synonyms: dict[str, list[str]] = {}
    for number, entry in enumerate(taxonomy, 1):
        if not isinstance(entry, dict) or not isinstance(entry.get("synsetId"), str) \
                or not isinstance(entry.get("name"), str):
            raise ConfigError("root", f"{path}: entry {number} is not {{\"synsetId\": str, \"name\": str}} "
                                      f"(got {json.dumps(entry)[:80]})")
        names = [n.strip() for n in entry["name"].split(",") if n.strip()]
        if not names:
            raise ConfigError("root", f"{path}: entry {number} ({entry['synsetId']}) has an empty name")
        synonyms[entry["synsetId"]] = names
    return synonyms


class ULIPShapeNet(Dataset):
    """ULIP ShapeNet-55 triplets: cloud + one rendered view + a templated synset-name caption.

    As in ULIP / ViT-Lens, each access draws a view (every 12 degrees), an image type (colour or
    ``_depth0001``), a synonym of the synset name and a template. ``whole`` adds the test list
    to the train split (the reference trains on both).
    """

    VIEWS = tuple(range(0, 360, 12))

    def __init__(self, root: str | Path, split: str, opts: CloudOptions, image_transform: ImageTransform | None,
                 pc_dir: str = "shapenet_pc", image_dir: str = "rendered_images",
                 image_types: Sequence[str] = ("", "_depth0001"), whole: bool = True, templates: str = "default",
                 allow_outside_root: bool = False):
        self.root = require_dir(root)
        require_split(split, ("train", "test"))
        hint = "expected the ULIP shapenet-55 layout; see tools/prepare_ulip.py"
        self.synonyms = read_taxonomy(require_file(self.root / "taxonomy.json", "root", hint))
        lists = [f"{split}.txt"] + (["test.txt"] if split == "train" and whole else [])
        files: list[str] = []
        for listed in reversed(lists):  # the test list first, as the reference concatenates them
            list_path = require_file(self.root / listed, "root", hint)
            for line, name in enumerate(_read_lines(list_path), 1):
                resolve_in_root(self.root / pc_dir, name, allow_outside=allow_outside_root, key="root",
                                where=f"{list_path} line {line}")
                files.append(name)
        self.files = files
        if templates not in TEMPLATES:
            raise ConfigError("templates", f"unknown template set `{templates}` (known: {', '.join(TEMPLATES)})")
        self.templates = TEMPLATES[templates]
        self.pc_dir, self.image_dir, self.image_types = pc_dir, image_dir, tuple(image_types)
        self.image_transform = image_transform
        self.opts = opts
        self.train = split == "train"

    def __len__(self) -> int:
        return len(self.files)

    def record(self, index: int) -> CloudRecord:
        """The cloud, every (template, synonym) caption and every (view, image type) render: one
        uniform draw from each list is the reference's independent draws of both parts."""
        name = self.files[index]
        path = self.root / self.pc_dir / name
        synset, _, rest = name.partition("-")
        model = rest.rsplit(".", 1)[0]
        if synset not in self.synonyms:
            raise SampleError(path, f"synset `{synset}` is not in taxonomy.json")
        texts = [template.format(word) for template in self.templates for word in self.synonyms[synset]]
        images = {}
        if self.image_transform is not None:
            for view in self.VIEWS:
                for kind in self.image_types:
                    key = f"{self.image_dir}/{synset}-{model}/{synset}-{model}_r_{view:03d}{kind}.png"
                    images[key] = self.root / key
        return CloudRecord(str(path), read_cloud(path, self.opts), texts=texts, images=images)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return make_cloud_sample(self.record(index), self.opts, self.train, self.image_transform)


def load_image(source: Path | str | bytes, transform: ImageTransform, where: str | None = None) -> torch.Tensor:
    """An image file (a path, or its encoded bytes from a shard) through the CLIP preprocessing;
    unreadable files raise `SampleError` naming the file (``where`` for bytes)."""
    from PIL import Image, UnidentifiedImageError

    name = where if isinstance(source, bytes) else source
    if isinstance(source, str):  # a key whose file was absent when the shard was written
        raise SampleError(source, "image file not found")
    if not isinstance(source, bytes) and not source.is_file():
        raise SampleError(source, "image file not found")
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as img:
            rgb = img.convert("RGB")
    except (UnidentifiedImageError, OSError) as err:
        raise SampleError(name, f"unreadable image ({err})") from None
    return transform(rgb)


def _read_manifest(path: Path, key: str) -> list[dict[str, Any]]:
    """Entries of a ``.json`` list, a ``.jsonl`` file or a ``.csv`` with a header row."""
    require_file(path, key, "the annotation file")
    try:
        if path.suffix == ".csv":
            with path.open(newline="") as handle:
                return list(csv.DictReader(handle))
        if path.suffix == ".jsonl":
            return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        entries = json.loads(path.read_text())
    except (json.JSONDecodeError, csv.Error, UnicodeDecodeError) as err:
        raise ConfigError(key, f"{path}: unreadable ({err})") from None
    if not isinstance(entries, list):
        raise ConfigError(key, f"{path}: expected a list of entries, got {type(entries).__name__}")
    return entries


def _require_fields(entries: list[dict[str, Any]], names: Sequence[str], path: Path, key: str) -> None:
    for line, entry in enumerate(entries, 1):
        missing = [n for n in names if n not in entry]
        if missing:
            raise ConfigError(key, f"{path}: entry {line} has no `{missing[0]}` (needs {', '.join(names)})")


def _read_openshape_npy(path: Path, opts: CloudOptions) -> np.ndarray:
    """OpenShape's pickled ``{"xyz", "rgb", ...}`` dict (only called when trusted), or a plain array.

    The file is sniffed first: only a file that really holds a pickle is unpickled, so a corrupt
    or non-NumPy file gets `read_cloud`'s message, not an unpickling traceback.
    """
    try:
        return read_cloud(path, opts)
    except PickledFileError:
        pass
    data_bytes = read_regular_file(path)
    try:
        obj = np.load(io.BytesIO(data_bytes), allow_pickle=True)
        data = obj.item() if isinstance(obj, np.ndarray) and obj.shape == () else obj
    except (OSError, ValueError, EOFError, pickle.UnpicklingError, AttributeError, ImportError, TypeError) as err:
        raise SampleError(path, f"unreadable pickled .npy ({type(err).__name__}: {err})") from None
    if not isinstance(data, dict) or "xyz" not in data:
        raise SampleError(path, "pickled object is not a dict with an `xyz` array")
    try:
        xyz = np.asarray(data["xyz"], dtype=np.float64)
        rgb = data.get("rgb")
        rgb = None if rgb is None or not opts.with_color else np.asarray(rgb, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise SampleError(path, f"`xyz` / `rgb` are not numeric arrays ({err})") from None
    if rgb is None:
        return xyz
    if rgb.shape != xyz.shape:
        raise SampleError(path, f"`rgb` has shape {list(rgb.shape)}, `xyz` {list(xyz.shape)}")
    return np.concatenate([xyz, rgb / 255.0 if rgb.size and rgb.max() > 1.0 else rgb], axis=1)


def _text_field(value: Any) -> str | None:
    """A manifest's text value (a class name, a caption) if it is a non-empty string, else None.

    JSON ``null`` and numbers are not text: ``str(None)`` would make the class or caption "None".
    """
    return value.strip() if isinstance(value, str) and value.strip() else None


def _string_list(value: Any) -> list[str] | None:
    """A string or a list of strings as a list (``texts`` and ``images`` take either), else None."""
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list) or not all(_text_field(v) for v in values):
        return None
    return [v.strip() for v in values]


class ObjaverseLVIS(Dataset):
    """Objaverse-LVIS zero-shot set: class names are the sorted categories (1156 in the release)."""

    def __init__(self, root: str | Path, split: str, opts: CloudOptions, annotation: str = "lvis.json",
                 path_prefix: str = "/mnt/data/objaverse-processed", trust_pickle: bool = False,
                 allow_outside_root: bool = False):
        self.root = require_dir(root)
        require_split(split, SPLITS)
        self.annotation = self.root / annotation
        entries = _read_manifest(self.annotation, "annotation")
        _require_fields(entries, ("category", "data_path"), self.annotation, "annotation")
        categories = []
        paths = []
        for number, entry in enumerate(entries, 1):
            where = f"{self.annotation} entry {number}"
            category = _text_field(entry["category"])
            if category is None:
                raise ConfigError("annotation", f"{where}: `category` is {entry['category']!r}, not a class name")
            categories.append(category)
            paths.append(self._resolve(entry["data_path"], path_prefix, allow_outside_root, where))
        self.class_names = sorted(set(categories))
        index = {name: i for i, name in enumerate(self.class_names)}
        self.items = [(path, index[category]) for path, category in zip(paths, categories)]
        self.trust_pickle = trust_pickle
        self.opts = opts
        self.train = split == "train"

    def _resolve(self, data_path: Any, prefix: str, allow_outside: bool, where: str) -> Path:
        if isinstance(data_path, str) and prefix and data_path.startswith(prefix.rstrip("/") + "/"):
            data_path = data_path[len(prefix):].lstrip("/")
        return resolve_in_root(self.root, data_path, allow_outside=allow_outside, where=where, key="annotation")

    def __len__(self) -> int:
        return len(self.items)

    def record(self, index: int) -> CloudRecord:
        path, label = self.items[index]
        if self.trust_pickle and path.suffix == ".npy":
            raw = _read_openshape_npy(path, self.opts)
        else:
            try:
                raw = read_cloud(path, self.opts)
            except PickledFileError:
                raise SampleError(path, "holds a pickled object (OpenShape's {xyz, rgb} dict?); set "
                                        "trust_pickle: true if you trust the file") from None
        return CloudRecord(str(path), raw, label)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return make_cloud_sample(self.record(index), self.opts, self.train, None)


class ObjaverseTriplets(Dataset):
    """(cloud, rendered images, captions) triplets from a manifest; one image and caption per access.

    ``texts`` and ``images`` are a string or a list of strings; paths are relative to the root
    (``allow_outside_root`` lets them be absolute or climb out). A bad entry is a `SampleError`
    naming the manifest and the entry, so the skip policy counts it.
    """

    def __init__(self, root: str | Path, split: str, opts: CloudOptions, image_transform: ImageTransform | None,
                 manifest: str = "triplets.jsonl", allow_outside_root: bool = False):
        self.root = require_dir(root)
        require_split(split, SPLITS)
        self.manifest = self.root / manifest
        self.entries = _read_manifest(self.manifest, "manifest")
        _require_fields(self.entries, ("pc", "texts"), self.manifest, "manifest")
        self.image_transform = image_transform
        self.allow_outside_root = allow_outside_root
        self.opts = opts
        self.train = split == "train"

    def __len__(self) -> int:
        return len(self.entries)

    def record(self, index: int) -> CloudRecord:
        entry = self.entries[index]
        where = f"{self.manifest} entry {index + 1}"
        path = resolve_in_root(self.root, entry["pc"], allow_outside=self.allow_outside_root, where=where)
        texts = _string_list(entry["texts"])
        if not texts:
            raise SampleError(where, f"`texts` is {entry['texts']!r}; expected a caption or a list of captions")
        images = entry.get("images")
        image_keys = [] if images is None else _string_list(images)
        if image_keys is None:
            raise SampleError(where, f"`images` is {images!r}; expected an image path or a list of them")
        files = {}
        if self.image_transform is not None:
            files = {key: resolve_in_root(self.root, key, allow_outside=self.allow_outside_root, where=where)
                     for key in image_keys}
        return CloudRecord(str(path), read_cloud(path, self.opts), texts=texts, images=files)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return make_cloud_sample(self.record(index), self.opts, self.train, self.image_transform)


_CLOUD_KEYS = {f.name for f in fields(CloudOptions)}
DATASETS: dict[str, tuple[type, frozenset[str]]] = {
    "modelnet40": (ModelNet40, frozenset({"suffix", ALLOW_KEY})),
    "scanobjectnn": (ScanObjectNN, frozenset({"variant", "file"})),
    "ulip_shapenet": (ULIPShapeNet, frozenset({"pc_dir", "image_dir", "image_types", "whole", "templates",
                                               ALLOW_KEY})),
    "objaverse_lvis": (ObjaverseLVIS, frozenset({"annotation", "path_prefix", "trust_pickle", ALLOW_KEY})),
    "objaverse_triplets": (ObjaverseTriplets, frozenset({"manifest", ALLOW_KEY})),
}
_WITH_IMAGES = (ULIPShapeNet, ObjaverseTriplets)


def build_dataset(cfg: Mapping[str, Any], split: str, image_transform: ImageTransform | None = None) -> Dataset:
    """The dataset ``cfg['name']`` for ``split``; other keys are its options or `CloudOptions`."""
    params = dict(cfg)
    name = params.pop("name", None)
    if name not in DATASETS:
        raise ConfigError("name", f"unknown point-cloud dataset `{name}` (known: {', '.join(DATASETS)})")
    cls, own = DATASETS[name]
    root = params.pop("root", None)
    params.pop("split", None)  # the caller's split argument wins (evaluation passes it separately)
    unknown = sorted(set(params) - _CLOUD_KEYS - own)
    if unknown:
        known = ", ".join(sorted(_CLOUD_KEYS | own | {"root", "split"}))
        raise ConfigError(unknown[0], f"unknown option for dataset `{name}` (known: {known})")
    cloud = {k: params.pop(k) for k in list(params) if k in _CLOUD_KEYS}
    cloud["augment"] = PointAugment.from_config(cloud.get("augment"))
    opts = CloudOptions(**cloud)
    if cls in _WITH_IMAGES:
        return cls(root, split, opts, image_transform, **params)
    return cls(root, split, opts, **params)


# ------------------------------------------------------------------------------------ shards


class CloudShardCodec:
    """A `CloudRecord` as WebDataset members, and back into a sample (`omniclip.shards`).

    Members: ``npy`` (the cloud as read, before resampling: the reader resamples and augments
    per access), ``json`` (path, label, captions, image keys and the member holding each image),
    ``img<i>.<ext>`` (the paired-image candidates' bytes as in the source), and for other tools
    ``txt`` (the first caption) and ``cls`` (the label). The reader rebuilds the record and calls
    `make_cloud_sample`, the map-style datasets' own code.
    """

    modality = "pointcloud"

    def __init__(self, opts: CloudOptions, train: bool, image_transform: ImageTransform | None):
        self.opts = opts
        self.train = train
        self.image_transform = image_transform

    def encode(self, record: CloudRecord) -> dict[str, bytes]:
        buffer = io.BytesIO()
        np.save(buffer, np.asarray(record.cloud), allow_pickle=False)
        members = {"npy": buffer.getvalue()}
        names: dict[str, str | None] = {}
        for i, (key, source) in enumerate(record.images.items()):
            path = Path(source) if not isinstance(source, bytes) and source is not None else None
            if path is not None and not path.is_file():
                names[key] = None  # absent: a draw of it is a bad sample, as in the map-style dataset
                continue
            suffix = (path.suffix if path is not None else Path(key).suffix).lstrip(".").lower() or "png"
            names[key] = f"img{i}.{suffix}"
            members[names[key]] = path.read_bytes() if path is not None else source  # type: ignore[assignment]
        meta = {"path": record.path, "label": record.label, "texts": record.texts, "images": names}
        members["json"] = json.dumps(meta).encode()
        if record.texts:
            members["txt"] = record.texts[0].encode()
        if record.label is not None:
            members["cls"] = str(record.label).encode()
        return members

    def record(self, members: Mapping[str, bytes], where: str) -> CloudRecord:
        with member_errors(where):
            meta = json.loads(members["json"])
            cloud = np.load(io.BytesIO(members["npy"]), allow_pickle=False)
        missing = [name for name in meta["images"].values() if name is not None and name not in members]
        if missing:
            raise SampleError(where, f"no `{missing[0]}` member in the shard sample (listed in its json)")
        images = {key: (None if name is None else members[name]) for key, name in meta["images"].items()}
        return CloudRecord(meta["path"], cloud, meta.get("label"), meta.get("texts"), images)

    def decode(self, members: Mapping[str, bytes], where: str) -> dict[str, Any]:
        return make_cloud_sample(self.record(members, where), self.opts, self.train, self.image_transform)


def shard_codec(cfg: Mapping[str, Any], split: str, image_transform: ImageTransform | None = None) -> CloudShardCodec:
    """The codec for shards of any point-cloud dataset: `CloudOptions` keys of ``cfg`` apply,
    the layout keys of the source dataset (root, file lists) are not needed."""
    cloud = {k: v for k, v in cfg.items() if k in _CLOUD_KEYS}
    cloud["augment"] = PointAugment.from_config(cloud.get("augment"))
    return CloudShardCodec(CloudOptions(**cloud), split == "train", image_transform)
