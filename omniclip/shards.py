"""WebDataset shards: write any dataset of this project to ``.tar`` shards, and stream them back
into the trainer with the same exact-resume guarantees as the map-style loader.

Format: WebDataset tar files (the format open_clip trains from), written with
``webdataset.TarWriter``: each sample is the members ``<key>.<suffix>`` whose ``key`` is the
source dataset's index, zero-padded; what the members hold is the modality's (its codec, see
`ShardCodec`: point clouds as ``.npy``, audio as ``.flac``, videos as the original file, plus a
``json`` with caption(s), label and paired-image keys, and the paired images' own bytes). An
``index.json`` beside the shards lists every shard with its sample count and the range of
source indices it holds, the modality, the source dataset config and its class names.

Shards hold what a sample is *before* its per-access randomness (the raw cloud, the whole
audio file, the encoded video): the reader calls the modality's decode / sample / transform
code on it, the code the map-style datasets call, seeded per sample as they are
(`omniclip.data.seeded_call`). A sample read from shards under key ``(epoch, index)`` therefore
equals the map-style dataset's sample under that key.

Reading (`ShardLoader`), epoch ``e`` of ``seed``, ``W`` ranks, ``K`` workers (``K=0`` counts
as one): the shards are permuted by (seed, e); rank ``r`` takes ``order[r::W]`` and its worker
``k`` takes every ``K``-th of those (open_clip's node then worker split); each worker streams its
shards in that order through a shuffle buffer seeded by (seed, e, r, k) and batches its own
samples (the last batch of a worker may be short; the trainer tops it up). Everything is a pure
function of (seed, epoch, rank, world size, workers, batch size), so resuming skips exactly the
batches already trained on: DataLoader hands out workers' batches round-robin, so the number of
batches consumed says how many each worker produced; a resumed epoch starts each worker past
them (reading, not decoding, the skipped samples) and starts the round-robin at the worker
that was next. With ``train_num_samples`` every worker instead draws shards with replacement
(generator seeded by (seed, e, r, k)) until it has given ``train_num_samples // (W * K)``
samples; each draw of a sample gets a key of its own, so its augmentation differs per draw.

Uneven splits: without resampling every worker of every rank needs at least one shard
(``shards >= W * K``, else a `ConfigError` says how to fix it). Shards are shared out whole, so
when their count is not a multiple of ``W * K`` (or their sizes differ) ranks see different
numbers of samples per epoch: each sample is still seen exactly once per epoch by exactly one
rank, and a rank that finishes its epoch early starts the next one (the trainer counts steps,
not epochs, so ranks stay in step).
"""

from __future__ import annotations

import bisect
import contextlib
import functools
import json
import math
import os
import random
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Protocol, Sequence

import numpy as np
import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset, IterableDataset, Subset, get_worker_info

from omniclip.data import (SampleKey, SkipCounter, Skipped, SkipPolicy, _ignore_interrupts, _SkippingCollate,
                           apply_skip_policy, seeded_call)
from omniclip.errors import ConfigError, OmniclipError, SampleError
from omniclip.evaluation import write_json_atomic

INDEX_NAME = "index.json"
INDEX_FORMAT = "omniclip-shards/1"
#: Recipe keys of a sharded dataset (``data.train``) that belong to the reader, not to the codec.
READER_KEYS = ("shards", "shard_index", "shuffle_buffer", "shard_shuffle", "train_num_samples")
KEY_DIGITS = 9


class ShardError(OmniclipError, RuntimeError):
    """A shard file does not match its index, or is not a readable tar file."""


class ShardCodec(Protocol):
    """A modality's translation between a dataset record and a shard sample's members.

    ``encode(record)`` (writer) takes what the map-style dataset's ``record(index)`` returns
    and gives the members (suffix -> bytes); ``decode(members, where)`` (reader) gives the
    sample the map-style dataset would give for that record, through the same code; bad bytes
    raise `SampleError` naming ``where`` (the shard and key).
    """

    modality: str

    def encode(self, record: Any) -> dict[str, bytes]: ...

    def decode(self, members: Mapping[str, bytes], where: str) -> dict[str, Any]: ...


