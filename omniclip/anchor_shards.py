"""One tower's anchor cache on disk: immutable safetensors shards and a memory-mapped index.

A folder (one tower of one model and weights, see `omniclip.anchors.AnchorStore`) holds::

    shard-<writer>-<seq>.safetensors   features [n, E] float32 / float16 / bfloat16
                                       keys [n, 20] uint8: the sha1 digest of each row's content key
    index.safetensors                  every row of the shards it lists, sorted by key:
                                       hash [N] uint64 (the digest's first 8 bytes), digest [N, 20] uint8,
                                       shard [N] int32, row [N] int32; metadata lists the shards
                                       (name, rows, bytes) it covers

A lookup binary-searches ``hash`` (`np.searchsorted`), checks the full digest (two keys may share
a 64-bit prefix), then reads only the wanted rows of the wanted shards through memory maps
(MADV_RANDOM: no read-ahead; MADV_WILLNEED on the wanted rows: one parallel batch of reads).
Only the index's hash, shard and row columns are held in memory (16 bytes a key, 16 MiB for a
million); digests and features stay on disk, in the page cache shared by every process reading
the cache (ranks, evaluation, another run).

Why this is safe with many writers: shards are never modified, and each is written to a hidden
temporary name and renamed into place, so a reader sees a whole shard or none. The index is only
an accelerator: it is rewritten the same way (`merge_index`), and a shard that no index lists yet
(written by training since the last merge, or by a writer that died before merging) is found by
listing the folder and its keys are read into a small in-memory index. A stale index (a listed
shard is missing or changed size) is ignored with a warning. Two writers merging at once can only
make the index cover fewer shards than exist, never list a row wrongly.

Format 1 caches (``shard-<uuid>.safetensors`` with a float32 ``features`` matrix and the row keys
as hex strings in the ``keys`` metadata, before the index existed) are read as they are: such a
shard is one more shard, and the next merge indexes it.
"""

from __future__ import annotations

import json
import logging
import mmap
import os
import struct
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np
import torch
from safetensors.numpy import save_file as save_numpy
from safetensors.torch import save_file as save_torch

from omniclip.errors import OmniclipError

log = logging.getLogger(__name__)

INDEX = "index.safetensors"
SHARD_GLOB = "shard-*.safetensors"
FORMAT = "omniclip-anchors/2"
DIGEST_BYTES = 20  # sha1
_FEATURE_DTYPES = {"F32": (np.float32, None), "F16": (np.float16, None), "BF16": (np.uint16, torch.bfloat16)}
_STORE_DTYPES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}


class AnchorCacheError(OmniclipError, ValueError):
    """A file of the anchor cache is unreadable; the message names it and what to do."""


def digests(hex_keys: Sequence[str]) -> np.ndarray:
    """[n, 20] uint8 digests of hex content keys (`omniclip.anchors.content_key`)."""
    try:
        raw = b"".join(bytes.fromhex(k) for k in hex_keys)
    except ValueError as error:
        raise ValueError(f"anchor keys must be sha1 hex digests: {error}") from None
    out = np.frombuffer(raw, dtype=np.uint8).reshape(-1, DIGEST_BYTES) if raw else np.zeros((0, DIGEST_BYTES), np.uint8)
    if out.shape[0] != len(hex_keys):
        raise ValueError(f"anchor keys must be {DIGEST_BYTES}-byte sha1 hex digests")
    return out


def key_hash(digest: np.ndarray) -> np.ndarray:
    """The sort key of each digest: its first 8 bytes as one uint64 (big-endian, so the uint64
    order is the digests' byte order)."""
    return np.ascontiguousarray(digest[:, :8]).view(">u8").reshape(-1).astype(np.uint64)


def store_dtype_name(dtype: torch.dtype) -> str:
    """The name of a dtype the cache can store, or a clear error."""
    if dtype not in _STORE_DTYPES:
        raise ValueError(f"anchor features can be stored as {sorted(_STORE_DTYPES.values())}, not {dtype}")
    return _STORE_DTYPES[dtype]


