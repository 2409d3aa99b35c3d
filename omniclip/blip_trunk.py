"""The vision tower of a BLIP-family model (InstructBLIP, BLIP-2) as a lens trunk.

InstructBLIP's Q-Former reads the post-LayerNorm hidden states of its own vision tower (EVA
ViT-g, 1408 wide, in the published checkpoints), so a lens whose output an InstructBLIP head is to
read must be trained into that tower, not into a CLIP ViT. `BlipVisionTrunk` gives the tower the
`ViTTrunk` interface (images or token sequences, skip / unlock / checkpoint / per-block hooks,
frozen parts in eval mode), so the lens model, the trainer and zero-shot code drive it unchanged.

Differences from an open_clip ViT, taken from the tower itself: no pre-LayerNorm, no projection
(the embedding is the normalised class token, as wide as the tower, unless ``projection_dim``
adds a trained one), and the positional table is stored as ``[1, 1 + H*W, D]``.
"""

from __future__ import annotations

import torch
from torch import nn

from omniclip.errors import ConfigError
from omniclip.trunk import ViTTrunk, interpolate_positions, maybe_copy, select_blocks


class BlipVisionTrunk(ViTTrunk):
    """A transformers ``InstructBlipVisionModel`` / ``Blip2VisionModel`` read as a `ViTTrunk`.

    Frozen parameters are shared with ``vision_model``; unlocked ones are copied, so training a
    lens never changes the tower the head was trained with. The forward machinery (hooks,
    checkpointing, token checks) is `ViTTrunk`'s; only the embedding and the head differ.

    Args mirror `ViTTrunk`: ``skip_blocks``, ``unlocked_blocks``, ``unlock_class_token``,
    ``unlock_positional_embedding``, ``interpolate_positions``; and ``projection_dim``: a trained
    projection of the class token into an anchor space of that width (None: none).
    """

    def __init__(
        self,
        vision_model: nn.Module,
        skip_blocks: int = 0,
        unlocked_blocks: int = 0,
        unlock_class_token: bool = False,
        unlock_positional_embedding: bool = False,
        interpolate_positions: bool = False,
        projection_dim: int | None = None,
    ) -> None:
        nn.Module.__init__(self)  # ViTTrunk's constructor reads an open_clip tower
        embeddings = getattr(vision_model, "embeddings", None)
        needed = ("patch_embedding", "class_embedding", "position_embedding")
        if embeddings is None or not all(hasattr(embeddings, n) for n in needed) or not hasattr(vision_model, "post_layernorm"):
            raise ConfigError("backbone", f"{type(vision_model).__name__} is not a BLIP-family vision model "
                              "(embeddings.patch_embedding / class_embedding / position_embedding, encoder.layers, "
                              "post_layernorm)")
        self.conv1 = embeddings.patch_embedding
        self.class_embedding = maybe_copy(embeddings.class_embedding, unlock_class_token)  # [1, 1, D]
        self.positional_embedding = maybe_copy(embeddings.position_embedding, unlock_positional_embedding)  # [1, 1+N, D]
        self.blocks = nn.ModuleList(select_blocks(list(vision_model.encoder.layers), skip_blocks, unlocked_blocks))
        self.ln_post = vision_model.post_layernorm
        self.ln_pre = nn.Identity()
        width = int(embeddings.class_embedding.shape[-1])
        # The tower has no projection; a lens aligned to another model's space (EVA-g, 1408 wide,
        # against bigG's 1280-d anchors) trains one, as ViT-Lens did (`eva_vit_proj`). The Q-Former
        # never reads it: it reads the post-LayerNorm tokens.
        self.proj = None if projection_dim is None else nn.Parameter(width ** -0.5 * torch.randn(width, int(projection_dim)))
        self.patch_size = int(embeddings.patch_size)
        self.image_size = int(embeddings.image_size)
        side = self.image_size // self.patch_size
        self.grid_size = (side, side)
        self.pool_type = "tok"
        self.final_ln_after_pool = False
        self.skip_blocks = skip_blocks
        self.unlocked_blocks = unlocked_blocks
        self.allow_interpolation = interpolate_positions
        self.grad_checkpointing = False
        self.block_hooks = nn.ModuleDict()
        self._set_trainable(unlock_class_token, unlock_positional_embedding)
        self._init_frozen_dtype(vision_model)
        if self.proj is not None:
            self.proj.requires_grad_(True)  # new, so it always trains

    @property
    def num_positions(self) -> int:
        return int(self.positional_embedding.shape[1])

    def embed_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Prepend the class token and add positions: [B, L, D] -> [B, 1+L, D] (no pre-norm)."""
        batch, num_tokens, width = tokens.shape
        if width != self.width:
            raise ValueError(f"tokens have width {width}, the trunk expects {self.width}")
        self.check_num_tokens(num_tokens)
        pos = self.positional_embedding[0]
        if num_tokens != self.num_positions - 1:
            pos = interpolate_positions(pos, self.grid_size, num_tokens)
        cls = self.class_embedding.to(tokens.dtype).expand(batch, 1, width)
        return torch.cat([cls, tokens], dim=1) + pos.to(tokens.dtype)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """Block outputs [B, 1+L, D] -> the normalised class token [B, D], times the trained
        projection [D, E] when the trunk has one (``projection_dim``)."""
        pooled = self.ln_post(self._into(self.ln_post, features[:, 0]))
        return self._project(pooled)

    def train(self, mode: bool = True) -> "BlipVisionTrunk":
        nn.Module.train(self, mode)
        for module in (self.ln_post, self.conv1, *self.blocks[self.unlocked_blocks :]):
            module.eval()
        return self


__all__ = ["BlipVisionTrunk"]
