"""Synthetic video clips of the demo's 3D shapes moving, turning, growing and shrinking.

A clip is one posed shape of the 3D world (`omniclip.demo.world.generate`, fitted to the unit
ball) rendered at every frame (`omniclip.demo.render.render`) after an image-plane motion:

    frame k (tau = k - (T - 1) / 2, so tau runs from -(T-1)/2 to +(T-1)/2):
        scale  = radius * exp(growth * tau)
        angle  = angle0 + turn * tau                 (about the viewing axis)
        centre = centre0 + velocity * tau            (x right, y up, image units: [-1, 1]^2)

Clips are parameterised by their middle frame, and every random draw is made for every clip
whatever its motion: the motion only picks signs and which of (velocity, turn, growth) is
non-zero. Each motion therefore has an opposite with the negated signs, and the clip of the
opposite motion drawn from the same generator state is *exactly* the time reversal of the clip
(tau -> -tau flips the frame order and ``(-v) * tau == v * (-tau)`` bit for bit): "moving left"
reversed is "moving right", "growing" reversed is "shrinking". Its set of frames is the same, so
any model that averages frame embeddings gives both the same embedding and cannot tell them
apart; only a model that reads frame order can.

Single frames of the same distribution, with captions naming the shape, its size and where it
is in the picture, are what the demo's tiny CLIP is pretrained on (`frame_draw`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from omniclip.demo.dataset import Draw
from omniclip.demo.render import render
from omniclip.demo.world import SYNONYMS, WorldConfig, generate

#: Motions in opposite pairs: motion ``m`` and ``m ^ 1`` are each other's time reversal.
MOTIONS: tuple[str, ...] = ("moving left", "moving right", "moving up", "moving down",
                            "turning anticlockwise", "turning clockwise", "growing", "shrinking")
#: The axis of each pair of opposite motions (motion // 2).
AXES: tuple[str, ...] = ("horizontal", "vertical", "rotation", "scale")
#: Per motion, the signs of (velocity x, velocity y, turn, growth); opposite rows are negatives.
SIGNS = torch.tensor([
    [-1.0, 0.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0],  # left, right
    [0.0, 1.0, 0.0, 0.0], [0.0, -1.0, 0.0, 0.0],  # up (+y is the top of the image), down
    [0.0, 0.0, 1.0, 0.0], [0.0, 0.0, -1.0, 0.0],  # anticlockwise (+angle as the camera sees it), clockwise
    [0.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, -1.0],  # growing, shrinking
])
#: Templates of the captions of single frames (pretraining) and of the zero-shot shape prompts.
FRAME_TEMPLATES: tuple[str, ...] = ("a {}.", "a depth image of a {}.", "a picture of a {}.")
#: The video class prompt: filled with ``"<shape> <motion>"``, e.g. "a box moving left.".
VIDEO_TEMPLATE = "a {}."


def opposite(motions: Tensor) -> Tensor:
    """The opposite motion (the time reversal) of each motion index."""
    return torch.as_tensor(motions) ^ 1


@dataclass(frozen=True)
class VideoWorldConfig:
    """How clips are drawn. Lengths are in image units (the image spans [-1, 1]); speeds per frame."""

    shapes: tuple[str, ...] = ("box", "cone", "torus", "capsule")  # no sphere: turning one is invisible
    num_frames: int = 6
    image_size: int = 32
    render_points: int = 2048  # surface samples per shape (a few per covered pixel at 32 px)
    radius_range: tuple[float, float] = (0.38, 0.5)  # of the shape at the middle frame
    speed_px: tuple[float, float] = (1.0, 1.5)  # pixels per frame when moving
    turn_range: tuple[float, float] = (0.15, 0.25)  # radians per frame when turning
    growth_range: tuple[float, float] = (0.08, 0.12)  # log scale per frame when growing

    def __post_init__(self) -> None:
        unknown = [s for s in self.shapes if s not in SYNONYMS]
        if unknown:
            raise ValueError(f"unknown shapes {unknown} (known: {', '.join(SYNONYMS)})")
        if self.num_frames < 2:
            raise ValueError(f"a clip needs at least 2 frames, got {self.num_frames}")
        if self.max_centre <= 0:
            raise ValueError("shapes this large moving this fast leave the picture: lower radius_range, "
                             "speed_px, growth_range or num_frames")

    @property
    def classes(self) -> tuple[str, ...]:
        """Class names ``"<shape> <motion>"``, shape-major: class = shape * len(MOTIONS) + motion."""
        return tuple(f"{shape} {motion}" for shape in self.shapes for motion in MOTIONS)

    @property
    def half_span(self) -> float:
        """The largest |tau| of a clip: (T - 1) / 2."""
        return (self.num_frames - 1) / 2

    @property
    def pixel(self) -> float:
        """One pixel in image units."""
        return 2.0 / self.image_size

    @property
    def max_centre(self) -> float:
        """Bound on |centre0| per coordinate that keeps every shape inside the picture at every
        frame whatever its motion (the draws do not depend on the motion)."""
        grown = self.radius_range[1] * math.exp(self.growth_range[1] * self.half_span)
        moved = self.radius_range[1] + self.speed_px[1] * self.pixel * self.half_span
        return 1.0 - max(grown, moved)


def class_index(shapes: Tensor, motions: Tensor) -> Tensor:
    """Class index of (shape, motion) pairs."""
    return torch.as_tensor(shapes) * len(MOTIONS) + torch.as_tensor(motions)


def split_class(labels: Tensor) -> tuple[Tensor, Tensor]:
    """(shape, motion) of class indices."""
    labels = torch.as_tensor(labels)
    return labels // len(MOTIONS), labels % len(MOTIONS)


@dataclass
class ClipBatch:
    """A batch of clips and the parameters of their middle frames."""

    frames: Tensor  # [B, T, 3, S, S] in [-1, 1]
    shapes: Tensor  # [B] index into VideoWorldConfig.shapes
    motions: Tensor  # [B] index into MOTIONS
    centre: Tensor  # [B, 2] at the middle frame (image units)
    radius: Tensor  # [B] at the middle frame
    velocity: Tensor  # [B, 2] image units per frame (zero unless moving)
    turn: Tensor  # [B] radians per frame (zero unless turning)
    growth: Tensor  # [B] log scale per frame (zero unless growing or shrinking)

    @property
    def labels(self) -> Tensor:
        return class_index(self.shapes, self.motions)


@dataclass
class _Draws:
    """Everything random about a batch of clips, drawn before the motion is looked at."""

    surface: Tensor  # [B, M, 3] posed shape in the unit ball
    centre: Tensor  # [B, 2]
    radius: Tensor  # [B]
    angle: Tensor  # [B]
    magnitude: Tensor  # [B, 4] speed x, speed y (the same), turn, growth


def _uniform(generator: torch.Generator, n: int, bounds: tuple[float, float]) -> Tensor:
    low, high = bounds
    return low + (high - low) * torch.rand(n, generator=generator)


def _draw(cfg: VideoWorldConfig, shapes: Tensor, generator: torch.Generator) -> _Draws:
    world = WorldConfig(classes=cfg.shapes, num_points=1, render_points=cfg.render_points,
                        scale_range=(1.0, 1.0), max_offset=0.0)
    posed = generate(world, shapes, generator)
    n = shapes.shape[0]
    centre = (2 * torch.rand(n, 2, generator=generator) - 1) * cfg.max_centre
    radius = _uniform(generator, n, cfg.radius_range)
    angle = 2 * math.pi * torch.rand(n, generator=generator)
    speed = _uniform(generator, n, cfg.speed_px) * cfg.pixel
    magnitude = torch.stack([speed, speed, _uniform(generator, n, cfg.turn_range),
                             _uniform(generator, n, cfg.growth_range)], dim=1)
    return _Draws(posed.surface, centre, radius, angle, magnitude)


def _pose_frames(draws: _Draws, motion: Tensor, tau: Tensor) -> Tensor:
    """Surfaces [B, F, M, 3] at times ``tau`` [B, F] for motion parameters [B, 4] (signed magnitudes)."""
    velocity, turn, growth = motion[:, :2], motion[:, 2], motion[:, 3]
    scale = draws.radius[:, None] * torch.exp(growth[:, None] * tau)  # [B, F]
    angle = draws.angle[:, None] + turn[:, None] * tau
    centre = draws.centre[:, None, :] + velocity[:, None, :] * tau[..., None]  # [B, F, 2]
    cos, sin = torch.cos(angle)[..., None], torch.sin(angle)[..., None]  # [B, F, 1]
    x, y, z = (scale[..., None, None] * draws.surface[:, None]).unbind(-1)  # [B, F, M] each
    return torch.stack([cos * x - sin * y + centre[..., 0:1], sin * x + cos * y + centre[..., 1:2], z], dim=-1)


def frame_times(num_frames: int) -> Tensor:
    """tau of every frame, [T]: ``k - (T - 1) / 2`` (exact halves or integers)."""
    return torch.arange(num_frames, dtype=torch.float32) - (num_frames - 1) / 2


def generate_clips(cfg: VideoWorldConfig, shapes: Tensor, motions: Tensor, generator: torch.Generator) -> ClipBatch:
    """One clip per (shape, motion) pair, drawn from ``generator``.

    The draws do not depend on ``motions``: the same generator state with `opposite` motions
    gives every clip reversed in time, exactly.
    """
    shapes = torch.as_tensor(shapes, dtype=torch.long)
    motions = torch.as_tensor(motions, dtype=torch.long)
    if shapes.shape != motions.shape or shapes.dim() != 1:
        raise ValueError(f"shapes and motions must be 1-D of one length, got {list(shapes.shape)} and "
                         f"{list(motions.shape)}")
    if motions.numel() and (motions.min() < 0 or motions.max() >= len(MOTIONS)):
        raise ValueError(f"motions must lie in [0, {len(MOTIONS)}), got {motions.tolist()}")
    draws = _draw(cfg, shapes, generator)
    signed = SIGNS[motions] * draws.magnitude
    n, steps = shapes.shape[0], cfg.num_frames
    surfaces = _pose_frames(draws, signed, frame_times(steps).expand(n, steps))
    frames = render(surfaces.flatten(0, 1), cfg.image_size).view(n, steps, 3, cfg.image_size, cfg.image_size)
    return ClipBatch(frames, shapes, motions, draws.centre, draws.radius, signed[:, :2], signed[:, 2], signed[:, 3])


def reverse(clips: ClipBatch) -> ClipBatch:
    """Every clip played backwards, labelled with the opposite motion (what `generate_clips` with
    `opposite` motions from the same generator state draws, exactly)."""
    return ClipBatch(clips.frames.flip(1), clips.shapes, opposite(clips.motions), clips.centre, clips.radius,
                     -clips.velocity, -clips.turn, -clips.growth)


def generate_labelled(cfg: VideoWorldConfig, labels: Tensor, generator: torch.Generator,
                      chunk: int = 128) -> ClipBatch:
    """Clips of class indices ``labels`` (see `VideoWorldConfig.classes`), ``chunk`` at a time."""
    labels = torch.as_tensor(labels, dtype=torch.long)
    parts = []
    for start in range(0, max(len(labels), 1), chunk):
        shapes, motions = split_class(labels[start : start + chunk])
        parts.append(generate_clips(cfg, shapes, motions, generator))
    return ClipBatch(*(torch.cat([getattr(p, f) for p in parts]) for f in ClipBatch.__dataclass_fields__))


# --------------------------------------------------------------------------- single frames
def _location(x: float, y: float, threshold: float) -> str | None:
    horizontal = "left" if x < -threshold else "right" if x > threshold else None
    vertical = "top" if y > threshold else "bottom" if y < -threshold else None
    if horizontal and vertical:
        return f"at the {vertical} {horizontal}"
    if horizontal:
        return f"on the {horizontal}"
    if vertical:
        return f"at the {vertical}"
    return None


def frame_caption(shape: str, x: float, y: float, radius: float, cfg: VideoWorldConfig,
                  draws: Sequence[float]) -> str:
    """A caption of one frame from five uniform draws (synonym twice, size word, place, template).

    It names the shape (or a synonym), says "small" / "large" for the smallest / largest
    radii, and says where the shape is when it is off centre ("on the left", "at the top right"),
    so the pretrained CLIP's picture embeddings carry position and size: what motion changes.
    """
    synonyms = SYNONYMS[shape]
    noun = synonyms[0] if draws[0] < 0.6 else synonyms[1 + int(draws[1] * (len(synonyms) - 1))]
    low, high = cfg.radius_range
    third = (high - low) / 3
    size = "small" if radius < low + third else "large" if radius > high - third else None
    phrase = f"{size} {noun}" if size and draws[2] < 0.8 else noun
    place = _location(x, y, 0.25)
    if place and draws[3] < 0.8:
        phrase += " " + place
    return FRAME_TEMPLATES[int(draws[4] * len(FRAME_TEMPLATES))].format(phrase)


def generate_frames(cfg: VideoWorldConfig, shapes: Tensor, generator: torch.Generator) -> tuple[Tensor, list[str]]:
    """One frame [B, 3, S, S] of a clip of each shape (random motion, random frame) and its caption."""
    shapes = torch.as_tensor(shapes, dtype=torch.long)
    draws = _draw(cfg, shapes, generator)
    n = shapes.shape[0]
    motions = torch.randint(len(MOTIONS), (n,), generator=generator)
    tau = frame_times(cfg.num_frames)[torch.randint(cfg.num_frames, (n,), generator=generator)][:, None]
    signed = SIGNS[motions] * draws.magnitude
    surfaces = _pose_frames(draws, signed, tau)[:, 0]
    centre = draws.centre + signed[:, :2] * tau
    radius = draws.radius * torch.exp(signed[:, 3] * tau[:, 0])
    words = torch.rand(n, 5, generator=generator).tolist()
    captions = [frame_caption(cfg.shapes[int(s)], float(c[0]), float(c[1]), float(r), cfg, d)
                for s, c, r, d in zip(shapes, centre, radius, words)]
    return render(surfaces, cfg.image_size), captions


def frame_draw(cfg: VideoWorldConfig) -> Draw:
    """A `Draw` of single frames for `omniclip.demo.clip_pretrain.pretrain_clip` (labels = shapes)."""

    def draw(labels: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor, list[str]]:
        images, captions = generate_frames(cfg, labels, generator)
        return images, images, captions

    return draw


__all__ = [
    "AXES", "FRAME_TEMPLATES", "MOTIONS", "SIGNS", "VIDEO_TEMPLATE", "ClipBatch", "VideoWorldConfig", "class_index",
    "frame_caption", "frame_draw", "frame_times", "generate_clips", "generate_frames", "generate_labelled",
    "opposite", "reverse", "split_class",
]
