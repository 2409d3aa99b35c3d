"""Augmentations against an explicit re-computation from the same random draws."""

from __future__ import annotations

import numpy as np
import pytest

from omniclip.errors import ConfigError
from omniclip.modalities.pointcloud.transforms import PointAugment, rotation_about_axis


def rx(a):
    return np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])


def ry(a):
    return np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])


def rz(a):
    return np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])


def test_rotation_matrices_are_the_standard_ones():
    for axis, ref in enumerate((rx, ry, rz)):
        np.testing.assert_allclose(rotation_about_axis(0.7, axis), ref(0.7), atol=1e-12)


def test_full_pipeline_matches_explicit_steps_from_the_same_draws():
    points = np.random.default_rng(0).normal(size=(50, 6)).astype(np.float32)
    aug = PointAugment(jitter=(0.01, 0.05), color_drop=1.0)
    np.random.seed(5)
    got = aug(points)

    np.random.seed(5)
    x = points.astype(np.float64).copy()
    ratio = np.random.random() * 0.875
    drop = np.random.random(50) <= ratio
    x[drop] = x[0]
    x[:, :3] *= np.random.uniform(0.8, 1.25)
    x[:, :3] += np.random.uniform(-0.1, 0.1, 3)
    angles = np.clip(0.06 * np.random.randn(3), -0.18, 0.18)
    x[:, :3] = x[:, :3] @ (rz(angles[2]) @ ry(angles[1]) @ rx(angles[0]))
    x[:, :3] = x[:, :3] @ ry(np.random.uniform() * 2 * np.pi)
    x[:, :3] += np.clip(0.01 * np.random.randn(50, 3), -0.05, 0.05)
    x[:, 3:] = 0.4
    assert drop.any() and got.dtype == np.float32
    np.testing.assert_allclose(got, x.astype(np.float32), rtol=1e-5, atol=1e-6)


def test_up_rotation_only_keeps_height_and_radius():
    points = np.random.default_rng(1).normal(size=(30, 3)).astype(np.float32)
    aug = PointAugment(dropout=None, scale=None, shift=None, perturb=None, up_axis=2)
    out = aug(points)
    np.testing.assert_allclose(out[:, 2], points[:, 2], atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(out[:, :2], axis=1), np.linalg.norm(points[:, :2], axis=1), atol=1e-5)
    assert not np.allclose(out, points)


def test_from_config_and_validation():
    aug = PointAugment.from_config({"scale": [0.5, 2.0], "jitter": [0.02, 0.1], "rotate_up": False})
    assert aug.scale == (0.5, 2.0) and aug.jitter == (0.02, 0.1) and aug.rotate_up is False
    assert PointAugment.from_config(None) is None and PointAugment.from_config(False) is None
    with pytest.raises(ConfigError, match=r"config `augment.flip`: unknown augmentation"):
        PointAugment.from_config({"flip": True})
    with pytest.raises(ConfigError, match=r"config `augment.up_axis`: must be 0, 1 or 2, got 3"):
        PointAugment(up_axis=3)
    with pytest.raises(ConfigError, match=r"config `augment.dropout`: must be in \[0, 1\)"):
        PointAugment(dropout=1.5)
