"""The demos' lenses and their two controls, all built from the framework's parts.

* ``vit``: the modality's tokenizer (Point-BERT for clouds, fbank patches for sound) -> Perceiver
  (latents = the tiny ViT's patch positions) -> the pretrained tiny CLIP ViT, frozen (`ViTTrunk`).
  This is ViT-Lens.
* ``random_vit``: the same, into a randomly initialised frozen ViT of the same architecture:
  what the lens alone achieves through a frozen transformer that knows nothing.
* ``no_vit``: the same tokenizer and Perceiver, its latents mean-pooled and projected straight to
  the CLIP embedding (`PooledHead` stands in for the trunk): what the lens learns without a ViT.

The 3D lens has two tokenizers: ``pointbert`` (ViT-Lens's, into a Perceiver) and ``projection``
(`ProjectionTokenizer`: points on the ViT's patch grid, one token per patch, no Perceiver). With
``LensTrainConfig.patch_weight`` > 0 the lens tokens are also fitted to the pretrained ViT's patch
embeddings of the sample's own image (`PatchAnchored`), for every variant alike.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from omniclip.modalities.pointcloud.tokenizers import PointBertTokenizer, ProjectionTokenizer
from torch import nn
import torch.nn.functional as F

from omniclip.backbone import ClipBackbone, load_backbone
from omniclip.lens.perceiver import Perceiver
from omniclip.model import LensModel
from omniclip.trunk import ViTTrunk

VARIANTS = ("vit", "random_vit", "no_vit")


@dataclass(frozen=True)
class PerceiverConfig:
    """Sizes of the Perceiver (and of the tokens the modality's tokenizer feeds it)."""

    token_dim: int = 128
    depth: int = 1
    self_per_cross_attn: int = 1
    cross_dim_head: int = 64
    latent_dim_head: int = 32


@dataclass(frozen=True)
class LensConfig(PerceiverConfig):
    """Sizes of the point tokenizer and the Perceiver."""

    tokenizer: str = "pointbert"  # or "projection" (one token per ViT patch, no Perceiver)
    num_groups: int = 16
    group_size: int = 8
    encoder_dim: int = 128  # pointbert: mini-PointNet width; projection: per-patch MLP width


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

    Both demos pass the run's seed, which is their CLIP pretraining's ``init_seed``: this is then the
    very network the pretraining started from, so the control isolates what pretraining put into
    the ViT.
    """
    return load_backbone(like.name, None, init_seed=seed)


def assemble_lens(variant: str, backbone: ClipBackbone, cfg: PerceiverConfig, seed: int,
                  tokenizer: Callable[[ViTTrunk], nn.Module]) -> LensModel:
    """``tokenizer(trunk)`` -> Perceiver (latents = the trunk's patch positions) -> the trunk of
    ``variant`` (one of `VARIANTS`). The tokenizer and Perceiver weights are drawn from ``seed`` (in
    that order), so that all variants of one run start from the same lens."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown lens variant `{variant}` (one of: {', '.join(VARIANTS)})")
    source = random_backbone(backbone, seed) if variant == "random_vit" else backbone
    trunk = ViTTrunk(source.visual)
    num_latents = trunk.num_positions - 1
    torch.manual_seed(seed)
    tokens = tokenizer(trunk)
    if getattr(tokens, "num_tokens", None) == num_latents and tokens.out_dim == trunk.width:
        lens: nn.Module = PatchTokens(trunk.width, num_latents)  # already one trunk-wide token per patch
    else:
        lens = Perceiver(
            input_dim=cfg.token_dim, latent_dim=trunk.width, num_latents=num_latents, depth=cfg.depth,
            cross_dim_head=cfg.cross_dim_head, latent_heads=trunk.width // cfg.latent_dim_head,
            latent_dim_head=cfg.latent_dim_head, self_per_cross_attn=cfg.self_per_cross_attn,
        )
    head = PooledHead(trunk.width, trunk.embed_dim, num_latents) if variant == "no_vit" else trunk
    return LensModel(tokens, lens, head)


def build_lens(variant: str, backbone: ClipBackbone, cfg: LensConfig, seed: int) -> LensModel:
    """The 3D lens model for ``variant`` (see `assemble_lens`) with ``cfg.tokenizer``."""

    def tokenizer(trunk: ViTTrunk) -> nn.Module:
        if cfg.tokenizer == "projection":
            return ProjectionTokenizer(trunk.grid_size[0] * trunk.patch_size, trunk.patch_size, trunk.width,
                                       cfg.encoder_dim)
        if cfg.tokenizer == "pointbert":
            return PointBertTokenizer(cfg.num_groups, cfg.group_size, cfg.encoder_dim, cfg.token_dim, fps_start=None)
        raise ValueError(f"unknown demo tokenizer `{cfg.tokenizer}` (pointbert, projection)")

    return assemble_lens(variant, backbone, cfg, seed, tokenizer)


class PatchTokens(nn.Module):
    """The lens when the tokenizer already gives one trunk-wide token per patch position: none.

    It only states the sizes `LensModel` checks (``input_dim``, ``out_dim``, ``num_tokens``)."""

    def __init__(self, width: int, num_tokens: int) -> None:
        super().__init__()
        self.input_dim = self.out_dim = width
        self.num_tokens = num_tokens

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if mask is not None:
            raise ValueError("patch tokens take no mask: every patch position is a token")
        return tokens


class PatchEmbeddingFit(nn.Module):
    """The patch-embedding fit (`fit_tokens`' objective, `PatchAnchored`'s term): mean squared error of the tokens against ``teacher``'s patch
    embeddings of each sample's image, divided by the targets' mean square; with ``depth`` > 0 both
    are first carried through the teacher's first ``depth`` blocks (class token and positions
    added), so the fit is judged by what those blocks make of the tokens."""

    def __init__(self, teacher: ViTTrunk, depth: int = 0) -> None:
        super().__init__()
        if not 0 <= depth <= len(teacher.blocks):
            raise ValueError(f"token fit depth {depth} is not in 0..{len(teacher.blocks)} (the teacher's blocks)")
        self.teacher = teacher
        self.depth = depth

    def forward(self, tokens: torch.Tensor, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        if batch.get("images") is None:
            raise KeyError(f"patch anchoring needs each sample's `images`; batch keys: {sorted(batch)}")
        with torch.no_grad():
            target = self.teacher.patch_embed(batch["images"].to(tokens.device))
            if target.shape != tokens.shape:
                raise ValueError(f"lens tokens {list(tokens.shape)} cannot be anchored to patch embeddings "
                                 f"{list(target.shape)}: the lens must give one trunk-wide token per patch")
            if self.depth:
                target = self.teacher.forward_features(target, depth=self.depth)
        if self.depth:
            tokens = self.teacher.forward_features(tokens, depth=self.depth)
        mismatch = (tokens - target).pow(2).mean() / target.pow(2).mean()
        return mismatch, {"patch": mismatch.item()}


class PatchAnchored(nn.Module):
    """Training wrapper: ``model``'s embeddings, plus the fit of its lens tokens (what the trunk reads)
    to the pretrained ViT's patch embeddings of each sample's own image, as an auxiliary loss.

    The loss is ``weight`` x the mean squared error over tokens and channels divided by the targets'
    mean square (1 = a lens that outputs zeros). The target comes from the *pretrained* ``teacher``
    whichever trunk ``model`` has, so the controls get the same teaching and differ only in what
    reads the tokens. Returns ``(embeddings, {"patch": loss})``, the `Trainer`'s auxiliary-loss form.
    """

    def __init__(self, model: LensModel, teacher: ViTTrunk, weight: float) -> None:
        super().__init__()
        if weight <= 0:
            raise ValueError(f"patch anchoring weight must be > 0, got {weight}")
        self.model = model
        self.fit = PatchEmbeddingFit(teacher.requires_grad_(False))
        self.weight = weight

    def forward(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        model = self.model
        tokens = model.lens(model.tokenizer(batch["inputs"]))
        mismatch, _ = self.fit(tokens, batch)
        embeddings = F.normalize(model.trunk.forward_head(model.trunk.forward_features(tokens)), dim=-1)
        return embeddings, {"patch": self.weight * mismatch}

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        return self.model.trainable_state_dict()
