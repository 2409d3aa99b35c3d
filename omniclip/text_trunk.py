"""CLIP's text tower as a trainable trunk: token ids or token embeddings in, pooled embedding out.

Video models train the text side (ViFi-CLIP fine-tunes it; bridge-and-prompt learns context
vectors in place of a template's words and deep prompts inside the first blocks), so the text
tower needs the same entry points as `omniclip.trunk.ViTTrunk` has for images:

* ``forward(ids)`` equals open_clip's ``encode_text`` (un-normalised);
* ``forward(ids, embeddings=...)`` runs token *embeddings* the caller built (learned context
  vectors spliced into a prompt's word embeddings), still pooling at each prompt's end-of-text
  position, which is found from the ids;
* per-block hooks (``register_block_hook``) see and may replace the sequence before a block, which
  is how deep prompts replace their positions.

As in `ViTTrunk`, frozen parameters are shared with the CLIP model and unlocked blocks are copied,
so training never changes the tower that produced cached anchors.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from omniclip.errors import ConfigError
from omniclip.trunk import maybe_copy


class TextTrunk(nn.Module):
    """The text transformer of an open_clip ``CLIP`` model.

    Args:
        clip_model: an open_clip ``CLIP`` (``token_embedding``, ``positional_embedding``,
            ``transformer``, ``ln_final``, ``text_projection``, ``attn_mask``).
        unlocked_blocks: train the first n blocks (copied); ``-1`` trains the whole tower,
            embeddings, final norm and projection included (ViFi-CLIP's full fine-tune).
    """

    def __init__(self, clip_model: nn.Module, unlocked_blocks: int = 0) -> None:
        super().__init__()
        needed = ("token_embedding", "positional_embedding", "transformer", "ln_final", "text_projection")
        missing = [n for n in needed if not hasattr(clip_model, n)]
        if missing:
            raise ConfigError("backbone", f"{type(clip_model).__name__} has no text tower the text trunk can read "
                              f"(missing {missing})")
        pool = getattr(clip_model, "text_pool_type", "argmax")
        if pool != "argmax":
            raise ConfigError("backbone", f"text pooling `{pool}` is not supported (the trunk pools at the "
                              "end-of-text token, open_clip's `argmax`)")
        blocks = list(clip_model.transformer.resblocks)
        whole = unlocked_blocks == -1
        count = len(blocks) if whole else unlocked_blocks
        if not 0 <= count <= len(blocks):
            raise ConfigError("text_trunk.unlocked_blocks", f"{unlocked_blocks} is outside [-1, {len(blocks)}]")
        parts = {name: getattr(clip_model, name) for name in ("token_embedding", "ln_final")}
        self.token_embedding = copy.deepcopy(parts["token_embedding"]) if whole else parts["token_embedding"]
        self.ln_final = copy.deepcopy(parts["ln_final"]) if whole else parts["ln_final"]
        self.positional_embedding = maybe_copy(clip_model.positional_embedding, whole)
        projection = clip_model.text_projection
        if isinstance(projection, nn.Linear):
            self.text_projection = copy.deepcopy(projection) if whole else projection
        else:
            self.text_projection = maybe_copy(projection, whole)
        self.blocks = nn.ModuleList([copy.deepcopy(b) if i < count else b for i, b in enumerate(blocks)])
        self.register_buffer("attn_mask", clip_model.attn_mask.detach().clone(), persistent=False)
        self.unlocked_blocks = count
        self.whole = whole
        self.grad_checkpointing = False
        #: Modules run before block i (key str(i)): ``hook(x, **hook_kwargs) -> x`` (deep prompts).
        self.block_hooks = nn.ModuleDict()
        for p in self.parameters():
            p.requires_grad_(whole)
        for block in self.blocks[:count]:
            block.requires_grad_(True)

    @property
    def width(self) -> int:
        return int(self.positional_embedding.shape[-1])

    @property
    def context_length(self) -> int:
        return int(self.positional_embedding.shape[0])

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def register_block_hook(self, index: int, hook: nn.Module) -> None:
        if not 0 <= index < len(self.blocks):
            raise IndexError(f"block {index} does not exist (the text trunk runs {len(self.blocks)} blocks)")
        self.block_hooks[str(index)] = hook

    def train(self, mode: bool = True) -> "TextTrunk":
        """Trainable parts follow ``mode``; frozen blocks stay in eval mode."""
        super().train(mode)
        if not self.whole:
            for module in (self.ln_final, *self.blocks[self.unlocked_blocks :]):
                module.eval()
        return self

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """Word embeddings of ``ids`` [N, C] -> [N, C, W] (positions not yet added)."""
        return self.token_embedding(ids)

    def forward(self, ids: torch.Tensor, embeddings: torch.Tensor | None = None, **hook_kwargs: Any) -> torch.Tensor:
        """Prompts [N, C] (ids; their end-of-text token is the largest id) -> embeddings [N, E].

        ``embeddings`` [N, C, W], when given, replaces ``embed(ids)`` (learned context vectors);
        the ids still say where each prompt ends.
        """
        x = self.embed(ids) if embeddings is None else embeddings
        if x.shape[1] != self.context_length:
            raise ValueError(f"prompts have {x.shape[1]} positions, the text tower {self.context_length}")
        x = x + self.positional_embedding.to(x.dtype)
        mask = self.attn_mask.to(x.dtype) if self.attn_mask.is_floating_point() else self.attn_mask
        for index, block in enumerate(self.blocks):
            key = str(index)
            if key in self.block_hooks:
                x = self.block_hooks[key](x, **hook_kwargs)
            if self.grad_checkpointing and torch.is_grad_enabled() and x.requires_grad:
                x = checkpoint(block, x, None, None, mask, use_reentrant=False)
            else:
                x = block(x, attn_mask=mask)
        x = self.ln_final(x)
        pooled = x[torch.arange(x.shape[0], device=x.device), ids.argmax(dim=-1)]
        if isinstance(self.text_projection, nn.Linear):
            return self.text_projection(pooled)
        return pooled @ self.text_projection


__all__ = ["TextTrunk"]
