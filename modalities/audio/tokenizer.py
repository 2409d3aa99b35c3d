"""AST-style patch tokenizer for log-mel spectrograms, and the audio lens defaults.

The spectrogram is read as a one-channel image with mel on the vertical axis and time on the
horizontal one; overlapping square patches (kernel = the trunk's patch size, stride 10) are
projected to the trunk width. Tokens are ordered mel-major (all time steps of the lowest mel
band first), as the reference flattens its conv output, so ViT-Lens weights load unchanged.
"""

from __future__ import annotations

import torch
from torch import nn

# Perceiver lens hyper-parameters of the ViT-Lens audio model, keyed by trunk. Latents = the
# trunk's patch grid (16 x 16 for ViT-L/14@224, 14 x 14 for ViT-B/16@224) so the trunk's
# positional embedding applies unchanged; latent width = trunk width with 64-dim heads; one
# 64-dim cross-attention head.
audio_lens_defaults: dict[str, dict[str, int | bool]] = {
    "ViT-L-14": {
        "depth": 2,
        "self_per_cross_attn": 3,
        "num_latents": 256,
        "latent_dim": 1024,
        "latent_heads": 16,
        "latent_dim_head": 64,
        "cross_heads": 1,
        "cross_dim_head": 64,
        "weight_tie_layers": False,
    },
    "ViT-B-16": {
        "depth": 2,
        "self_per_cross_attn": 3,
        "num_latents": 196,
        "latent_dim": 768,
        "latent_heads": 12,
        "latent_dim_head": 64,
        "cross_heads": 1,
        "cross_dim_head": 64,
        "weight_tie_layers": False,
    },
}


class AudioPatchTokenizer(nn.Module):
    """Fbank [B, frames, mel] -> tokens [B, N, width] with learned positions added.

    N = ((mel - patch) // stride + 1) * ((frames - patch) // stride + 1): 12 x 50 = 600 for
    128 x 512 with patch 14 or 16 and stride 10. Parameters: ``conv1.weight``
    [width, 1, patch, patch] (no bias) and ``pos_emb`` [N, width], the reference's names.
    """

    def __init__(
        self,
        width: int,
        patch_size: int,
        stride: int | tuple[int, int] = 10,
        num_mel_bins: int = 128,
        target_frames: int = 512,
    ):
        super().__init__()
        mel_stride, time_stride = (stride, stride) if isinstance(stride, int) else stride
        if patch_size > min(num_mel_bins, target_frames):
            raise ValueError(
                f"patch_size {patch_size} exceeds the {num_mel_bins} x {target_frames} spectrogram"
            )
        self.num_mel_bins = num_mel_bins
        self.target_frames = target_frames
        self.grid_size = (
            (num_mel_bins - patch_size) // mel_stride + 1,
            (target_frames - patch_size) // time_stride + 1,
        )
        self.num_tokens = self.grid_size[0] * self.grid_size[1]
        self.conv1 = nn.Conv2d(1, width, patch_size, stride=(mel_stride, time_stride), bias=False)
        self.pos_emb = nn.Parameter(width**-0.5 * torch.randn(self.num_tokens, width))

    def forward(self, fbank: torch.Tensor) -> torch.Tensor:
        expected = (self.target_frames, self.num_mel_bins)
        if fbank.dim() != 3 or tuple(fbank.shape[1:]) != expected:
            raise ValueError(
                f"AudioPatchTokenizer expects fbank [B, {expected[0]}, {expected[1]}], got shape {tuple(fbank.shape)}"
            )
        patches = self.conv1(fbank.transpose(1, 2).unsqueeze(1))  # [B, width, mel', time']
        return patches.flatten(2).transpose(1, 2) + self.pos_emb