@contextlib.contextmanager
def member_errors(where: str) -> Iterator[None]:
    """Inside a codec's ``decode``: a missing member (``KeyError``) or bytes that do not parse
    become a `SampleError` naming ``where``, so the skip policy counts the sample."""
    try:
        yield
    except KeyError as err:
        raise SampleError(where, f"no `{err.args[0]}` member in the shard sample") from None
    except (ValueError, OSError, EOFError, UnicodeDecodeError) as err:
        raise SampleError(where, f"unreadable shard member ({type(err).__name__}: {err})") from None


# ------------------------------------------------------------------------------------ index


@dataclass(frozen=True)
class ShardEntry:
    name: str
    count: int
    first: int  # smallest source index held (the shard's keys ascend)
    last: int


@dataclass
class ShardIndex:
    """The contents of ``index.json``: shards in order with their sample counts."""

    shards: list[ShardEntry]
    modality: str
    split: str
    dataset: dict[str, Any]
    source_len: int
    class_names: list[str] | None = None
    skipped: list[list[str]] = field(default_factory=list)
    folder: Path = Path(".")

    @property
    def total(self) -> int:
        return sum(s.count for s in self.shards)

    def to_json(self) -> dict[str, Any]:
        return {"format": INDEX_FORMAT, "modality": self.modality, "split": self.split, "dataset": self.dataset,
                "source_len": self.source_len, "class_names": self.class_names, "total": self.total,
                "skipped": self.skipped,
                "shards": [{"name": s.name, "count": s.count, "first": s.first, "last": s.last} for s in self.shards]}

    @classmethod
    def load(cls, path: Path, key: str = "shards") -> "ShardIndex":
        if not path.is_file():
            raise ConfigError(key, f"{path} not found: shards are read with the index.json omniclip-shard writes "
                                   "beside them (or set shard_index to its path)")
        try:
            data = json.loads(path.read_text())
            if data.get("format") != INDEX_FORMAT:
                raise ValueError(f"format {data.get('format')!r}, expected {INDEX_FORMAT!r}")
            shards = [ShardEntry(str(s["name"]), int(s["count"]), int(s["first"]), int(s["last"]))
                      for s in data["shards"]]
            index = cls(shards, str(data["modality"]), str(data["split"]), dict(data["dataset"]),
                        int(data["source_len"]), data.get("class_names"), data.get("skipped", []), path.parent)
        except (ValueError, KeyError, TypeError) as err:
            raise ConfigError(key, f"{path}: not a shard index ({type(err).__name__}: {err})") from None
        if "total" in data and int(data["total"]) != index.total:
            raise ConfigError(key, f"{path}: `total` is {data['total']} but its shards count {index.total} samples")
        return index


def expand_urls(spec: str | Sequence[str]) -> list[str]:
    """Shard paths from ``dir/{000000..000009}.tar`` brace patterns (or a list of them)."""
    from braceexpand import braceexpand

    specs = [spec] if isinstance(spec, str) else list(spec)
    return [url for item in specs for part in str(item).split("::") for url in braceexpand(part)]


