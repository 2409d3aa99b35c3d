"""A loader that keeps a GPU fed with clips.

Decoding runs in DataLoader workers (one FFmpeg thread each), decoders are opened inside
``__getitem__`` and never shared across forked workers, workers persist across epochs, each
prefetches ``prefetch_factor`` batches, batches are pinned for asynchronous copies, and clips
can stay uint8 until the GPU (``normalize: none`` in the dataset, then `GpuBatch`): a uint8
clip is a quarter of the float one through the pipes, the pinning and the copy.

`build_video_loader` is `omniclip.data.build_loader` (the same resumable sampler, per-sample
seeding and bad-sample policy, composed from the same pieces) plus ``prefetch_factor``, which
the core loader does not take yet.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch.utils.data import DataLoader, Dataset

from omniclip.data import ResumableSampler, SafeDataset, SeededDataset, SkipPolicy, collate_skipping
from omniclip.errors import ConfigError
from omniclip.modalities.video.transforms import Normalize


def build_video_loader(
    dataset: Dataset,
    collate_fn: Callable[[list[Any]], dict[str, Any]],
    batch_size: int,
    sampler: ResumableSampler,
    num_workers: int,
    seed: int,
    *,
    prefetch_factor: int | None = 4,
    pin_memory: bool | None = None,
    policy: SkipPolicy = "stop",
    persistent_workers: bool | None = None,
) -> DataLoader:
    """DataLoader over ``SeededDataset(SafeDataset(dataset, policy), seed)`` driven by ``sampler``.

    ``pin_memory=None`` pins when CUDA is available; ``persistent_workers=None`` keeps workers
    when there are any; ``prefetch_factor`` applies with workers only.
    """
    if batch_size != sampler.batch_size:
        raise ConfigError("batch_size", f"{batch_size} differs from the sampler's batch_size {sampler.batch_size}")
    if prefetch_factor is not None and prefetch_factor < 1:
        raise ConfigError("prefetch_factor", f"must be >= 1, got {prefetch_factor}")
    workers = num_workers > 0
    return DataLoader(
        SeededDataset(SafeDataset(dataset, policy), seed),
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate_skipping(collate_fn),
        pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory,
        drop_last=sampler.drop_last,
        persistent_workers=workers if persistent_workers is None else persistent_workers and workers,
        prefetch_factor=prefetch_factor if workers else None,
    )


class GpuBatch:
    """Move a batch to ``device`` (non-blocking from pinned memory) and normalise uint8 ``inputs``
    there; float inputs (already normalised in the workers) are only moved."""

    def __init__(self, device: torch.device | str, normalize: str = "clip", dtype: torch.dtype = torch.float32):
        self.device = torch.device(device)
        self.normalize = Normalize(normalize, dtype).to(self.device)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        out = {k: v.to(self.device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        if isinstance(out.get("inputs"), torch.Tensor) and out["inputs"].dtype == torch.uint8:
            out["inputs"] = self.normalize(out["inputs"])
        return out
