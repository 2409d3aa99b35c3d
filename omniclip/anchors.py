"""Frozen anchor features (CLIP text and image embeddings), computed once and cached on disk.

The text and image towers never train, so the embedding of a caption or a paired image is a
pure function of (model, weights, content). `AnchorStore` keys features by exactly that:

    <root>/<tower>/<model name>-<weights fingerprint>[-<dtype>]/shard-*.safetensors, index.safetensors

(the dtype suffix only when features are stored in less than float32). Rows are keyed by the
sha1 of the caption text or of the dataset's ``image_key``. The folder's layout, its index and
why many writers cannot corrupt it are described in `omniclip.anchor_shards`: lookups read only
the rows they need through memory maps, so a cache of millions of captions costs a training
process a few pages per key, not the whole cache in RAM. A training step whose anchors are all
cached never runs a tower; misses are computed, kept in memory and appended as new shards by
`flush`. ``omniclip-anchors`` fills the cache, split across ranks under torchrun.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from omniclip.anchor_shards import ShardFolder, digests, store_dtype_name
from omniclip.backbone import ClipBackbone

log = logging.getLogger(__name__)

TOWERS = ("text", "image")
DEFAULT_SHARD_SIZE = 65536
MERGE_AFTER = 32  # unindexed shards that make `flush` rewrite the index


def content_key(value: str) -> str:
    """The cache key of a caption or image key: its sha1, the same in every process."""
    return hashlib.sha1(value.encode("utf-8")).hexdigest()


class AnchorStore:
    """Cache of normalised anchor features for one backbone.

    ``root=None`` keeps the cache in memory only; ``enabled=False`` turns caching off, so every
    lookup runs the towers (the baseline the benchmark compares against). ``dtype`` is how
    features are stored on disk (float32 keeps them exact; float16 halves the disk and page
    cache); lookups always return float32. ``shard_size`` is the most rows one shard holds.
    """

    def __init__(
        self, backbone: ClipBackbone, root: str | Path | None = None, batch_size: int = 256, enabled: bool = True,
        dtype: torch.dtype | str = torch.float32, shard_size: int = DEFAULT_SHARD_SIZE,
    ) -> None:
        self.backbone = backbone
        self.root = Path(root) if root is not None else None
        self.batch_size = batch_size
        self.enabled = enabled
        self.dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
        store_dtype_name(self.dtype)
        if shard_size < 1:
            raise ValueError(f"anchors.shard_size must be >= 1, got {shard_size}")
        self.shard_size = shard_size
        #: Features this process computed and has not flushed (a store without root: all of them),
        #: served from memory; once flushed they are read back from the shards like any other.
        self._computed: dict[str, dict[str, torch.Tensor]] = {t: {} for t in TOWERS}
        self._pending: dict[str, dict[str, torch.Tensor]] = {t: {} for t in TOWERS}
        #: Number of times each tower actually ran (tests and logs read it).
        self.tower_calls = {t: 0 for t in TOWERS}
        self.hits = {t: 0 for t in TOWERS}
        self.misses = {t: 0 for t in TOWERS}
        self._disk: dict[str, ShardFolder] = {}

    @classmethod
    def from_config(cls, backbone: ClipBackbone, cfg: Any) -> "AnchorStore":
        """The store a recipe's ``anchors`` group describes (cache_dir, batch_size, shard_size, dtype)."""
        return cls(backbone, cfg.get("cache_dir"), int(cfg.get("batch_size", 256)),
                   dtype=str(cfg.get("dtype", "float32")), shard_size=int(cfg.get("shard_size", DEFAULT_SHARD_SIZE)))

    # ------------------------------------------------------------------ public
    def text(self, texts: Sequence[str]) -> torch.Tensor:
        """Normalised text-tower features [len(texts), E], computing only the misses."""
        keys = [content_key(t) for t in texts]
        return self._lookup("text", keys, lambda idx: self.backbone.encode_text([texts[i] for i in idx]))

    def image(self, keys: Sequence[str], images: torch.Tensor | None) -> torch.Tensor:
        """Normalised image-tower features for ``keys``; ``images`` is only read for misses."""
        hashed = [content_key(k) for k in keys]

        def compute(idx: list[int]) -> torch.Tensor:
            if images is None:
                missing = [keys[i] for i in idx[:3]]
                raise KeyError(f"image anchors {missing} are not cached and the batch carries no images")
            return self.backbone.encode_image(images[idx])

        return self._lookup("image", hashed, compute)

    def cached(self, tower: str, values: Sequence[str]) -> np.ndarray:
        """Whether each caption (``tower="text"``) or image key is cached, without reading features."""
        keys = [content_key(v) for v in values]
        known = np.array([k in self._computed[tower] for k in keys], bool)
        disk = self.shards(tower)
        if disk is not None and not known.all():
            rest = np.flatnonzero(~known)
            known[rest] = disk.locate(digests([keys[i] for i in rest]))[0] >= 0
        return known

    def flush(self, full_only: bool = False, merge: bool = True) -> Path | None:
        """Write features computed since the last flush as new shards of at most ``shard_size``
        rows; returns the last shard written. ``full_only`` writes only full shards and keeps the
        rest pending (a long precompute persists its progress without writing tiny shards).
        With ``merge``, a folder holding `MERGE_AFTER` shards that no index lists (training and
        evaluation runs each add one) gets its index rewritten, so readers stop re-reading their keys."""
        written = None
        for tower in TOWERS:
            pending = self._pending[tower]
            if not pending or self.root is None:
                pending.clear()
                continue
            keys = list(pending)
            stop = len(keys) - len(keys) % self.shard_size if full_only else len(keys)
            for start in range(0, stop, self.shard_size):
                chunk = keys[start : min(start + self.shard_size, stop)]
                features = torch.stack([pending.pop(k) for k in chunk]).to(self.dtype)
                for key in chunk:  # memory stays bounded by what is unflushed: a long precompute
                    del self._computed[tower][key]
                written = self.shards(tower).write(digests(chunk), features, _writer_name())
            if merge and not full_only and self.shards(tower).unindexed >= MERGE_AFTER:
                self.shards(tower).merge_index()
        return written

    def merge_index(self) -> None:
        """Rewrite each tower folder's index to cover every shard in it (see `omniclip.anchor_shards`)."""
        for tower in TOWERS:
            disk = self.shards(tower)
            if disk is not None:
                disk.merge_index()

    def refresh(self) -> None:
        """See shards and indexes other processes wrote since this store first read the cache."""
        for disk in self._disk.values():
            disk.refresh()

    def shards(self, tower: str) -> ShardFolder | None:
        """The on-disk cache of ``tower`` (None for an in-memory or disabled store)."""
        if self.root is None or not self.enabled:
            return None
        if tower not in self._disk:
            self._disk[tower] = ShardFolder(self._folder(tower))
        return self._disk[tower]

    def __len__(self) -> int:
        """Distinct cached keys: on disk plus not yet flushed (in memory for a store without root)."""
        total = 0
        for tower in TOWERS:
            disk = self.shards(tower)
            total += len(self._computed[tower]) if disk is None else len(disk) + len(self._pending[tower])
        return total

    # ------------------------------------------------------------------ internals
    def _folder(self, tower: str) -> Path:
        assert self.root is not None
        suffix = "" if self.dtype == torch.float32 else f"-{store_dtype_name(self.dtype)}"
        return self.root / tower / f"{_safe(self.backbone.name)}-{self.backbone.fingerprint(tower)}{suffix}"

    def _lookup(self, tower: str, keys: list[str], compute: Callable[[list[int]], torch.Tensor]) -> torch.Tensor:
        table = self._computed[tower] if self.enabled else {}
        found: dict[str, torch.Tensor] = {}
        first: dict[str, int] = {}
        for i, key in enumerate(keys):
            if key in table:
                found[key] = table[key]
            else:
                first.setdefault(key, i)
        disk = self.shards(tower)
        if disk is not None and first:
            wanted = list(first)
            mask, features = disk.read(digests(wanted))
            for key, feature in zip((k for k, m in zip(wanted, mask) if m), features if features is not None else ()):
                found[key] = feature
                del first[key]
        todo = list(first.values())
        self.misses[tower] += len(todo)
        self.hits[tower] += sum(key in found for key in keys)
        for start in range(0, len(todo), self.batch_size):
            chunk = todo[start : start + self.batch_size]
            features = compute(chunk).float().cpu()
            self.tower_calls[tower] += 1
            for i, feature in zip(chunk, features):
                found[keys[i]] = feature
                if self.enabled:
                    table[keys[i]] = feature
                    self._pending[tower][keys[i]] = feature
        return torch.stack([found[k] for k in keys])