def read_header(path: Path) -> tuple[dict, dict, int]:
    """(tensor entries, metadata, first data byte) of a safetensors file, reading only its header."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(8)
        length = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
        if length < 2 or 8 + length > size:
            raise AnchorCacheError(f"{path}: not a safetensors file (truncated or foreign); delete it, the anchors "
                                   "it held are recomputed")
        try:
            header = json.loads(handle.read(length))
        except ValueError:
            raise AnchorCacheError(f"{path}: unreadable safetensors header; delete it") from None
    metadata = header.pop("__metadata__", None) or {}
    return header, metadata, 8 + length


class _Mapped(NamedTuple):
    """One tensor of a safetensors file as a read-only array over a memory map."""

    array: np.ndarray
    mapped: mmap.mmap | None
    skip: int  # bytes of the map before the tensor (maps start on an allocation boundary)

    def prefetch(self, rows: np.ndarray) -> None:
        """Ask the kernel to read ``rows`` now, all at once (MADV_WILLNEED), instead of one
        blocking page fault per row when they are touched: on a cold cache this turns 256
        sequential disk reads into one parallel batch."""
        if self.mapped is None or not hasattr(mmap, "MADV_WILLNEED") or self.array.ndim != 2:
            return
        row_bytes = self.array.strides[0]
        page = mmap.PAGESIZE
        for row in np.unique(rows):
            begin = self.skip + int(row) * row_bytes
            start = begin - begin % page
            self.mapped.madvise(mmap.MADV_WILLNEED, start, begin + row_bytes - start)


def _map(path: Path, entry: dict, start: int, dtype: np.dtype, random_access: bool = True) -> _Mapped:
    """Map one tensor of a safetensors file read-only.

    ``random_access`` tells the kernel (MADV_RANDOM) that rows are read in no order: without it
    every page fault reads ahead a large neighbourhood, so 256 scattered rows would pull tens of
    MiB of a cold cache from disk instead of 256 pages.
    """
    begin, end = entry["data_offsets"]
    shape = tuple(entry["shape"])
    if 0 in shape:
        return _Mapped(np.zeros(shape, dtype), None, 0)
    offset = start + begin
    aligned = offset - offset % mmap.ALLOCATIONGRANULARITY
    with open(path, "rb") as handle:
        mapped = mmap.mmap(handle.fileno(), offset + (end - begin) - aligned, access=mmap.ACCESS_READ, offset=aligned)
    if random_access and hasattr(mmap, "MADV_RANDOM"):
        mapped.madvise(mmap.MADV_RANDOM)
    array = np.frombuffer(mapped, dtype=dtype, count=int(np.prod(shape)), offset=offset - aligned).reshape(shape)
    return _Mapped(array, mapped, offset - aligned)


@dataclass
class Shard:
    """One immutable shard: its rows are mapped on first read, never loaded whole."""

    path: Path
    rows: int
    size: int
    dim: int
    version: int  # 1: keys in metadata (before the index); 2: keys tensor
    _entries: dict = field(repr=False, default_factory=dict)
    _start: int = field(repr=False, default=0)
    _v1_keys: list | None = field(repr=False, default=None)
    _features: _Mapped | None = field(repr=False, default=None)

    @property
    def name(self) -> str:
        return self.path.name

    @classmethod
    def open(cls, path: Path) -> "Shard":
        entries, metadata, start = read_header(path)
        feat = entries.get("features")
        if feat is None or len(feat.get("shape", ())) != 2 or feat.get("dtype") not in _FEATURE_DTYPES:
            raise AnchorCacheError(f"{path}: expected a 2-d float32/float16/bfloat16 `features` tensor, found "
                                   f"{ {k: (v.get('dtype'), v.get('shape')) for k, v in entries.items()} }; delete it")
        rows, dim = feat["shape"]
        keys = entries.get("keys")
        v1_keys = None
        if keys is not None:
            if keys.get("dtype") != "U8" or keys.get("shape") != [rows, DIGEST_BYTES]:
                raise AnchorCacheError(f"{path}: `keys` must be uint8 [{rows}, {DIGEST_BYTES}], found "
                                       f"{keys.get('dtype')} {keys.get('shape')}; delete it")
            version = 2
        elif "keys" in metadata:  # format 1
            v1_keys = json.loads(metadata["keys"])
            if len(v1_keys) != rows:
                raise AnchorCacheError(f"{path}: {len(v1_keys)} keys for {rows} rows; delete it")
            version = 1
        else:
            raise AnchorCacheError(f"{path}: no `keys` tensor or metadata: not an anchor shard; delete it or move it "
                                   "out of the cache folder")
        return cls(path, rows, path.stat().st_size, dim, version, entries, start, v1_keys)

    def keys(self) -> np.ndarray:
        """[rows, 20] uint8 digests of the rows (read from disk, 20 bytes per row)."""
        if self.version == 1:
            return digests(self._v1_keys)
        return np.array(_map(self.path, self._entries["keys"], self._start, np.dtype(np.uint8), False).array)

    def read(self, rows: np.ndarray) -> torch.Tensor:
        """Float32 features of ``rows``: only those rows' pages are read."""
        if self._features is None:
            entry = self._entries["features"]
            self._features = _map(self.path, entry, self._start, np.dtype(_FEATURE_DTYPES[entry["dtype"]][0]))
        self._features.prefetch(rows)
        block = torch.from_numpy(np.ascontiguousarray(self._features.array[rows]))
        view = _FEATURE_DTYPES[self._entries["features"]["dtype"]][1]
        return (block.view(view) if view is not None else block).float()


