import math

import pytest
import torch

from omniclip.demo.render import depth_map, render


def test_zbuffer_keeps_the_nearest_sample_of_each_pixel():
    size = 4  # pixels are 0.5 wide: column c covers x in [-1 + c/2, -1 + (c+1)/2]
    points = torch.tensor([[
        [-0.9, 0.9, -0.5],   # row 0, col 0
        [-0.8, 0.8, 0.3],    # row 0, col 0, nearer: wins
        [0.6, -0.2, 0.1],    # row 2, col 3
        [0.1, 0.4, -0.7],    # row 1, col 2
        [1.5, 0.0, 0.9],     # outside the square: ignored
    ]])  # fmt: skip
    depth, mask = depth_map(points, size)
    expected = torch.full((1, size, size), float("-inf"))
    expected[0, 0, 0], expected[0, 2, 3], expected[0, 1, 2] = 0.3, 0.1, -0.7
    assert torch.equal(depth, expected)
    assert torch.equal(mask, torch.isfinite(expected))


def test_batched_clouds_do_not_mix():
    points = torch.tensor([[[0.1, 0.1, 0.5]], [[-0.6, -0.6, -0.2]]])
    depth, mask = depth_map(points, 2)
    assert mask.sum().item() == 2
    assert depth[0, 0, 1] == 0.5 and depth[1, 1, 0] == -0.2


def sphere_surface(radius, count, seed=0):
    directions = torch.randn(1, count, 3, generator=torch.Generator().manual_seed(seed))
    return radius * torch.nn.functional.normalize(directions, dim=-1)


def test_sphere_renders_a_disk_with_spherical_depth():
    size, radius = 32, 0.5
    depth, mask = depth_map(sphere_surface(radius, 60000), size)
    centres = (torch.arange(size) + 0.5) * 2 / size - 1  # pixel centres in x; y runs top-down
    x, y = centres[None, :], -centres[:, None]
    r = (x**2 + y**2).sqrt()
    pixel = 2 / size
    assert mask[0][r < radius - pixel].all()
    assert not mask[0][r > radius + pixel].any()
    inner = r < radius - 2 * pixel
    analytic = (radius**2 - r**2).clamp(min=0).sqrt()
    # the nearest sample of a pixel lies within one pixel of its centre
    assert (depth[0][inner] - analytic[inner]).abs().max().item() < 0.1
    assert depth[0, 15, 15].item() == pytest.approx(math.sqrt(radius**2 - 2 * (pixel / 2) ** 2), abs=0.01)


def test_render_channels():
    surface = sphere_surface(0.5, 20000)
    image = render(surface, 16)
    depth, mask = depth_map(surface, 16)
    assert image.shape == (1, 3, 16, 16)
    assert torch.equal(image[0, 1], mask[0].float() * 2 - 1)  # silhouette
    assert torch.equal(image[0, 0], image[0, 2])
    assert (image[0, 0][~mask[0]] == -1).all()  # background
    shade = (0.25 + 0.375 * (depth[0][mask[0]] + 1)) * 2 - 1
    assert torch.allclose(image[0, 0][mask[0]], shade)
    assert image[0, 0][mask[0]].min() >= -0.5  # objects never look like background


def test_bad_shape_is_rejected():
    with pytest.raises(ValueError, match=r"points must have shape \[B, M, 3\], got \[5, 3\]"):
        depth_map(torch.zeros(5, 3), 8)
