"""Tokens on a ViT's patch grid: what a tokenizer uses when it draws its input as a picture laid
out like the trunk's images (points projected by the camera of the images, a spectrogram laid out
as the spectrogram pictures are) and wants one token per patch position, in the trunk's order.
"""

from __future__ import annotations

from torch import Tensor, nn


def patchify(pictures: Tensor, patch_size: int) -> Tensor:
    """[B, C, H, W] -> [B, (H / p) (W / p), C p p]: patches row-major, the order a ViT's patch
    embedding gives them (its ``conv1`` output flattened); each patch's values channel-major, then
    row, then column, as ``conv1``'s weight is laid out."""
    batch, channels, height, width = pictures.shape
    if height % patch_size or width % patch_size:
        raise ValueError(f"picture size {height}x{width} is not a multiple of the patch size {patch_size}")
    grid_h, grid_w = height // patch_size, width // patch_size
    x = pictures.reshape(batch, channels, grid_h, patch_size, grid_w, patch_size)
    return x.permute(0, 2, 4, 1, 3, 5).reshape(batch, grid_h * grid_w, channels * patch_size * patch_size)


class PatchGridEncoder(nn.Module):
    """A small learned per-patch encoder: each ``patch_size`` patch of a ``channels``-channel picture
    [B, C, S, S] -> one ``out_dim`` token (a two-layer MLP shared by all patches), [B, (S / p)^2, out_dim]."""

    def __init__(self, channels: int, image_size: int, patch_size: int, out_dim: int, hidden_dim: int = 256) -> None:
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")
        self.image_size = image_size
        self.patch_size = patch_size
        self.out_dim = out_dim
        self.num_tokens = (image_size // patch_size) ** 2
        self.mlp = nn.Sequential(
            nn.Linear(channels * patch_size * patch_size, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, out_dim)
        )

    def forward(self, pictures: Tensor) -> Tensor:
        if pictures.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(f"pictures must be {self.image_size}x{self.image_size}, got {list(pictures.shape)}")
        return self.mlp(patchify(pictures, self.patch_size))
