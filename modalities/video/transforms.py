"""Clip transforms on uint8 ``[T, 3, H, W]``, the same random parameters for every frame.

torchvision.transforms.v2 draws a transform's parameters once per call and applies them to all
leading dimensions of a plain tensor, so a clip ``[T, 3, H, W]`` is cropped, flipped and jittered
as one picture. It is passed as a plain tensor, not a `tv_tensors.Video`: torchvision 0.26 has no
grayscale kernel for videos and `RandomGrayscale` passes a Video through unchanged. (No
pytorchvideo: its transforms import a module torchvision removed.)

Training (ViFi-CLIP / X-CLIP / ILA): short side to ``short_side`` (256 = 224 / 0.875), a
multi-scale crop (mmaction's ``MultiScaleCrop``: scales 1, .875, .75, .66 of the short side,
width and height scales at most one step apart, one of five fixed positions) or a random
resized crop, resized to ``size`` x ``size``; horizontal flip (0.5); colour jitter (p 0.8);
grayscale (p 0.2). Testing: short side to ``short_side`` then a centre crop, or, with three
crops, short side to ``size`` then three ``size`` crops along the long side (mmaction's
``ThreeCrop`` positions: start, centre, end).

Normalisation is last, on float: CLIP's mean/std by default, or ImageNet's on 0-255, which the
ViFi-CLIP / X-CLIP / ILA checkpoints were trained with (``normalize: imagenet``), or none, to
keep uint8 through the loader and normalise on the GPU (`Normalize` as a module). Being affine,
normalisation commutes with mixup / cutmix (`omniclip.modalities.video.mixing`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torchvision.transforms.v2 as v2
import torchvision.transforms.v2.functional as TF
from torch import nn

from omniclip.errors import ConfigError

#: Mean and std on the 0-255 scale.
NORMALIZATIONS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "clip": ((0.48145466 * 255, 0.4578275 * 255, 0.40821073 * 255),
             (0.26862954 * 255, 0.26130258 * 255, 0.27577711 * 255)),
    "imagenet": ((123.675, 116.28, 103.53), (58.395, 57.12, 57.375)),
}
CROPS = ("multiscale", "random_resized")
MULTISCALE_SCALES = (1.0, 0.875, 0.75, 0.66)


@dataclass(frozen=True)
class TransformOptions:
    """Spatial augmentation and normalisation (see the module docstring)."""

    size: int = 224
    short_side: int = 256
    train_crop: str = "multiscale"
    flip: float = 0.5
    color_jitter: float = 0.8
    grayscale: float = 0.2
    num_crops: int = 1
    normalize: str = "clip"

    def __post_init__(self) -> None:
        if self.size < 1 or self.short_side < self.size:
            raise ConfigError("short_side", f"must be >= size ({self.size}), got {self.short_side}")
        if self.train_crop not in CROPS:
            raise ConfigError("train_crop", f"unknown crop `{self.train_crop}` (known: {', '.join(CROPS)})")
        for key in ("flip", "color_jitter", "grayscale"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise ConfigError(key, f"is a probability, got {getattr(self, key)}")
        if self.num_crops not in (1, 3):
            raise ConfigError("num_crops", f"must be 1 (centre) or 3 (three-crop), got {self.num_crops}")
        if self.normalize not in (*NORMALIZATIONS, "none"):
            raise ConfigError("normalize", f"unknown normalisation `{self.normalize}` "
                                           f"(known: {', '.join(NORMALIZATIONS)}, none)")


class MultiScaleCrop(v2.Transform):
    """mmaction's ``MultiScaleCrop`` (``random_crop=False``, ``num_fixed_crops=5``): a crop of
    ``scale_w x scale_h`` of the short side, the two scales at most ``max_gap`` steps apart,
    at one of five fixed positions (the corners and the centre)."""

    def __init__(self, scales: Sequence[float] = MULTISCALE_SCALES, max_gap: int = 1):
        super().__init__()
        self.scales = tuple(scales)
        self.max_gap = max_gap

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = v2.query_size(flat_inputs)
        base = min(height, width)
        sizes = [int(base * s) for s in self.scales]
        pairs = [(w, h) for i, h in enumerate(sizes) for j, w in enumerate(sizes) if abs(i - j) <= self.max_gap]
        crop_w, crop_h = pairs[int(torch.randint(len(pairs), ()))]
        step_w, step_h = (width - crop_w) // 4, (height - crop_h) // 4
        offsets = [(0, 0), (4 * step_w, 0), (0, 4 * step_h), (4 * step_w, 4 * step_h), (2 * step_w, 2 * step_h)]
        left, top = offsets[int(torch.randint(len(offsets), ()))]
        return {"top": top, "left": left, "height": crop_h, "width": crop_w}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return self._call_kernel(TF.crop, inpt, **params)


def three_crop(clip: torch.Tensor, size: int) -> torch.Tensor:
    """Three ``size`` crops of ``clip`` [..., H, W] along its long side, stacked on a new first
    axis: at offsets 0, step and 2 * step with step = (long - size) // 2 (mmaction's
    ``ThreeCrop`` positions), centred on the short side."""
    height, width = clip.shape[-2:]
    if min(height, width) < size:
        raise ValueError(f"a {height}x{width} clip is smaller than the {size} crop")
    if width >= height:
        step = (width - size) // 2
        tops, lefts = [(height - size) // 2] * 3, [0, step, 2 * step]
    else:
        step = (height - size) // 2
        tops, lefts = [0, step, 2 * step], [(width - size) // 2] * 3
    return torch.stack([clip[..., t:t + size, l:l + size] for t, l in zip(tops, lefts)])


class Normalize(nn.Module):
    """uint8 (or float on 0-255) clips ``[..., 3, H, W]`` to normalised float; a module so that it
    can run on the GPU after the loader moved uint8 batches there (``normalize: none``)."""

    def __init__(self, name: str = "clip", dtype: torch.dtype = torch.float32):
        super().__init__()
        if name not in NORMALIZATIONS:
            raise ConfigError("normalize", f"unknown normalisation `{name}` (known: {', '.join(NORMALIZATIONS)})")
        mean, std = NORMALIZATIONS[name]
        self.register_buffer("mean", torch.tensor(mean).view(3, 1, 1), persistent=False)
        self.register_buffer("scale", 1.0 / torch.tensor(std).view(3, 1, 1), persistent=False)
        self.dtype = dtype

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        if clips.shape[-3] != 3:
            raise ValueError(f"expected clips [..., 3, H, W], got shape {tuple(clips.shape)}")
        return ((clips.to(self.dtype) - self.mean.to(self.dtype)) * self.scale.to(self.dtype))


class ClipTransform:
    """uint8 ``[T, 3, H, W]`` -> ``[T, 3, S, S]`` (training / one crop) or ``[3, T, 3, S, S]``
    (three crops); float and normalised unless ``normalize`` is ``none``."""

    def __init__(self, opts: TransformOptions, train: bool):
        self.opts = opts
        self.train = train
        size = opts.size
        if train:
            crop = (MultiScaleCrop() if opts.train_crop == "multiscale"
                    else v2.RandomResizedCrop(size, scale=(0.08, 1.0), antialias=True))
            steps: list[Any] = [v2.Resize(opts.short_side, antialias=True), crop,
                                v2.Resize((size, size), antialias=True)]
            if opts.flip:
                steps.append(v2.RandomHorizontalFlip(opts.flip))
            if opts.color_jitter:
                steps.append(v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=opts.color_jitter))
            if opts.grayscale:
                steps.append(v2.RandomGrayscale(opts.grayscale))
        elif opts.num_crops == 3:
            steps = [v2.Resize(size, antialias=True)]
        else:
            steps = [v2.Resize(opts.short_side, antialias=True), v2.CenterCrop(size)]
        self.spatial = v2.Compose(steps)
        self.normalize = None if opts.normalize == "none" else Normalize(opts.normalize)

    def __call__(self, clip: torch.Tensor) -> torch.Tensor:
        if clip.dim() != 4 or clip.shape[1] != 3 or clip.dtype != torch.uint8:
            raise ValueError(f"expected a uint8 clip [T, 3, H, W], got {clip.dtype} {tuple(clip.shape)}")
        out = self.spatial(clip)
        if not self.train and self.opts.num_crops == 3:
            out = three_crop(out, self.opts.size)
        return out if self.normalize is None else self.normalize(out)
