"""Mixup / cutmix on training batches of clips, with label smoothing (ViFi-CLIP / X-CLIP / ILA).

These belong with the batch, not with the dataset: a batch of clips ``[B, T, 3, H, W]`` is
mixed with a permutation of itself, either by a convex combination (mixup, weight from
Beta(0.8, 0.8)) or by pasting one box, the same for every frame, from the partner (cutmix,
Beta(1, 1); the weight is then the area kept). Each batch uses one or the other (``switch_prob``
picks cutmix). Targets become ``weight * smooth(y) + (1 - weight) * smooth(y[perm])`` with the
smoothed one-hot ``1 - s + s / C`` on the class and ``s / C`` elsewhere (s = 0.1).

`MixupCutmix` is a batch dict -> batch dict callable; `mixing_collate` wraps a collate with it,
for loaders until the trainer grows a batch-transform hook. Its randomness comes from torch's
global generator unless a ``generator`` is given: in a DataLoader worker that generator was
just seeded by `omniclip.data.SeededDataset` for the batch's last sample, so the mixing of a
batch is reproducible and independent of the number of workers.

Mixing uint8 clips returns float clips on the same 0-255 scale: normalisation is affine per
channel, so mixing before or after it gives the same batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import torch

from omniclip.errors import ConfigError


@dataclass(frozen=True)
class MixOptions:
    num_classes: int
    mixup_alpha: float = 0.8
    cutmix_alpha: float = 1.0
    switch_prob: float = 0.5
    smoothing: float = 0.1

    def __post_init__(self) -> None:
        if self.num_classes < 2:
            raise ConfigError("num_classes", f"must be >= 2, got {self.num_classes}")
        if self.mixup_alpha < 0 or self.cutmix_alpha < 0:
            raise ConfigError("mixup_alpha", "mixup_alpha and cutmix_alpha must be >= 0 (0 switches one off)")
        if not 0.0 <= self.switch_prob <= 1.0:
            raise ConfigError("switch_prob", f"is a probability, got {self.switch_prob}")
        if not 0.0 <= self.smoothing < 1.0:
            raise ConfigError("smoothing", f"must be in [0, 1), got {self.smoothing}")


def smooth_one_hot(labels: torch.Tensor, num_classes: int, smoothing: float) -> torch.Tensor:
    off = smoothing / num_classes
    targets = torch.full((labels.shape[0], num_classes), off, device=labels.device)
    return targets.scatter_(1, labels.long().view(-1, 1), 1.0 - smoothing + off)


def cutmix_box(height: int, width: int, weight: float, generator: torch.Generator | None = None
               ) -> tuple[int, int, int, int]:
    """A box (top, bottom, left, right) of about ``1 - weight`` of the area, its centre uniform
    over the picture and clipped at the borders."""
    ratio = (1.0 - weight) ** 0.5
    cut_h, cut_w = int(height * ratio), int(width * ratio)
    cy = int(torch.randint(height, (), generator=generator))
    cx = int(torch.randint(width, (), generator=generator))
    top, bottom = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, height)
    left, right = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, width)
    return top, bottom, left, right


def mix_batch(clips: torch.Tensor, labels: torch.Tensor, opts: MixOptions,
              generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """Mixed clips ``[B, ..., H, W]`` (float), soft targets ``[B, C]`` and what was done
    (``kind``, ``weight``, ``perm`` and, for cutmix, ``box``)."""
    if labels.dim() != 1 or labels.shape[0] != clips.shape[0]:
        raise ValueError(f"labels must be [B] class indices for {clips.shape[0]} clips, got {tuple(labels.shape)}")
    targets = smooth_one_hot(labels, opts.num_classes, opts.smoothing)
    clips = clips.float()
    if opts.mixup_alpha == 0 and opts.cutmix_alpha == 0:
        return clips, targets, {"kind": "none", "weight": 1.0}
    use_cutmix = opts.cutmix_alpha > 0 and (
        opts.mixup_alpha == 0 or float(torch.rand((), generator=generator)) < opts.switch_prob)
    alpha = opts.cutmix_alpha if use_cutmix else opts.mixup_alpha
    # Beta(a, a) from two Gammas, drawn from ``generator`` (torch.distributions takes none).
    gammas = torch._standard_gamma(torch.full((2,), float(alpha)), generator=generator)
    weight = float(gammas[0] / gammas.sum())
    perm = torch.randperm(clips.shape[0], generator=generator).to(clips.device)
    info: dict[str, Any] = {"kind": "cutmix" if use_cutmix else "mixup", "perm": perm}
    if use_cutmix:
        height, width = clips.shape[-2:]
        top, bottom, left, right = cutmix_box(height, width, weight, generator)
        clips = clips.clone()
        clips[..., top:bottom, left:right] = clips[perm][..., top:bottom, left:right]
        weight = 1.0 - (bottom - top) * (right - left) / (height * width)
        info["box"] = (top, bottom, left, right)
    else:
        clips = weight * clips + (1.0 - weight) * clips[perm]
    info["weight"] = weight
    return clips, weight * targets + (1.0 - weight) * targets[perm], info


class MixupCutmix:
    """Batch dict -> batch dict: ``inputs`` mixed, ``labels`` replaced by soft targets [B, C]."""

    def __init__(self, opts: MixOptions):
        self.opts = opts

    def __call__(self, batch: dict[str, Any], generator: torch.Generator | None = None) -> dict[str, Any]:
        if "inputs" not in batch or "labels" not in batch:  # e.g. a batch whose samples were all skipped
            return batch
        batch = dict(batch)
        batch["inputs"], batch["labels"], _ = mix_batch(batch["inputs"], batch["labels"], self.opts, generator)
        return batch


class _MixingCollate:
    """A class, not a closure, so that it pickles into spawned workers."""

    def __init__(self, collate_fn: Callable[[Sequence[Mapping[str, Any]]], dict[str, Any]], mixer: MixupCutmix):
        self.collate_fn = collate_fn
        self.mixer = mixer

    def __call__(self, samples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        return self.mixer(self.collate_fn(samples))


def mixing_collate(collate_fn: Callable[[Sequence[Mapping[str, Any]]], dict[str, Any]], opts: MixOptions
                   ) -> Callable[[Sequence[Mapping[str, Any]]], dict[str, Any]]:
    """``collate_fn`` followed by `MixupCutmix` (pass the result to `omniclip.data.collate_skipping`)."""
    return _MixingCollate(collate_fn, MixupCutmix(opts))