def _writer_name() -> str:
    """Shard name part naming the writer: its rank and process (names never collide anyway)."""
    from omniclip.distributed import get_rank

    return f"r{get_rank()}-p{os.getpid()}"


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def precompute(cfg: Any) -> dict[str, int]:
    """Fill the anchor cache for a training recipe: captions and paired images of ``data.train``
    and the class prompts of every ``eval`` task. Returns how many features were computed (over
    all ranks).

    Under torchrun the work is split so that every missing key is embedded exactly once: each
    rank surveys its slice of the dataset (items ``rank::world``), the ranks agree that a key
    belongs to the rank that saw it at the lowest item index, and each rank embeds its own keys
    into its own shards (captions from memory; images by reloading the items that carry them,
    which `SeededDataset` rebuilds exactly). After a barrier rank 0 indexes every rank's shards,
    then embeds the eval class prompts (few) itself.
    """
    from omniclip.distributed import cleanup, init_distributed

    env = init_distributed(cfg.get("device"))
    try:
        counts = _precompute(cfg, env)
    except BaseException:
        cleanup()  # no barrier: the other ranks may be inside another collective
        raise
    cleanup(synchronize=True)  # under torchrun: every rank done, then an orderly teardown (see `cleanup`)
    return counts


def _precompute(cfg: Any, env: Any) -> dict[str, int]:
    from omegaconf import OmegaConf

    from omniclip.data import ResumableSampler, build_loader
    from omniclip.distributed import all_gather_object, barrier
    from omniclip.modality import get_modality
    from omniclip.recipe import build_backbone, build_dataset, train_dataset
    from omniclip.shards import ShardDataset, ShardLoader
    from omniclip.zeroshot import task_classifier

    backbone = build_backbone(cfg.backbone, env.device)
    modality = get_modality(cfg.modality.name)
    store = AnchorStore.from_config(backbone, cfg.anchors)
    dataset = train_dataset(cfg, modality, backbone.preprocess)
    workers = int(cfg.trainer.num_workers)
    # The training run's seed: samples draw their caption and view from (seed, epoch, index), so
    # epoch 0 of training then finds every anchor it needs.
    seed = int(cfg.trainer.seed)
    if not modality.trains_on_anchors:
        if env.is_main:
            print(f"{modality.name} models train against class text through their own text side: no caption or "
                  "image anchors of data.train to cache, only the eval tasks' class prompts")
    elif isinstance(dataset, ShardDataset):
        # Each rank streams its own shards once (disjoint samples); a caption that samples on two
        # ranks share is embedded by both and indexed once.
        for batch in ShardLoader(dataset, modality.collate, store.batch_size, seed=seed, rank=env.rank,
                                 world_size=env.world_size, num_workers=workers, policy=cfg.trainer.bad_samples):
            _embed_batch(store, batch, None)
    else:
        sampler = ResumableSampler(len(dataset), shuffle=False, rank=env.rank, world_size=env.world_size,
                                   drop_last=False, batch_size=store.batch_size)
        loader = build_loader(dataset, modality.collate, store.batch_size, sampler, workers,
                              seed=seed, policy=cfg.trainer.bad_samples, persistent_workers=False)
        if env.world_size == 1:  # every key is this process's: embed while reading
            for batch in loader:
                _embed_batch(store, batch, None)
        else:
            seen = _survey(store, loader)
            owned = {tower: _owned(seen[tower], env.rank) for tower in TOWERS}
            texts = [seen["text"][key][1] for key in owned["text"]]
            for start in range(0, len(texts), store.batch_size):
                store.text(texts[start : start + store.batch_size])
                store.flush(full_only=True)
            _embed_images(store, loader, sampler.epoch, owned["image"],
                          {k: seen["image"][k] for k in owned["image"]})
    store.flush(merge=False)  # rank 0 indexes every rank's shards below
    barrier()
    if env.is_main:
        store.merge_index()  # every rank's shards, each key once
        for name, task in (OmegaConf.to_container(cfg.eval, resolve=True).get("tasks") or {}).items():
            if task.get("type", "classification") != "classification":
                continue
            eval_set = build_dataset(modality, task["dataset"], task["dataset"].get("split", "test"),
                                     f"eval.tasks.{name}.dataset")
            task_classifier(modality, eval_set, task, store, f"eval.tasks.{name}")
            store.flush(merge=False)
        store.merge_index()
    per_rank = all_gather_object((store.misses, store.hits))
    counts = {tower: sum(m[tower] for m, _ in per_rank) for tower in TOWERS}
    hits = {tower: sum(h[tower] for _, h in per_rank) for tower in TOWERS}
    if env.is_main:
        print(f"anchors computed: {counts} (cache hits: {hits}); cache: {cfg.anchors.cache_dir}"
              + (f"; per rank: {[m for m, _ in per_rank]}" if env.world_size > 1 else ""))
    return counts


