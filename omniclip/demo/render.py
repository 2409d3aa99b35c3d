"""Depth renderings of posed surfaces: orthographic projection with a z-buffer, in PyTorch.

The camera and the z-buffer are the point-cloud modality's (`depth_map`, shared with its
`ProjectionTokenizer`); no rasteriser and no OpenGL, whose off-screen renderer aborts on headless
machines. Dense surface samples (a few per covered pixel) leave no holes.
"""

from __future__ import annotations

import torch
from omniclip.modalities.pointcloud.projection import depth_map
from torch import Tensor

__all__ = ["depth_map", "render"]


def render(surface: Tensor, size: int = 32) -> Tensor:
    """CLIP input [B, 3, S, S] in [-1, 1]: channels (depth, silhouette, depth).

    Depth z in [-1, 1] maps to 0.25 (far) .. 1 (near) and the background to 0, so an object is
    never confused with the background however far it lies; the silhouette is 1 on the object.
    """
    depth, mask = depth_map(surface, size)
    shade = torch.where(mask, 0.25 + 0.375 * (depth.clamp(-1, 1) + 1), torch.zeros_like(depth))
    return torch.stack([shade, mask.to(shade.dtype), shade], dim=1) * 2 - 1
