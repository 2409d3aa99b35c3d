"""Frozen anchor features (CLIP text and image embeddings), computed once and cached on disk.

The text and image towers never train, so the embedding of a caption or a paired image is a
pure function of (model, weights, content). `AnchorStore` keys features by exactly that:

    <root>/<tower>/<model name>-<weights fingerprint>/shard-*.safetensors

Each shard holds a ``features`` matrix and, in its metadata, the content keys of its rows
(sha1 of the caption text; the dataset's ``image_key`` for images). A training step whose
anchors are all cached never runs a tower. New features are appended as new shards, written
atomically, so several ranks or runs can share one cache directory.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from omniclip.backbone import ClipBackbone

TOWERS = ("text", "image")


def content_key(value: str) -> str:
    return hashlib.sha1(value.encode("utf-8")).hexdigest()


class AnchorStore:
    """Cache of normalised anchor features for one backbone.

    ``root=None`` keeps the cache in memory only; ``enabled=False`` turns caching off, so every
    lookup runs the towers (the baseline the benchmark compares against).
    """

    def __init__(
        self, backbone: ClipBackbone, root: str | Path | None = None, batch_size: int = 256, enabled: bool = True
    ) -> None:
        self.backbone = backbone
        self.root = Path(root) if root is not None else None
        self.batch_size = batch_size
        self.enabled = enabled
        self._features: dict[str, dict[str, torch.Tensor]] = {t: {} for t in TOWERS}
        self._pending: dict[str, dict[str, torch.Tensor]] = {t: {} for t in TOWERS}
        #: Number of times each tower actually ran (tests and logs read it).
        self.tower_calls = {t: 0 for t in TOWERS}
        self.hits = {t: 0 for t in TOWERS}
        self.misses = {t: 0 for t in TOWERS}
        self._loaded = {t: False for t in TOWERS}

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

    def encode_text_fn(self) -> Callable[[list[str]], torch.Tensor]:
        """A cached ``encode_text`` for zero-shot classifier building."""
        return self.text

    def flush(self) -> Path | None:
        """Write features computed since the last flush as new shards; returns the last shard."""
        written = None
        for tower in TOWERS:
            pending = self._pending[tower]
            if not pending or self.root is None:
                pending.clear()
                continue
            folder = self._folder(tower)
            folder.mkdir(parents=True, exist_ok=True)
            keys = list(pending)
            features = torch.stack([pending[k] for k in keys]).contiguous()
            name = f"shard-{uuid.uuid4().hex[:12]}.safetensors"
            tmp = folder / f".{name}.tmp"
            save_file({"features": features}, str(tmp), metadata={"keys": json.dumps(keys)})
            os.replace(tmp, folder / name)
            pending.clear()
            written = folder / name
        return written

    def __len__(self) -> int:
        for tower in TOWERS:
            self._load(tower)
        return sum(len(v) for v in self._features.values())

    # ------------------------------------------------------------------ internals
    def _folder(self, tower: str) -> Path:
        assert self.root is not None
        return self.root / tower / f"{_safe(self.backbone.name)}-{self.backbone.fingerprint(tower)}"

    def _load(self, tower: str) -> None:
        if self._loaded[tower]:
            return
        self._loaded[tower] = True
        if self.root is None or not self._folder(tower).is_dir():
            return
        for shard in sorted(self._folder(tower).glob("shard-*.safetensors")):
            with safe_open(str(shard), framework="pt") as handle:
                keys = json.loads(handle.metadata()["keys"])
                features = handle.get_tensor("features")
            self._features[tower].update(zip(keys, features))

    def _lookup(self, tower: str, keys: list[str], compute: Callable[[list[int]], torch.Tensor]) -> torch.Tensor:
        self._load(tower)
        table = self._features[tower] if self.enabled else {}
        first_miss: dict[str, int] = {}
        for i, key in enumerate(keys):
            if key not in table:
                first_miss.setdefault(key, i)
        todo = list(first_miss.values())
        self.misses[tower] += len(todo)
        self.hits[tower] += sum(key in table for key in keys)
        for start in range(0, len(todo), self.batch_size):
            chunk = todo[start : start + self.batch_size]
            features = compute(chunk).float().cpu()
            self.tower_calls[tower] += 1
            for i, feature in zip(chunk, features):
                table[keys[i]] = feature
                if self.enabled:
                    self._pending[tower][keys[i]] = feature
        return torch.stack([table[k] for k in keys])


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def precompute(cfg: Any) -> dict[str, int]:
    """Fill the anchor cache for a training recipe: captions and paired images of ``data.train``
    and the class prompts of every ``eval`` task. Returns how many features were computed."""
    from omegaconf import OmegaConf
    from torch.utils.data import DataLoader

    from omniclip.data import SafeDataset, collate_skipping
    from omniclip.distributed import cleanup, init_distributed
    from omniclip.modality import get_modality
    from omniclip.recipe import build_backbone, build_dataset
    from omniclip.zeroshot import task_classifier

    env = init_distributed(cfg.get("device"))
    backbone = build_backbone(cfg.backbone, env.device)
    modality = get_modality(cfg.modality.name)
    store = AnchorStore(backbone, cfg.anchors.cache_dir, int(cfg.anchors.get("batch_size", 256)))
    dataset = build_dataset(modality, OmegaConf.to_container(cfg.data.train, resolve=True), "train", "data.train",
                            image_transform=backbone.preprocess)
    loader = DataLoader(SafeDataset(dataset, cfg.trainer.bad_samples), batch_size=store.batch_size,
                        num_workers=int(cfg.trainer.num_workers), collate_fn=collate_skipping(modality.collate))
    for batch in loader:
        if batch.get("texts") is not None:
            store.text(batch["texts"])
        if batch.get("image_keys") is not None:
            store.image(batch["image_keys"], batch.get("images"))
        store.flush()
    for name, task in (OmegaConf.to_container(cfg.eval, resolve=True).get("tasks") or {}).items():
        if task.get("type", "classification") != "classification":
            continue
        eval_set = build_dataset(modality, task["dataset"], task["dataset"].get("split", "test"),
                                 f"eval.tasks.{name}.dataset")
        task_classifier(modality, eval_set, task, store, f"eval.tasks.{name}")
        store.flush()
    counts = {tower: store.misses[tower] for tower in TOWERS}
    print(f"anchors computed: {counts} (cache hits: {store.hits}); cache: {cfg.anchors.cache_dir}")
    cleanup(synchronize=True)  # under torchrun: every rank done, then an orderly teardown (see `cleanup`)
    return counts


def main() -> None:
    """``omniclip-anchors <same overrides as omniclip-train>``: precompute the anchor cache."""
    from omniclip.cli import hydra_entry

    hydra_entry("train", precompute)()
