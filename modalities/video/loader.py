"""A loader that keeps a GPU fed with clips.

Decoding runs in DataLoader workers (one FFmpeg thread each), decoders are opened inside
``__getitem__`` and never shared across forked workers, workers persist across epochs, each
prefetches ``prefetch_factor`` batches, batches are pinned for asynchronous copies, and clips
can stay uint8 until the GPU (``normalize: none`` in the dataset, then `GpuBatch`): a uint8
clip is a quarter of the float one through the pipes, the pinning and the copy.

`build_video_loader` is `omniclip.data.build_loader` (the trainer's loader: resumable sampler,
per-sample seeding, bad-sample policy) with defaults suited to clips: a deeper prefetch and
pinned memory whenever CUDA is there.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch.utils.data import DataLoader, Dataset

from omniclip.data import ResumableSampler, SkipPolicy, build_loader
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
    """`omniclip.data.build_loader` with ``pin_memory=None`` meaning "when CUDA is available"."""
    if prefetch_factor is not None and prefetch_factor < 1:
        raise ConfigError("prefetch_factor", f"must be >= 1, got {prefetch_factor}")
    return build_loader(dataset, collate_fn, batch_size, sampler, num_workers, seed,
                        pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory,
                        policy=policy, persistent_workers=persistent_workers, prefetch_factor=prefetch_factor)


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