def _embed_batch(store: AnchorStore, batch: dict[str, Any], wanted: set[str] | None) -> None:
    """Look up (computing misses) a batch's captions and images; with ``wanted`` only the images
    whose content key is in it. Full shards are written as they fill."""
    if batch.get("texts") is not None and wanted is None:
        store.text(batch["texts"])
    if batch.get("image_keys") is not None:
        pick = [i for i, k in enumerate(batch["image_keys"]) if wanted is None or content_key(k) in wanted]
        images = batch.get("images")
        if pick:
            store.image([batch["image_keys"][i] for i in pick], None if images is None else images[pick])
    store.flush(full_only=True)


def _survey(store: AnchorStore, loader: Any) -> dict[str, dict[str, tuple[int, str]]]:
    """{tower: {content key: (lowest item index, caption or image key)}} of this rank's slice,
    keys already cached left out."""
    seen: dict[str, dict[str, tuple[int, str]]] = {t: {} for t in TOWERS}
    for batch in loader:
        index = [key[1] for key in batch.get("sample_keys", ())]
        for tower, field in (("text", "texts"), ("image", "image_keys")):
            for i, value in zip(index, batch.get(field) or ()):
                key = content_key(value)
                if key not in seen[tower] or i < seen[tower][key][0]:
                    seen[tower][key] = (i, value)
    for tower in TOWERS:
        keys = list(seen[tower])
        cached = store.cached(tower, [seen[tower][k][1] for k in keys])
        store.hits[tower] += int(cached.sum())
        for key in np.asarray(keys, dtype=object)[cached]:
            del seen[tower][key]
    return seen


