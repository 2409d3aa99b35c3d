"""Video in CLIP space: frames through the image tower, frame embeddings pooled over time.

ViFi-CLIP's recipe: every frame of a clip ``[B, T, 3, H, W]`` goes through CLIP's image tower as
one image of a batch of ``B*T`` (`omniclip.trunk.ViTTrunk.forward_image`, so ``encode_image`` per
frame), the ``T`` frame embeddings are averaged, and the video embedding is compared with class
prompts through the text tower (`omniclip.text_trunk.TextTrunk`) by cosine similarity times
CLIP's logit scale. Per-block modules inside the image tower (vision prompts here; ILA's frame
alignment) are `ViTTrunk` block hooks (`omniclip.prompts`); the temporal pooling is a module of its own so a learned
pooling (ILA's MIT) can take its place.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from omniclip.errors import ConfigError
from omniclip.text_trunk import TextTrunk
from omniclip.trunk import ViTTrunk


class TemporalMean(nn.Module):
    """Frame embeddings [B, T, E] -> their mean [B, E] (ViFi-CLIP)."""

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return frames.mean(dim=1)


class VideoClipModel(nn.Module):
    """Frames -> per-frame CLIP image embeddings -> temporal pooling -> normalised video embedding.

    Args:
        trunk: the image tower (frozen, unlocked or fully trainable as built).
        text: the text tower, when the text side is part of the model (it trains or holds prompts).
        temporal: pools [B, T, E] to [B, E]; `TemporalMean` by default.
    """

    def __init__(self, trunk: ViTTrunk, text: TextTrunk | None = None, temporal: nn.Module | None = None) -> None:
        super().__init__()
        self.trunk = trunk
        self.text = text
        self.temporal = temporal if temporal is not None else TemporalMean()

    def encode_frames(self, frames: torch.Tensor, **hook_kwargs: Any) -> torch.Tensor:
        """Clips [B, T, 3, H, W] -> frame embeddings [B, T, E] (not normalised)."""
        if frames.ndim != 5:
            raise ValueError(f"expected clips [B, T, 3, H, W], got shape {tuple(frames.shape)}")
        batch, steps = frames.shape[:2]
        embeddings = self.trunk.forward_image(frames.flatten(0, 1), **hook_kwargs)
        return embeddings.view(batch, steps, -1)

    def encode(self, frames: torch.Tensor, normalize: bool = True, **hook_kwargs: Any) -> torch.Tensor:
        """Clips [B, T, 3, H, W] -> video embeddings [B, E]."""
        video = self.temporal(self.encode_frames(frames, **hook_kwargs))
        return F.normalize(video, dim=-1) if normalize else video

    def encode_text(self, ids: torch.Tensor, embeddings: torch.Tensor | None = None,
                    normalize: bool = True) -> torch.Tensor:
        """Prompts through the model's own text tower (see `TextTrunk.forward`)."""
        if self.text is None:
            raise ConfigError("model.text", "this video model has no text tower of its own: its class "
                              "embeddings come from the frozen CLIP text tower (the anchor cache)")
        features = self.text(ids, embeddings)
        return F.normalize(features, dim=-1) if normalize else features

    def forward(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """Batch dict with ``inputs`` [B, T, 3, H, W] -> normalised video embeddings [B, E]."""
        return self.encode(batch["inputs"])

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.trunk.set_grad_checkpointing(enable)
        if self.text is not None:
            self.text.set_grad_checkpointing(enable)

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Every trainable parameter by name (the towers hold no running statistics)."""
        return {name: p.detach() for name, p in self.named_parameters() if p.requires_grad}


__all__ = ["TemporalMean", "VideoClipModel"]