def resolve_shards(spec: str | Sequence[str], index_path: str | None = None, key: str = "shards"
                   ) -> tuple[ShardIndex, list[Path]]:
    """The index and the shard files a recipe names: a folder holding ``index.json`` (every shard
    it lists), or shard paths / brace patterns (a subset of the index beside the first one).

    Every file must exist and be listed in the index: a mismatch is a `ConfigError` naming it.
    """
    if isinstance(spec, str) and Path(spec).expanduser().is_dir():
        folder = Path(spec).expanduser()
        index = ShardIndex.load(Path(index_path) if index_path else folder / INDEX_NAME, key)
        paths = [index.folder / s.name for s in index.shards]
    else:
        paths = [Path(p).expanduser() for p in expand_urls(spec)]
        if not paths:
            raise ConfigError(key, f"{spec!r} names no shard")
        index = ShardIndex.load(Path(index_path) if index_path else paths[0].parent / INDEX_NAME, key)
        listed = {s.name: s for s in index.shards}
        unknown = [p for p in paths if p.name not in listed]
        if unknown:
            raise ConfigError(key, f"{unknown[0]} is not listed in {index.folder / INDEX_NAME}: the index does not "
                                   "describe these shards (write them again with omniclip-shard)")
        index.shards = [listed[p.name] for p in paths]
    for path in paths:
        if not path.is_file():
            raise ConfigError(key, f"shard {path} not found (listed in {index.folder / INDEX_NAME})")
    if not index.shards:
        raise ConfigError(key, f"{index.folder / INDEX_NAME} lists no shard")
    return index, paths


def read_shard(path: Path) -> Iterator[tuple[int, dict[str, bytes]]]:
    """``(source index, members)`` of every sample of one shard, in file order."""
    from webdataset.tariterators import group_by_keys, tar_file_iterator

    try:
        with open(path, "rb") as stream:
            files = ({**f, "__url__": str(path)} for f in tar_file_iterator(stream))
            for sample in group_by_keys(files):
                name = sample.pop("__key__")
                sample.pop("__url__", None)
                try:
                    index = int(Path(name).name)
                except ValueError:
                    raise ShardError(f"{path}: sample key `{name}` is not a source index: not a shard omniclip-shard "
                                     "wrote") from None
                yield index, sample
    except (tarfile.TarError, EOFError, OSError) as err:
        raise ShardError(f"{path}: unreadable tar file ({type(err).__name__}: {err}); write the shard again") from None


def checked_shard(path: Path, entry: ShardEntry) -> Iterator[tuple[int, dict[str, bytes]]]:
    """`read_shard`, checked against the index's entry as it goes: a count or key range that
    differs raises `ShardError` naming the shard and what differs."""
    count = 0
    for index, members in read_shard(path):
        if not entry.first <= index <= entry.last:
            raise ShardError(f"{path}: holds source index {index}, outside the {entry.first}..{entry.last} its "
                             "index.json entry lists: the index does not describe this shard")
        count += 1
        yield index, members
    if count != entry.count:
        raise ShardError(f"{path}: holds {count} samples, its index.json entry says {entry.count}: the index does "
                         "not describe this shard (write the shards and index again)")


# ------------------------------------------------------------------------------------ writing


def source_record(dataset: Dataset, index: int) -> Any:
    """``record(index)`` of the dataset that reads item ``index`` under torch's `Subset` /
    `ConcatDataset` and `omniclip.protocols.ClassSubset` wrappers (its label renumbered)."""
    from omniclip.protocols import ClassSubset

    if isinstance(dataset, Subset):
        return source_record(dataset.dataset, int(dataset.indices[index]))
    if isinstance(dataset, ConcatDataset):
        part = bisect.bisect_right(dataset.cumulative_sizes, index)
        start = dataset.cumulative_sizes[part - 1] if part else 0
        return source_record(dataset.datasets[part], index - start)
    if isinstance(dataset, ClassSubset):
        record = source_record(dataset.dataset, dataset.indices[index])
        if dataset.remap is not None:
            record.label = dataset.remap[int(record.label)]
        return record
    if not hasattr(dataset, "record"):
        raise ConfigError("name", f"{type(dataset).__name__} cannot be written to shards (it has no `record`)")
    return dataset.record(index)


def _stem(i: int) -> str:
    return f"shard-{i:06d}.tar"


