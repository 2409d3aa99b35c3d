"""Training augmentations for point clouds [N, 3 + C] (xyz first; colour columns follow).

Randomness comes from NumPy's global generator, which `omniclip.data.SeededDataset` seeds per
(seed, epoch, index), so an augmented sample depends on the sample alone. The steps run in the
order of the ULIP / ViT-Lens ShapeNet pipeline (dropout, scale, shift, small rotation, rotation
about the up axis) followed by jitter and OpenShape's colour drop; each step can be switched off
with ``None`` / ``False``. Draws, in order: dropout (ratio, then N uniforms), scale (1), shift (3),
perturbation (3 normals), up rotation (1 angle), jitter (N x 3 normals), colour drop (1).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Mapping

import numpy as np

from omniclip.errors import ConfigError

#: Colour OpenShape gives clouds without colour, and coloured clouds whose colour is dropped.
GREY = 0.4


def rotation_about_axis(angle: float, axis: int) -> np.ndarray:
    """The standard 3x3 rotation matrix by ``angle`` about coordinate ``axis`` (0 = x, 1 = y, 2 = z).

    The augmentations apply it to row vectors as ``xyz @ R``, as the reference code does; for
    axis 1 it is the reference's up-axis matrix [[c, 0, s], [0, 1, 0], [-s, 0, c]].
    """
    c, s = np.cos(angle), np.sin(angle)
    i, j = [(1, 2), (2, 0), (0, 1)][axis]  # the plane the rotation acts in, right-handed
    rot = np.eye(3)
    rot[i, i], rot[i, j], rot[j, i], rot[j, j] = c, -s, s, c
    return rot


@dataclass(frozen=True)
class PointAugment:
    """Random augmentation of one cloud; defaults are the ULIP / ViT-Lens ShapeNet settings.

    Args:
        dropout: replace a random fraction (uniform in [0, dropout]) of the points by the first
            point, so the count stays fixed.
        scale: (low, high) of a uniform factor for xyz.
        shift: half-width of a uniform offset per axis.
        perturb: (sigma, clip) in radians of small random rotations about x, y and z (R = Rz Ry Rx).
        rotate_up: rotate by a uniform angle in [0, 2 pi) about ``up_axis`` (1 = y, ShapeNet).
        jitter: (sigma, clip) of clipped Gaussian noise per coordinate.
        color_drop: probability of replacing the colour columns by grey 0.4 (OpenShape: 0.5).
    """

    dropout: float | None = 0.875
    scale: tuple[float, float] | None = (0.8, 1.25)
    shift: float | None = 0.1
    perturb: tuple[float, float] | None = (0.06, 0.18)
    rotate_up: bool = True
    up_axis: int = 1
    jitter: tuple[float, float] | None = None
    color_drop: float | None = None

    def __post_init__(self) -> None:
        if self.up_axis not in (0, 1, 2):
            raise ConfigError("augment.up_axis", f"must be 0, 1 or 2, got {self.up_axis}")
        if self.dropout is not None and not 0.0 <= self.dropout < 1.0:
            raise ConfigError("augment.dropout", f"must be in [0, 1), got {self.dropout}")
        if self.scale is not None and not 0.0 < self.scale[0] <= self.scale[1]:
            raise ConfigError("augment.scale", f"must be (low, high) with 0 < low <= high, got {self.scale}")

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | None) -> "PointAugment | None":
        """Build from a recipe dict (lists become tuples); ``None`` or ``False`` -> no augmentation."""
        if cfg is None or cfg is False:
            return None
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(cfg) - known)
        if unknown:
            raise ConfigError(f"augment.{unknown[0]}", f"unknown augmentation (known: {', '.join(sorted(known))})")
        return cls(**{k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in cfg.items()})

    def __call__(self, points: np.ndarray) -> np.ndarray:
        """Augmented copy of ``points`` [N, 3 + C] (float32 in, float32 out)."""
        out = np.array(points, dtype=np.float64)
        xyz = out[:, :3]
        if self.dropout is not None:
            ratio = np.random.random() * self.dropout
            drop = np.random.random(len(out)) <= ratio
            out[drop] = out[0]
        if self.scale is not None:
            xyz *= np.random.uniform(self.scale[0], self.scale[1])
        if self.shift is not None:
            xyz += np.random.uniform(-self.shift, self.shift, 3)
        if self.perturb is not None:
            sigma, clip = self.perturb
            ax, ay, az = np.clip(sigma * np.random.randn(3), -clip, clip)
            rot = rotation_about_axis(az, 2) @ rotation_about_axis(ay, 1) @ rotation_about_axis(ax, 0)
            xyz[:] = xyz @ rot
        if self.rotate_up:
            xyz[:] = xyz @ rotation_about_axis(np.random.uniform() * 2 * np.pi, self.up_axis)
        if self.jitter is not None:
            sigma, clip = self.jitter
            xyz += np.clip(sigma * np.random.randn(len(out), 3), -clip, clip)
        if self.color_drop is not None and out.shape[1] > 3 and np.random.random() < self.color_drop:
            out[:, 3:] = GREY
        return out.astype(np.float32)
