import math

import pytest
import torch

from omniclip.demo.dataset import make_shape_set
from omniclip.demo.world import (
    CLASS_NAMES,
    SYNONYMS,
    WorldConfig,
    balanced_labels,
    generate,
)


def canonical(batch):
    """Undo each shape's pose: world = offset + scale * R @ canonical."""
    centred = batch.surface - batch.offset[:, None, :]
    return centred @ batch.rotation / batch.scale[:, None, None]


def shapes_of(name, count=3, noise=0.0, seed=0):
    world = WorldConfig(noise=noise, num_points=256, render_points=512)
    labels = torch.full((count,), CLASS_NAMES.index(name))
    return generate(world, labels, torch.Generator().manual_seed(seed))


def test_sphere_points_lie_on_the_ellipsoid():
    batch = shapes_of("sphere")
    q = canonical(batch)
    radii = batch.params[:, None, :]
    assert torch.allclose(((q / radii) ** 2).sum(-1), torch.ones(1), atol=1e-4)


def test_box_points_lie_on_a_face():
    batch = shapes_of("box")
    ratio = (canonical(batch).abs() / batch.params[:, None, :]).amax(-1)
    assert torch.allclose(ratio, torch.ones(1), atol=1e-4)


def test_cylinder_points_lie_on_side_or_caps():
    batch = shapes_of("cylinder", count=4)
    q = canonical(batch)
    radius, half = batch.params[:, None, 0], batch.params[:, None, 2]
    radial, z = q[..., :2].norm(dim=-1), q[..., 2]
    on_side = ((radial - radius).abs() < 1e-4) & (z.abs() <= half + 1e-4)
    on_cap = ((z.abs() - half).abs() < 1e-4) & (radial <= radius + 1e-4)
    assert (on_side | on_cap).all()
    # area weighting: the side's share of the samples matches its share of the area
    side_share = (4 * math.pi * radius * half) / (4 * math.pi * radius * half + 2 * math.pi * radius**2)
    assert on_side.float().mean(1) == pytest.approx(side_share.squeeze(1), abs=0.06)


def test_cone_points_lie_on_lateral_surface_or_base():
    batch = shapes_of("cone")
    q = canonical(batch)
    radius, half = batch.params[:, None, 0], batch.params[:, None, 2]
    radial, z = q[..., :2].norm(dim=-1), q[..., 2]
    lateral = (radial - radius * (half - z) / (2 * half)).abs() < 1e-4
    base = ((z + half).abs() < 1e-4) & (radial <= radius + 1e-4)
    assert (lateral | base).all()


def test_noisy_torus_cloud_stays_within_noise_of_the_surface():
    noise = 0.01
    batch = shapes_of("torus", count=4, noise=noise)
    q = (batch.points - batch.offset[:, None, :]) @ batch.rotation / batch.scale[:, None, None]
    big, small = batch.params[:, None, 0], batch.params[:, None, 1]
    # exact signed distance to a torus, back in world units
    distance = (torch.stack([q[..., :2].norm(dim=-1) - big, q[..., 2]], -1).norm(dim=-1) - small)
    distance = distance * batch.scale[:, None]
    assert distance.std().item() == pytest.approx(noise, rel=0.15)
    assert distance.abs().max().item() < 6 * noise


def test_shapes_fit_the_rendered_square_and_captions_name_their_class():
    world = WorldConfig(num_points=64, render_points=256)
    labels = balanced_labels(range(len(CLASS_NAMES)), 5)
    batch = generate(world, labels, torch.Generator().manual_seed(3))
    assert batch.surface.abs().max() <= 1.0
    for label, caption in zip(labels.tolist(), batch.captions):
        assert any(word in caption for word in SYNONYMS[CLASS_NAMES[label]]), caption


def test_class_balance_and_determinism_by_seed():
    world = WorldConfig(num_points=32, render_points=128)
    a = make_shape_set(world, [0, 3, 5], 4, seed=7, name="a", image_size=16)
    b = make_shape_set(world, [0, 3, 5], 4, seed=7, name="b", image_size=16)
    c = make_shape_set(world, [0, 3, 5], 4, seed=8, name="c", image_size=16)
    assert torch.bincount(a.labels, minlength=6).tolist() == [4, 0, 0, 4, 0, 4]
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.images, b.images) and a.captions == b.captions
    assert not torch.equal(a.inputs, c.inputs)


def test_unknown_class_and_bad_labels_are_rejected():
    with pytest.raises(ValueError, match=r"unknown shape classes \['teapot'\]"):
        WorldConfig(classes=("box", "teapot"))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 10\)"):
        generate(WorldConfig(), torch.tensor([10]), torch.Generator())