class _ShardFiles:
    """Shards written one at a time through a temporary name, renamed when complete."""

    def __init__(self, out: Path, samples_per_shard: int | None, max_size: int | None):
        self.out, self.per_shard, self.max_size = out, samples_per_shard, max_size
        self.entries: list[ShardEntry] = []
        self._writer: Any = None
        self._stream: Any = None
        self._count = self._bytes = 0
        self._first = self._last = -1

    def write(self, index: int, members: Mapping[str, bytes]) -> None:
        import webdataset as wds

        size = sum(len(v) for v in members.values())
        full = self._writer is not None and (
            (self.per_shard is not None and self._count >= self.per_shard)
            or (self.max_size is not None and self._count and self._bytes + size > self.max_size))
        if full:
            self.close()
        if self._writer is None:
            self._stream = open(self._tmp(), "wb")
            self._writer = wds.TarWriter(self._stream, encoder=False)
            self._count = self._bytes = 0
            self._first = index
        self._writer.write({"__key__": f"{index:0{KEY_DIGITS}d}", **members})
        self._count += 1
        self._bytes += size
        self._last = index

    def _tmp(self) -> Path:
        return self.out / f".{_stem(len(self.entries))}.tmp"

    def close(self) -> None:
        if self._writer is None:
            return
        self._writer.close()  # closes the stream too
        self._stream.close()
        os.replace(self._tmp(), self.out / _stem(len(self.entries)))
        self.entries.append(ShardEntry(_stem(len(self.entries)), self._count, self._first, self._last))
        self._writer = None


def write_shards(
    dataset: Dataset,
    codec: ShardCodec,
    out: str | Path,
    *,
    dataset_cfg: Mapping[str, Any],
    split: str = "train",
    samples_per_shard: int | None = 1000,
    max_size: int | None = None,
    policy: SkipPolicy = "skip",
    max_skip_fraction: float = 0.1,
    seed: int = 0,
    progress: bool = True,
) -> tuple[ShardIndex, SkipCounter]:
    """Write every item of ``dataset`` to shards under ``out`` plus ``index.json``; returns the
    index and the count of bad samples.

    A shard closes after ``samples_per_shard`` samples or before it would pass ``max_size``
    bytes. Items that raise `SampleError` follow ``policy`` and are counted as in training
    (`omniclip.data.SkipCounter`); they are listed in the index under ``skipped``. Records draw
    any randomness of their own (a mesh sampled to points) from (seed, 0, index).
    """
    if samples_per_shard is None and max_size is None:
        raise ConfigError("samples_per_shard", "set samples_per_shard or max_size")
    if samples_per_shard is not None and samples_per_shard < 1:
        raise ConfigError("samples_per_shard", f"must be >= 1, got {samples_per_shard}")
    if max_size is not None and max_size < 1:
        raise ConfigError("max_size", f"must be >= 1 byte, got {max_size}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stale = sorted(out.glob("shard-*.tar"))
    if stale or (out / INDEX_NAME).exists():
        raise ConfigError("out", f"{out} already holds shards ({stale[0].name if stale else INDEX_NAME}): "
                                 "write into an empty folder")
    files = _ShardFiles(out, samples_per_shard, max_size)
    skips = SkipCounter(max_skip_fraction)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(dataset), desc="shards", unit="sample", dynamic_ncols=True)  # type: ignore[arg-type]
    try:
        for index in range(len(dataset)):  # type: ignore[arg-type]
            members = seeded_call(seed, 0, index, lambda: apply_skip_policy(
                lambda: codec.encode(source_record(dataset, index)), policy))
            if isinstance(members, Skipped):
                skips.update([members], 1)
            else:
                skips.update([], 1)
                files.write(index, members)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(shards=len(files.entries) + (files._writer is not None), refresh=False)
        files.close()
    finally:
        if bar is not None:
            bar.close()
        if files._writer is not None:  # interrupted: leave no partial shard under a final name
            files._writer.close()
            files._tmp().unlink(missing_ok=True)
    index_obj = ShardIndex(files.entries, codec.modality, split, _jsonable(dataset_cfg), len(dataset),  # type: ignore[arg-type]
                           getattr(dataset, "class_names", None), [list(s) for s in skips.skipped], out)
    write_json_atomic(index_obj.to_json(), out / INDEX_NAME)
    return index_obj, skips


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


