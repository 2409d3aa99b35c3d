"""The video modality: datasets of clips ``[T, 3, H, W]`` for frame-based CLIP video models.

Registers the modality ``video``: datasets (`omniclip.modalities.video.datasets`: Kinetics,
UCF101, HMDB51, Something-Something v2, folder-per-class and ``path label`` lists), a collate
that flattens evaluation views (``group_ids`` tell evaluation which to average), prompt
templates and shipped class names. Batches hold ``inputs`` ``[B, T, 3, H, W]`` (float,
normalised; or uint8 with ``normalize: none``, normalised on the GPU by
`transforms.Normalize`) and ``labels`` ``[B]``.

A video model reads frames through CLIP's image tower, so the modality has no tokenizer:
``build_tokenizer`` raises until the video models define what consumes the clips. Decoding is in
`io` (PyAV / torchcodec / decord / frame folders), clip sampling in `sampling`, transforms in
`transforms`, batch mixup / cutmix in `mixing`, a GPU-feeding loader in `loader`.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import torch
from torch.utils.data import Dataset

from omniclip import registry
from omniclip.modalities.video.datasets import CLASS_NAME_FILES, build_dataset
from omniclip.modalities.video.io import VIDEO_SUFFIXES
from omniclip.modalities.video.templates import TEMPLATES
from omniclip.modality import Modality, default_collate


def collate_views(samples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """`default_collate` for training clips [T, 3, H, W]; evaluation samples of V views
    [V, T, 3, H, W] are flattened to one row per view, every other field repeated V times."""
    if samples[0]["inputs"].dim() != 5:
        return default_collate(samples)
    counts = torch.tensor([s["inputs"].shape[0] for s in samples])
    batch = default_collate([{k: v for k, v in s.items() if k != "inputs"} for s in samples])
    for key, value in batch.items():
        if isinstance(value, torch.Tensor):
            batch[key] = value.repeat_interleave(counts, dim=0)
        else:
            batch[key] = [v for v, n in zip(value, counts.tolist()) for _ in range(n)]
    batch["inputs"] = torch.cat([s["inputs"] for s in samples])
    return batch


class VideoModality(Modality):
    name = "video"
    templates = {name: list(t) for name, t in TEMPLATES.items()}
    class_name_files = dict(CLASS_NAME_FILES)
    file_suffixes = VIDEO_SUFFIXES

    def build_dataset(
        self, cfg: Mapping[str, Any], split: str, image_transform: Callable[[Any], torch.Tensor] | None = None
    ) -> Dataset:
        return build_dataset(cfg, split, image_transform)

    def collate(self, samples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        return collate_views(samples)


registry.register("modality", "video", VideoModality)