def _owned(seen: dict[str, tuple[int, str]], rank: int) -> list[str]:
    """The keys of ``seen`` this rank embeds: those no rank saw at a lower item index (ties go to
    the lower rank). Every rank takes part (a collective); the result is sorted by item index."""
    from omniclip.distributed import all_gather_object

    keys = list(seen)
    mine = (digests(keys), np.array([seen[k][0] for k in keys], np.int64))
    everyone = all_gather_object(mine)
    digest = np.concatenate([d for d, _ in everyone])
    index = np.concatenate([i for _, i in everyone])
    ranks = np.concatenate([np.full(len(i), r, np.int64) for r, (_, i) in enumerate(everyone)])
    order = np.lexsort((ranks, index, *digest.T[::-1]))  # by digest, then lowest index, then lowest rank
    first = np.ones(len(order), bool)
    first[1:] = np.any(digest[order][1:] != digest[order][:-1], axis=1)
    winners = order[first]
    start = sum(len(i) for _, i in everyone[:rank])
    won = winners[(ranks[winners] == rank)] - start  # positions in this rank's `keys`
    won = won[np.argsort(index[won + start], kind="stable")]
    return [keys[i] for i in won]


def _embed_images(store: AnchorStore, loader: Any, epoch: int, owned: list[str],
                  seen: dict[str, tuple[int, str]]) -> None:
    """Embed this rank's image keys by reloading, in index order, the items that carry them."""
    from torch.utils.data import DataLoader

    if not owned:
        return
    items = sorted({seen[k][0] for k in owned})
    again = DataLoader(loader.dataset, batch_size=store.batch_size, sampler=[(epoch, i) for i in items],
                       num_workers=loader.num_workers, collate_fn=loader.collate_fn)
    wanted = set(owned)
    for batch in again:
        _embed_batch(store, batch, wanted)
    store.flush(full_only=True)
    values = [seen[k][1] for k in owned]
    missing = [v for v, known in zip(values, store.cached("image", values)) if not known]
    if missing:
        raise RuntimeError(f"{len(missing)} image anchors (first: {missing[0]!r}) were not produced when "
                           "their items were reloaded: the dataset gave another image for the same item. Run "
                           "omniclip-anchors in one process, or make the dataset's image choice depend only on "
                           "the item (it is seeded by item index)")


def main() -> None:
    """``omniclip-anchors <same overrides as omniclip-train>``: precompute the anchor cache."""
    from omniclip.cli import hydra_entry

    hydra_entry("train", precompute)()