# ------------------------------------------------------------------------------------ reading


@dataclass
class ShardDataset:
    """A sharded training set: the index, the shard files, the codec and the reader's options.

    ``class_names`` is the source dataset's (objectives and batch transforms read it).
    """

    index: ShardIndex
    paths: list[Path]
    codec: ShardCodec
    shuffle_buffer: int = 1000
    shard_shuffle: bool = True
    train_num_samples: int | None = None
    #: the dataset options the codec decodes with (the source's, overridden by the recipe's)
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.shuffle_buffer < 0:
            raise ConfigError("shuffle_buffer", f"must be >= 0, got {self.shuffle_buffer}")
        if self.train_num_samples is not None and self.train_num_samples < 1:
            raise ConfigError("train_num_samples", f"must be >= 1, got {self.train_num_samples}")
        self.class_names = self.index.class_names

    def __len__(self) -> int:
        return self.index.total if self.train_num_samples is None else self.train_num_samples


def build_shard_dataset(modality: Any, cfg: Mapping[str, Any], split: str, key: str = "data.train",
                        image_transform: Any = None, tokenizer_cfg: Mapping[str, Any] | None = None) -> ShardDataset:
    """The `ShardDataset` a recipe's dataset config with ``shards`` describes.

    The codec's options are the index's source dataset config overridden by the recipe's keys,
    so ``data.train: {shards: DIR}`` alone decodes as the source did, and a recipe can change
    e.g. ``num_points`` or the augmentation. ``limit`` keeps the fewest leading shards holding
    that many samples (shards are read whole). Errors name ``key``.
    """
    from omniclip.recipe import config_scope

    params = dict(cfg)
    reader = {k: params.pop(k) for k in READER_KEYS if k in params}
    with config_scope(key):
        index, paths = resolve_shards(reader["shards"], reader.get("shard_index"))
        if index.modality != modality.name:
            raise ConfigError("shards", f"{index.folder / INDEX_NAME} holds {index.modality} samples, not "
                                        f"{modality.name}")
        options = {**index.dataset, **params}
        limit = options.pop("limit", None)
        if limit is not None:  # whole shards: the fewest leading ones that hold `limit` samples
            counts = np.cumsum([s.count for s in index.shards])
            keep = int(np.searchsorted(counts, int(limit))) + 1
            index.shards, paths = index.shards[:keep], paths[:keep]
        if tokenizer_cfg is not None:
            modality.check_data(tokenizer_cfg, options)
        codec = modality.shard_codec(options, split, image_transform)
        return ShardDataset(index, paths, codec, int(reader.get("shuffle_buffer", 1000)),
                            bool(reader.get("shard_shuffle", True)), reader.get("train_num_samples"), options)


def _seed_words(*words: int) -> int:
    return int(np.random.SeedSequence([int(w) for w in words]).generate_state(1, np.uint64)[0])


def shuffled(items: Iterator[Any], size: int, rng: random.Random) -> Iterator[Any]:
    """A shuffle buffer of ``size`` items: the output order is a pure function of the input
    order and ``rng``'s seed (``size <= 1`` passes items through)."""
    if size <= 1:
        yield from items
        return
    buffer: list[Any] = []
    for item in items:
        if len(buffer) < size:
            buffer.append(item)
            continue
        j = rng.randrange(size)
        yield buffer[j]
        buffer[j] = item
    rng.shuffle(buffer)
    yield from buffer


