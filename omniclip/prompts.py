"""Learned prompts for frozen CLIP towers (ViFi-CLIP's bridge-and-prompt, IVLP style).

Vision: ``num_tokens`` learned tokens are appended after the patch tokens at the input of the
image tower and replaced by the next block's own tokens before each of blocks 1..depth-1
(`add_vision_prompts`, as `ViTTrunk` block hooks). Text: learned context vectors take the place
of a template's words ("a photo of a") in every class prompt, and deep context vectors replace
those positions before text blocks 1..depth-1 (`TextPrompts`); each prompt still ends where its
ids say. Only these tokens train; the towers stay frozen.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import nn

from omniclip.errors import ConfigError
from omniclip.text_trunk import TextTrunk
from omniclip.trunk import ViTTrunk


class PromptTokens(nn.Module):
    """Learned prompt tokens of one block of the image tower (ViFi-CLIP's bridge-and-prompt).

    A `ViTTrunk` block hook. Before the first block the prompts are appended after the patch
    tokens, through the tower's ``ln_pre`` (the reference appends them before it, and ln_pre is a
    per-token norm, so this is the same); before a later block they replace the last
    ``num_tokens`` positions. The class token is what the tower pools, so prompts only act
    through attention.
    """

    def __init__(self, width: int, num_tokens: int, append: bool, norm: nn.Module | None = None) -> None:
        super().__init__()
        if num_tokens < 1:
            raise ConfigError("model.vision_prompts.num_tokens", f"must be >= 1, got {num_tokens}")
        self.tokens = nn.Parameter(torch.empty(num_tokens, width).normal_(std=0.02))
        self.append = append
        self._norm = [norm]  # the tower's ln_pre: used, not owned (a submodule would duplicate its keys)

    def forward(self, x: torch.Tensor, **_: Any) -> torch.Tensor:
        prompts = self.tokens.to(x.dtype).expand(x.shape[0], -1, -1)
        if self.append:
            norm = self._norm[0]
            return torch.cat([x, norm(prompts) if norm is not None else prompts], dim=1)
        return torch.cat([x[:, : -self.tokens.shape[0]], prompts], dim=1)


def add_vision_prompts(trunk: ViTTrunk, num_tokens: int, depth: int) -> list[PromptTokens]:
    """Put learned prompts into the first ``depth`` blocks of ``trunk`` (block 0 appends them)."""
    if not 1 <= depth <= len(trunk.blocks):
        raise ConfigError("model.vision_prompts.depth", f"{depth} is outside [1, {len(trunk.blocks)}]")
    hooks = [PromptTokens(trunk.width, num_tokens, append=i == 0, norm=trunk.ln_pre if i == 0 else None)
             for i in range(depth)]
    for i, hook in enumerate(hooks):
        trunk.register_block_hook(i, hook)
    return hooks


class _ReplaceContext(nn.Module):
    """Text block hook: positions 1..n of every prompt become this block's context vectors."""

    def __init__(self, width: int, num_tokens: int) -> None:
        super().__init__()
        self.tokens = nn.Parameter(torch.empty(num_tokens, width).normal_(std=0.02))

    def forward(self, x: torch.Tensor, **_: Any) -> torch.Tensor:
        n = self.tokens.shape[0]
        return torch.cat([x[:, :1], self.tokens.to(x.dtype).expand(x.shape[0], -1, -1), x[:, 1 + n :]], dim=1)


class TextPrompts(nn.Module):
    """Learned text context for class prompts ``"<context> <class name>."``.

    Args:
        text: the (frozen) text trunk the prompts run through; deep prompts are hooked into it.
        tokenizer: the CLIP tokenizer (list of strings -> ids [N, C]).
        init: words whose embeddings initialise the context ("a photo of a"); their token count
            is the number of context vectors.
        depth: prompted text blocks (1 = the input only).
    """

    def __init__(self, text: TextTrunk, tokenizer: Callable[[list[str]], torch.Tensor], init: str = "a photo of a",
                 depth: int = 1) -> None:
        super().__init__()
        if not 1 <= depth <= len(text.blocks):
            raise ConfigError("model.text_prompts.depth", f"{depth} is outside [1, {len(text.blocks)}]")
        ids = tokenizer([init])[0]
        num_tokens = int(ids.argmax()) - 1  # between the start token and the end-of-text token
        if num_tokens < 1:
            raise ConfigError("model.text_prompts.init", f"`{init}` has no words to initialise the context from")
        with torch.no_grad():
            context = text.embed(ids[None].to(text.positional_embedding.device))[0, 1 : 1 + num_tokens]
        self.context = nn.Parameter(context.detach().clone())
        self.init = init
        self.tokenizer = tokenizer
        self._text = [text]  # used, not owned: the tower's weights belong to the model
        # keyed by the text block each one enters, as the published checkpoints number them
        self.deep = nn.ModuleDict({str(i): _ReplaceContext(text.width, num_tokens) for i in range(1, depth)})
        for index, hook in self.deep.items():
            text.register_block_hook(int(index), hook)

    @property
    def num_tokens(self) -> int:
        return int(self.context.shape[0])

    def class_embeddings(self, class_names: Sequence[str]) -> torch.Tensor:
        """Un-normalised text embeddings [C, E] of ``"<context> <name>."`` for every class."""
        text = self._text[0]
        ids = self.tokenizer([f"{self.init} {name.replace('_', ' ')}." for name in class_names])
        ids = ids.to(self.context.device)
        words = text.embed(ids)
        context = self.context.to(words.dtype).expand(len(class_names), -1, -1)
        embeddings = torch.cat([words[:, :1], context, words[:, 1 + self.num_tokens :]], dim=1)
        return text(ids, embeddings)


__all__ = ["PromptTokens", "add_vision_prompts", "TextPrompts"]