class _Entries(NamedTuple):
    """Rows sorted by key: ``shard`` indexes the owner's shard list."""

    hash: np.ndarray
    digest: np.ndarray
    shard: np.ndarray
    row: np.ndarray

    @staticmethod
    def empty() -> "_Entries":
        return _Entries(np.zeros(0, np.uint64), np.zeros((0, DIGEST_BYTES), np.uint8), np.zeros(0, np.int32),
                        np.zeros(0, np.int32))

    @staticmethod
    def build(digest: np.ndarray, shard: np.ndarray, row: np.ndarray) -> "_Entries":
        """Sort by the full digest; a key held by several rows keeps its first (in input order)."""
        if len(digest) == 0:
            return _Entries.empty()
        words = np.ascontiguousarray(digest[:, :16]).view(">u8").astype(np.uint64)
        tail = np.ascontiguousarray(digest[:, 16:]).view(">u4").reshape(-1)
        order = np.lexsort((tail, words[:, 1], words[:, 0]))  # stable: first row wins among equals
        digest = digest[order]
        keep = np.ones(len(order), bool)
        keep[1:] = np.any(digest[1:] != digest[:-1], axis=1)
        order, digest = order[keep], digest[keep]
        return _Entries(key_hash(digest), digest, shard[order].astype(np.int32), row[order].astype(np.int32))

    def find(self, digest: np.ndarray, hashes: np.ndarray) -> np.ndarray:
        """Position of each query in these entries, -1 when absent."""
        pos = np.full(len(digest), -1, np.int64)
        if len(self.hash) == 0 or len(digest) == 0:
            return pos
        lo = np.searchsorted(self.hash, hashes, "left")
        hi = np.searchsorted(self.hash, hashes, "right")
        one = np.flatnonzero(hi - lo == 1)
        if len(one):
            match = np.all(self.digest[lo[one]] == digest[one], axis=1)
            pos[one[match]] = lo[one[match]]
        for i in np.flatnonzero(hi - lo > 1):  # keys sharing a 64-bit prefix: compare each
            hit = np.flatnonzero(np.all(self.digest[lo[i]:hi[i]] == digest[i], axis=1))
            if len(hit):
                pos[i] = lo[i] + hit[0]
        return pos


