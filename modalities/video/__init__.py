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
from omniclip.modality import Modality
from omniclip.modality import collate_views as collate_view_rows  # this module's own name is the public one


def collate_views(samples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Training clips [T, 3, H, W] stack; evaluation views [V, T, 3, H, W] flatten, one row each."""
    return collate_view_rows(samples, sample_dims=4)


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