@dataclass(frozen=True)
class EpochPlan:
    """Who reads what in one epoch of one rank: the pure function the module docstring describes."""

    source: ShardDataset
    epoch: int
    seed: int
    rank: int
    world_size: int
    slots: int  # workers (at least one)
    batch_size: int

    @property
    def quota(self) -> int | None:
        """Samples per worker with resampling (None without)."""
        num = self.source.train_num_samples
        return None if num is None else num // (self.world_size * self.slots)

    @functools.cached_property
    def _shard_order(self) -> list[int]:
        """Every shard position in this epoch's order (shuffled once per plan, not per call)."""
        order = list(range(len(self.source.paths)))
        if self.source.shard_shuffle:
            random.Random(_seed_words(self.seed, self.epoch, 0x5348)).shuffle(order)
        return order

    def slot_shards(self, slot: int) -> list[int]:
        """Shard positions worker ``slot`` reads, in order (without resampling)."""
        return self._shard_order[self.rank::self.world_size][slot::self.slots]

    def slot_samples(self, slot: int) -> int:
        if self.quota is not None:
            return self.quota
        return sum(self.source.index.shards[i].count for i in self.slot_shards(slot))

    @functools.cached_property
    def _batch_counts(self) -> tuple[int, ...]:
        return tuple(math.ceil(self.slot_samples(k) / self.batch_size) for k in range(self.slots))

    def batch_counts(self) -> list[int]:
        return list(self._batch_counts)

    def total_batches(self) -> int:
        return sum(self.batch_counts())

    def batch_order(self) -> list[int]:
        """The worker of each batch of the epoch, as DataLoader's in-order round-robin yields them."""
        left = self.batch_counts()
        order: list[int] = []
        while any(left):
            for k in range(self.slots):
                if left[k]:
                    order.append(k)
                    left[k] -= 1
        return order

    def stream(self, slot: int) -> Iterator[tuple[int, int, dict[str, bytes], str]]:
        """``(key id, source index, members, where)`` of worker ``slot``'s samples, in order."""
        source, index = self.source, self.source.index
        rng = random.Random(_seed_words(self.seed, self.epoch, self.rank, slot, 0x5342))

        def raw() -> Iterator[tuple[int, int, dict[str, bytes], str]]:
            if self.quota is None:
                for shard in self.slot_shards(slot):
                    path = source.paths[shard]
                    for item, members in checked_shard(path, index.shards[shard]):
                        yield item, item, members, f"{path}:{item:0{KEY_DIGITS}d}"
                return
            draws = random.Random(_seed_words(self.seed, self.epoch, self.rank, slot, 0x5253))
            slots_total, uid, j = self.world_size * self.slots, self.rank * self.slots + slot, 0
            while True:  # shards drawn with replacement; each draw's samples get keys of their own
                shard = draws.randrange(len(source.paths))
                path = source.paths[shard]
                offset = index.source_len * (1 + uid + slots_total * j)
                for item, members in checked_shard(path, index.shards[shard]):
                    yield offset + item, item, members, f"{path}:{item:0{KEY_DIGITS}d}"
                j += 1

        stream = shuffled(raw(), source.shuffle_buffer, rng)
        limit = self.quota
        for n, sample in enumerate(stream):
            if limit is not None and n >= limit:
                return
            yield sample


class _SlotStream(IterableDataset):
    """One epoch of one rank: worker ``i`` serves slot ``(start + i) % slots`` from its batch
    ``skip[slot]`` on, and yields collated batches."""

    def __init__(self, plan: EpochPlan, skip: list[int], start: int, decode: Callable[[int, int, Mapping[str, bytes], str], Any],
                 collate: _SkippingCollate):
        self.plan, self.skip, self.start, self.decode, self.collate = plan, skip, start, decode, collate

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        workers = 1 if info is None else info.num_workers
        if workers != self.plan.slots:
            raise RuntimeError(f"{workers} loader workers for a plan of {self.plan.slots}")
        slot = (self.start + (0 if info is None else info.id)) % self.plan.slots
        yield from self.batches(slot)

    def batches(self, slot: int) -> Iterator[dict[str, Any]]:
        size = self.plan.batch_size
        skip = self.skip[slot] * size
        batch: list[tuple[SampleKey, Any]] = []
        for n, (key_id, item, members, where) in enumerate(self.plan.stream(slot)):
            if n < skip:  # trained on before the restart: read past, never decoded
                continue
            batch.append(((self.plan.epoch, key_id), self.decode(self.plan.epoch, key_id, members, where)))
            if len(batch) == size:
                yield self.collate(batch)
                batch = []
        if batch:
            yield self.collate(batch)


