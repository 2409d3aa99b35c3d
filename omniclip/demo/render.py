"""Depth renderings of posed surfaces: orthographic projection with a z-buffer, in PyTorch.

The camera looks along -z at the square [-1, 1]^2 of the x-y plane: pixel (row, col) covers
x in [-1 + 2 col / S, -1 + 2 (col + 1) / S] and y from the top (row 0 at y = 1). Each pixel keeps
the largest z (the nearest surface sample) of the samples that fall in it, one batched
``scatter_reduce``; no rasteriser and no OpenGL, whose off-screen renderer aborts on headless
machines. Dense surface samples (a few per covered pixel) leave no holes.
"""

from __future__ import annotations

import torch
from torch import Tensor


def depth_map(surface: Tensor, size: int) -> tuple[Tensor, Tensor]:
    """Z-buffer of ``surface`` [B, M, 3]: nearest z per pixel [B, S, S] and the hit mask [B, S, S].

    Pixels that no sample falls in hold -inf in the depth and False in the mask; samples outside
    the image square are ignored.
    """
    if surface.dim() != 3 or surface.shape[-1] != 3:
        raise ValueError(f"surface must have shape [B, M, 3], got {list(surface.shape)}")
    batch = surface.shape[0]
    x, y, z = surface.unbind(-1)
    col = torch.floor((x + 1) * (size / 2)).long()
    row = torch.floor((1 - y) * (size / 2)).long()
    inside = (col >= 0) & (col < size) & (row >= 0) & (row < size)
    pixels = size * size
    # Samples outside the image go to one spare slot past the last image.
    flat = torch.arange(batch, device=surface.device)[:, None] * pixels + row * size + col
    flat = torch.where(inside, flat, batch * pixels)
    depth = torch.full((batch * pixels + 1,), float("-inf"), dtype=surface.dtype, device=surface.device)
    depth = depth.scatter_reduce(0, flat.reshape(-1), z.reshape(-1), reduce="amax")
    depth = depth[:-1].view(batch, size, size)
    return depth, torch.isfinite(depth)


def render(surface: Tensor, size: int = 32) -> Tensor:
    """CLIP input [B, 3, S, S] in [-1, 1]: channels (depth, silhouette, depth).

    Depth z in [-1, 1] maps to 0.25 (far) .. 1 (near) and the background to 0, so an object is
    never confused with the background however far it lies; the silhouette is 1 on the object.
    """
    depth, mask = depth_map(surface, size)
    shade = torch.where(mask, 0.25 + 0.375 * (depth.clamp(-1, 1) + 1), torch.zeros_like(depth))
    return torch.stack([shade, mask.to(shade.dtype), shade], dim=1) * 2 - 1
