"""The demo's 3D lens and its two controls, all built from the framework's parts.

* ``vit``: Point-BERT tokenizer -> Perceiver (latents = the tiny ViT's patch positions) ->
  the pretrained tiny CLIP ViT, frozen (`ViTTrunk`). This is ViT-Lens.
* ``random_vit``: the same, into a randomly initialised frozen ViT of the same architecture:
  what the lens alone achieves through a frozen transformer that knows nothing.
* ``no_vit``: the same tokenizer and Perceiver, its latents mean-pooled and projected straight to
  the CLIP embedding (`PooledHead` stands in for the trunk): what the lens learns without a ViT.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from omniclip.modalities.pointcloud.tokenizers import PointBertTokenizer
from torch import nn

from omniclip.backbone import ClipBackbone, load_backbone
from omniclip.lens.perceiver import Perceiver
from omniclip.model import LensModel
from omniclip.trunk import ViTTrunk

VARIANTS = ("vit", "random_vit", "no_vit")


@dataclass(frozen=True)
class LensConfig:
    """Sizes of the point tokenizer and the Perceiver."""

    num_groups: int = 16
    group_size: int = 8
    encoder_dim: int = 128
    token_dim: int = 128
    depth: int = 1
    self_per_cross_attn: int = 1
    cross_dim_head: int = 64
    latent_dim_head: int = 32


class PooledHead(nn.Module):
    """The no-ViT control: mean of the lens tokens -> LayerNorm -> linear map to the CLIP embedding.

    It offers the few trunk methods `LensModel` calls, so the control is the same model class,
    trained by the same loop, with only the frozen ViT taken out.
    """

    def __init__(self, width: int, embed_dim: int, num_tokens: int) -> None:
        super().__init__()
        self.width = width
        self.num_tokens = num_tokens
        self.norm = nn.LayerNorm(width)
        self.proj = nn.Linear(width, embed_dim)

    def check_num_tokens(self, num_tokens: int) -> None:
        if num_tokens != self.num_tokens:
            raise ValueError(f"the lens gives {num_tokens} tokens, the pooled head was built for {self.num_tokens}")

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Nothing to checkpoint: the head is one layer."""

    def forward_features(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.proj(self.norm(features.mean(dim=1)))


def random_backbone(like: ClipBackbone, seed: int) -> ClipBackbone:
    """A frozen CLIP of ``like``'s architecture with random weights drawn from ``seed``.

    With the run's seed this is the very network the demo's CLIP pretraining starts from, so the
    control isolates what pretraining put into the ViT.
    """
    return load_backbone(like.name, None, init_seed=seed)


def build_lens(variant: str, backbone: ClipBackbone, cfg: LensConfig, seed: int) -> LensModel:
    """The lens model for ``variant`` (one of `VARIANTS`); the lens weights are drawn from ``seed``
    so that all variants of one run start from the same tokenizer and Perceiver."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown lens variant `{variant}` (one of: {', '.join(VARIANTS)})")
    source = random_backbone(backbone, seed) if variant == "random_vit" else backbone
    trunk = ViTTrunk(source.visual)
    num_latents = trunk.num_positions - 1
    torch.manual_seed(seed)
    tokenizer = PointBertTokenizer(cfg.num_groups, cfg.group_size, cfg.encoder_dim, cfg.token_dim, fps_start=None)
    lens = Perceiver(
        input_dim=cfg.token_dim, latent_dim=trunk.width, num_latents=num_latents, depth=cfg.depth,
        cross_dim_head=cfg.cross_dim_head, latent_heads=trunk.width // cfg.latent_dim_head,
        latent_dim_head=cfg.latent_dim_head, self_per_cross_attn=cfg.self_per_cross_attn,
    )
    head = PooledHead(trunk.width, trunk.embed_dim, num_latents) if variant == "no_vit" else trunk
    return LensModel(tokenizer, lens, head)