class _KeyLookup:
    """``lookup[(epoch, id)] -> (key, sample)``: one sample rebuilt from its key (the trainer
    rebuilds a checkpointed partial batch this way)."""

    def __init__(self, loader: "ShardLoader"):
        self.loader = loader

    def __getitem__(self, key: SampleKey) -> tuple[SampleKey, Any]:
        epoch, key_id = int(key[0]), int(key[1])
        source = self.loader.source
        item = key_id % source.index.source_len
        candidates = [i for i, s in enumerate(source.index.shards) if s.first <= item <= s.last]
        for shard in candidates:
            for found, members in read_shard(source.paths[shard]):
                if found == item:
                    where = f"{source.paths[shard]}:{item:0{KEY_DIGITS}d}"
                    return key, self.loader._decode(epoch, key_id, members, where)
        raise ShardError(f"sample {item} (key {key}) is in none of the shards: were the shards changed since the "
                         "checkpoint was written?")


class ShardLoader:
    """The trainer's data source over shards, with the interface of the map-style pair
    (`omniclip.data.ResumableSampler` + `build_loader`'s DataLoader): ``set_epoch``,
    ``advance``, ``len`` (batches left this epoch), ``state_dict`` / ``load_state_dict``,
    iteration over batches (dicts with ``sample_keys`` and ``skipped``), and
    ``dataset[key]`` + ``collate_fn`` to rebuild samples by key.

    ``advance`` counts loader batches (a batch that lost samples to the skip policy still counts
    as one): the position is "batches consumed in this epoch".
    """

    def __init__(self, source: ShardDataset, collate_fn: Callable[[list[Any]], dict[str, Any]], batch_size: int,
                 *, seed: int = 0, rank: int = 0, world_size: int = 1, num_workers: int = 0,
                 policy: SkipPolicy = "stop", pin_memory: bool = False, prefetch_factor: int | None = None):
        if batch_size < 1:
            raise ConfigError("batch_size", f"must be >= 1, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ConfigError("rank", f"must be in [0, {world_size}), got {rank}")
        self.source, self.batch_size, self.seed = source, batch_size, seed
        self.rank, self.world_size, self.num_workers = rank, world_size, num_workers
        self.slots = max(1, num_workers)
        self.policy, self.pin_memory, self.prefetch_factor = policy, pin_memory, prefetch_factor
        self.collate_fn = _SkippingCollate(collate_fn, keyed=True)
        self.dataset = _KeyLookup(self)
        self.epoch = 0
        self.consumed = 0
        self._plan: EpochPlan | None = None
        shards, needed = len(source.paths), world_size * self.slots
        if source.train_num_samples is None and shards < needed:
            raise ConfigError("data.train.shards", f"{shards} shard(s) cannot feed {world_size} rank(s) x "
                                                   f"{self.slots} worker(s): each worker reads whole shards and needs "
                                                   f"at least one; write at least {needed} (a smaller "
                                                   "--samples-per-shard), use fewer trainer.num_workers, or set "
                                                   "data.train.train_num_samples (resampling)")
        if source.train_num_samples is not None and source.train_num_samples // needed < 1:
            raise ConfigError("data.train.train_num_samples", f"{source.train_num_samples} samples cannot be shared "
                                                              f"by {world_size} rank(s) x {self.slots} worker(s)")

    def plan(self, epoch: int | None = None) -> EpochPlan:
        """The plan of ``epoch`` (default: the current one), built once per epoch: `advance` asks for
        it every step."""
        epoch = self.epoch if epoch is None else epoch
        if self._plan is None or self._plan.epoch != epoch:
            self._plan = EpochPlan(self.source, epoch, self.seed, self.rank, self.world_size, self.slots,
                                   self.batch_size)
        return self._plan

    def _decode(self, epoch: int, key_id: int, members: Mapping[str, bytes], where: str) -> Any:
        codec, policy = self.source.codec, self.policy
        return seeded_call(self.seed, epoch, key_id, lambda: apply_skip_policy(lambda: codec.decode(members, where),
                                                                              policy))

    # --- sampler interface
    def set_epoch(self, epoch: int) -> None:
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        if epoch != self.epoch:
            self.epoch, self.consumed = epoch, 0

    def advance(self, num_batches: int = 1) -> None:
        if num_batches < 0:
            raise ValueError(f"num_batches must be >= 0, got {num_batches}")
        self.consumed = min(self.plan().total_batches(), self.consumed + num_batches)

    def __len__(self) -> int:
        return self.plan().total_batches() - self.consumed

    def _identity(self) -> dict[str, Any]:
        return {"workers": self.slots, "world_size": self.world_size, "batch_size": self.batch_size,
                "shards": [s.name for s in self.source.index.shards], "total": self.source.index.total,
                "train_num_samples": self.source.train_num_samples, "shuffle_buffer": self.source.shuffle_buffer,
                "shard_shuffle": self.source.shard_shuffle}

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "consumed": self.consumed, "shards": self._identity()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        saved = state.get("shards")
        if saved is None:
            raise ValueError("the checkpoint's data position is a map-style sampler's, and this run reads shards: "
                             "resume with the dataset it was written with, or start a new run")
        mine = self._identity()
        changed = [k for k in mine if saved.get(k) != mine[k]]
        if changed:
            raise ValueError(f"the checkpoint read shards with {', '.join(f'{k}={saved.get(k)!r}' for k in changed)}; "
                             f"this run has {', '.join(f'{k}={mine[k]!r}' for k in changed)}: the position in the "
                             "shard stream cannot carry over (set them back, or start a new run)")
        epoch, consumed = int(state["epoch"]), int(state["consumed"])
        if epoch < 0 or not 0 <= consumed <= self.plan(epoch).total_batches():
            raise ValueError(f"shard loader state {dict(state)} does not fit this epoch's plan")
        self.epoch, self.consumed = epoch, consumed

    # --- iteration
    def __iter__(self) -> Iterator[dict[str, Any]]:
        plan = self.plan()
        order = plan.batch_order()
        done = order[: self.consumed]
        skip = [done.count(k) for k in range(plan.slots)]
        start = (done[-1] + 1) % plan.slots if done else 0
        stream = _SlotStream(plan, skip, start, self._decode, self.collate_fn)
        if self.num_workers == 0:
            return stream.batches(0)
        loader = DataLoader(stream, batch_size=None, num_workers=self.num_workers, pin_memory=self.pin_memory,
                            prefetch_factor=self.prefetch_factor, worker_init_fn=_ignore_interrupts,
                            persistent_workers=False, collate_fn=_as_is,
                            generator=torch.Generator().manual_seed(self.seed))
        return iter(loader)


def _as_is(batch: Any) -> Any:
    """Workers yield collated batches already (DataLoader's default would convert them again)."""
    return batch


__all__ = ["INDEX_NAME", "ShardCodec", "ShardDataset", "ShardError", "ShardIndex", "ShardLoader", "EpochPlan",
           "build_shard_dataset", "expand_urls", "member_errors", "read_shard", "resolve_shards", "shuffled", "source_record",
           "write_shards"]