class ShardFolder:
    """The shards and index of one folder, opened lazily; `refresh` re-reads the folder.

    ``rows_read`` counts the rows read from each shard (by name): how tests and logs check that a
    lookup touched only what it needed.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.rows_read: Counter[str] = Counter()
        self._opened = False
        self._shards: list[Shard] = []
        self._index = _Entries.empty()
        self._index_map = np.zeros(0, np.int64)  # index shard number -> position in _shards
        self._delta = _Entries.empty()  # rows of shards the index does not list
        self._n_indexed = 0

    # ------------------------------------------------------------------ reading
    def refresh(self) -> None:
        """Re-scan the folder: shards and an index written by others since become visible."""
        self._opened = True
        self._shards, self._index, self._index_map, self._delta = [], _Entries.empty(), np.zeros(0, np.int64), \
            _Entries.empty()
        if not self.folder.is_dir():
            return
        leftovers = sorted(p.name for p in self.folder.glob(".*.tmp"))
        if leftovers:
            log.warning("%s: ignoring %d unfinished write(s) (%s): a writer was interrupted or is writing now; "
                        "delete them once no writer runs", self.folder, len(leftovers), ", ".join(leftovers[:3]))
        self._shards = [Shard.open(p) for p in sorted(self.folder.glob(SHARD_GLOB))]
        position = {s.name: i for i, s in enumerate(self._shards)}
        indexed = self._open_index(position)
        rest = [i for i in range(len(self._shards)) if i not in indexed]
        self._n_indexed = len(indexed)
        if rest and indexed:
            log.info("%s: %d shard(s) not in %s yet; their keys were read (`omniclip-anchors` rewrites the index)",
                     self.folder, len(rest), INDEX)
        self._delta = self._entries_of(rest)

    def _open_index(self, position: dict[str, int]) -> set[int]:
        path = self.folder / INDEX
        if not path.is_file():
            return set()
        entries, metadata, start = read_header(path)
        try:
            listed = json.loads(metadata["shards"])
            n = entries["hash"]["shape"][0]
            arrays = {name: _map(path, entries[name], start, np.dtype(dt)).array for name, dt in
                      (("hash", np.uint64), ("digest", np.uint8), ("shard", np.int32), ("row", np.int32))}
        except (KeyError, ValueError, IndexError) as error:
            log.warning("%s: unreadable (%s); ignored, the shards are read instead. Delete it or run "
                        "`omniclip-anchors` to rewrite it", path, error)
            return set()
        stale = [name for name, rows, size in listed
                 if name not in position or self._shards[position[name]].size != size
                 or self._shards[position[name]].rows != rows]
        if stale or arrays["digest"].shape != (n, DIGEST_BYTES):
            log.warning("%s lists shard(s) missing or changed on disk (%s); ignored, the shards are read instead. "
                        "Run `omniclip-anchors` (or AnchorStore.merge_index) to rewrite it", path, ", ".join(stale[:3]))
            return set()
        # hash, shard and row (16 bytes a key) are read into memory: a binary search over a cold
        # memory map would wait on a disk read per probe. The digests (20 bytes a key, one page
        # per looked-up key for the final check) stay mapped.
        self._index = _Entries(np.array(arrays["hash"]), arrays["digest"], np.array(arrays["shard"]),
                               np.array(arrays["row"]))
        self._index_map = np.array([position[name] for name, _, _ in listed], np.int64)
        return {position[name] for name, _, _ in listed}

    def _entries_of(self, shard_positions: list[int]) -> _Entries:
        if not shard_positions:
            return _Entries.empty()
        keys = [self._shards[i].keys() for i in shard_positions]
        shard = np.concatenate([np.full(len(k), i, np.int32) for i, k in zip(shard_positions, keys)])
        row = np.concatenate([np.arange(len(k), dtype=np.int32) for k in keys])
        return _Entries.build(np.concatenate(keys), shard, row)

    def _ensure_open(self) -> None:
        if not self._opened:
            self.refresh()

    def locate(self, digest: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(shard position, row) of each digest; shard position -1 where the cache lacks it."""
        self._ensure_open()
        hashes = key_hash(digest)
        shard = np.full(len(digest), -1, np.int64)
        row = np.zeros(len(digest), np.int64)
        pos = self._index.find(digest, hashes)
        hit = pos >= 0
        shard[hit] = self._index_map[self._index.shard[pos[hit]]]
        row[hit] = self._index.row[pos[hit]]
        rest = np.flatnonzero(~hit)
        pos = self._delta.find(digest[rest], hashes[rest])
        hit = pos >= 0
        shard[rest[hit]] = self._delta.shard[pos[hit]]
        row[rest[hit]] = self._delta.row[pos[hit]]
        return shard, row

    def read(self, digest: np.ndarray) -> tuple[np.ndarray, torch.Tensor | None]:
        """(found mask, float32 features of the found keys in query order)."""
        shard, row = self.locate(digest)
        found = shard >= 0
        if not found.any():
            return found, None
        where = np.flatnonzero(found)
        out: torch.Tensor | None = None
        for s in np.unique(shard[where]):
            mine = where[shard[where] == s]
            order = np.argsort(row[mine], kind="stable")  # ascending rows: sequential pages
            block = self._shards[s].read(row[mine][order])
            self.rows_read[self._shards[s].name] += len(mine)
            if out is None:
                out = torch.empty(len(where), block.shape[1])
            out[np.searchsorted(where, mine[order])] = block
        return found, out

    def __len__(self) -> int:
        """Number of distinct keys on disk."""
        self._ensure_open()
        if len(self._delta.hash) == 0:
            return len(self._index.hash)
        in_index = self._index.find(self._delta.digest, self._delta.hash) >= 0
        return len(self._index.hash) + int((~in_index).sum())

    @property
    def unindexed(self) -> int:
        """Shards no index lists yet (their keys are held in memory by every reader)."""
        self._ensure_open()
        return len(self._shards) - self._n_indexed

    @property
    def shards(self) -> list[Shard]:
        self._ensure_open()
        return list(self._shards)

    # ------------------------------------------------------------------ writing
    def write(self, digest: np.ndarray, features: torch.Tensor, writer: str) -> Path:
        """One new shard holding ``features`` [n, E] (already in the stored dtype), atomically."""
        self.folder.mkdir(parents=True, exist_ok=True)
        name = f"shard-{writer}-{uuid.uuid4().hex[:8]}.safetensors"
        tmp = self.folder / f".{name}.tmp"
        save_torch({"features": features.contiguous(), "keys": torch.from_numpy(np.array(digest, np.uint8))},
                   str(tmp), metadata={"format": FORMAT})
        os.replace(tmp, self.folder / name)
        if self._opened:  # visible to this process's lookups without re-scanning the folder
            shard = Shard.open(self.folder / name)
            self._shards.append(shard)
            i = len(self._shards) - 1
            both = [self._delta.digest, np.asarray(digest, np.uint8)]
            self._delta = _Entries.build(np.concatenate(both),
                                         np.concatenate([self._delta.shard, np.full(shard.rows, i, np.int32)]),
                                         np.concatenate([self._delta.row, np.arange(shard.rows, dtype=np.int32)]))
        return self.folder / name

    def merge_index(self) -> Path | None:
        """Rewrite the index to list every shard now in the folder (each key once), atomically."""
        self.refresh()
        if not self._shards:
            return None
        both = _Entries.build(
            np.concatenate([self._index.digest, self._delta.digest]),
            np.concatenate([self._index_map[self._index.shard].astype(np.int32), self._delta.shard]),
            np.concatenate([self._index.row, self._delta.row]))
        listed = [[s.name, s.rows, s.size] for s in self._shards]
        path = self.folder / INDEX
        tmp = self.folder / f".{INDEX}.{uuid.uuid4().hex[:8]}.tmp"
        save_numpy({"hash": both.hash, "digest": np.ascontiguousarray(both.digest), "shard": both.shard,
                    "row": both.row}, str(tmp), metadata={"format": FORMAT, "shards": json.dumps(listed)})
        os.replace(tmp, path)
        self.refresh()
        return path
