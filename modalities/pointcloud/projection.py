"""Orthographic projection of points onto an image grid (a z-buffer in PyTorch, no rasteriser).

The camera looks along -z at the square [-1, 1]^2 of the x-y plane, the frame clouds are
normalised into: pixel (row, col) of an S x S grid covers x in [-1 + 2 col / S, -1 + 2 (col + 1) / S]
and y from the top (row 0 at y = 1). Each pixel keeps the largest z (the nearest point) of the
points that fall in it: one batched ``scatter_reduce``, so a batch of clouds projects in one call.
The demo's depth renderings and the `ProjectionTokenizer` share this one mapping, which is what
puts a tokenizer's tokens where the ViT's patches are.
"""

from __future__ import annotations

import torch
from torch import Tensor


def depth_map(points: Tensor, size: int) -> tuple[Tensor, Tensor]:
    """Z-buffer of ``points`` [B, M, 3]: nearest z per pixel [B, S, S] and the hit mask [B, S, S].

    Pixels that no point falls in hold -inf in the depth and False in the mask; points outside
    the image square are ignored.
    """
    if points.dim() != 3 or points.shape[-1] != 3:
        raise ValueError(f"points must have shape [B, M, 3], got {list(points.shape)}")
    batch = points.shape[0]
    x, y, z = points.unbind(-1)
    col = torch.floor((x + 1) * (size / 2)).long()
    row = torch.floor((1 - y) * (size / 2)).long()
    inside = (col >= 0) & (col < size) & (row >= 0) & (row < size)
    pixels = size * size
    # Points outside the image go to one spare slot past the last image.
    flat = torch.arange(batch, device=points.device)[:, None] * pixels + row * size + col
    flat = torch.where(inside, flat, batch * pixels)
    depth = torch.full((batch * pixels + 1,), float("-inf"), dtype=points.dtype, device=points.device)
    depth = depth.scatter_reduce(0, flat.reshape(-1), z.reshape(-1), reduce="amax")
    depth = depth[:-1].view(batch, size, size)
    return depth, torch.isfinite(depth)

