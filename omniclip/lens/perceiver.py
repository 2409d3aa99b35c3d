"""Perceiver resampler lens (ViT-Lens).

A fixed set of learned latents reads an arbitrary-length token sequence through cross-attention,
then refines itself with self-attention; the latents become the token sequence the frozen ViT
reads. Module names follow the ViT-Lens checkpoints so that they load with a prefix change only:

    latents
    layers.{i}.0        cross-attention   (norm, norm_context, fn.to_q, fn.to_kv, fn.to_out)
    layers.{i}.1        feed-forward      (norm, fn.net.0, fn.net.2)
    layers.{i}.2.{j}.0  self-attention    (norm, fn.to_q, fn.to_kv, fn.to_out)
    layers.{i}.2.{j}.1  feed-forward
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from omniclip.errors import ConfigError


class PreNorm(nn.Module):
    """LayerNorm on the input (and on the context for cross-attention), then ``fn``."""

    def __init__(self, dim: int, fn: nn.Module, context_dim: int | None = None) -> None:
        super().__init__()
        self.fn = fn
        self.norm = nn.LayerNorm(dim)
        self.norm_context = nn.LayerNorm(context_dim) if context_dim is not None else None

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
        x = self.norm(x)
        if self.norm_context is not None:
            return self.fn(x, context=self.norm_context(context), **kwargs)
        return self.fn(x, **kwargs)


class GEGLU(nn.Module):
    """Split the last dim in halves (a, g) and return a * gelu(g) (exact erf gelu)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = x.chunk(2, dim=-1)
        return value * F.gelu(gate)


class FeedForward(nn.Module):
    def __init__(self, dim: int, mult: int = 4, dropout: float = 0.0) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(dim, dim * mult * 2), GEGLU(), nn.Linear(dim * mult, dim), nn.Dropout(dropout)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Attention(nn.Module):
    """Multi-head attention through `scaled_dot_product_attention` (flash / memory-efficient).

    Heads are contiguous ``dim_head`` slices of the projections; k and v are the first and second
    halves of ``to_kv``'s output; scale ``dim_head ** -0.5``.
    """

    def __init__(
        self, query_dim: int, context_dim: int | None = None, heads: int = 8, dim_head: int = 64, dropout: float = 0.0
    ) -> None:
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.dim_head = dim_head
        self.dropout = dropout
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_kv = nn.Linear(context_dim or query_dim, inner * 2, bias=False)
        self.to_out = nn.Linear(inner, query_dim)

    def forward(
        self, x: torch.Tensor, context: torch.Tensor | None = None, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        context = x if context is None else context
        q = self.to_q(x)
        k, v = self.to_kv(context).chunk(2, dim=-1)
        q, k, v = (t.unflatten(-1, (self.heads, self.dim_head)).transpose(1, 2) for t in (q, k, v))
        attn_mask = mask[:, None, None, :] if mask is not None else None  # True = attend
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=self.dropout if self.training else 0.0
        )
        return self.to_out(out.transpose(1, 2).flatten(2))


class Perceiver(nn.Module):
    """Perceiver resampler: ``depth`` x (cross-attn + FF + ``self_per_cross_attn`` x (self-attn + FF)).

    Args:
        input_dim: width of the incoming tokens (context).
        latent_dim: width of the latents = width of the trunk they feed.
        num_latents: number of output tokens.
        weight_tie_layers: layers 1..depth-1 share one set of weights (layer 0 has its own),
            as in the reference Perceiver.
    """

    def __init__(
        self,
        input_dim: int,
        latent_dim: int,
        num_latents: int,
        depth: int,
        cross_heads: int = 1,
        cross_dim_head: int = 64,
        latent_heads: int = 8,
        latent_dim_head: int = 64,
        self_per_cross_attn: int = 1,
        weight_tie_layers: bool = False,
        attn_dropout: float = 0.0,
        ff_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        sizes = {"input_dim": input_dim, "latent_dim": latent_dim, "num_latents": num_latents, "depth": depth,
                 "cross_heads": cross_heads, "cross_dim_head": cross_dim_head, "latent_heads": latent_heads,
                 "latent_dim_head": latent_dim_head}
        for key, value in sizes.items():  # a zero-sized attention aborts the process inside SDPA
            if int(value) < 1:
                raise ConfigError(f"lens.{key}", f"must be >= 1, got {value}")
        self.input_dim = input_dim
        self.latent_dim = latent_dim
        self.num_latents = num_latents
        self.latents = nn.Parameter(torch.randn(num_latents, latent_dim))

        def make_layer() -> nn.ModuleList:
            cross = PreNorm(
                latent_dim,
                Attention(latent_dim, input_dim, heads=cross_heads, dim_head=cross_dim_head, dropout=attn_dropout),
                context_dim=input_dim,
            )
            selfs = nn.ModuleList(
                nn.ModuleList(
                    [
                        PreNorm(latent_dim, Attention(latent_dim, heads=latent_heads, dim_head=latent_dim_head, dropout=attn_dropout)),
                        PreNorm(latent_dim, FeedForward(latent_dim, dropout=ff_dropout)),
                    ]
                )
                for _ in range(self_per_cross_attn)
            )
            return nn.ModuleList([cross, PreNorm(latent_dim, FeedForward(latent_dim, dropout=ff_dropout)), selfs])

        layers = [make_layer()]
        if depth > 1:
            tied = make_layer() if weight_tie_layers else None
            layers += [tied if tied is not None else make_layer() for _ in range(depth - 1)]
        self.layers = nn.ModuleList(layers)

    @property
    def out_dim(self) -> int:
        return self.latent_dim

    @property
    def num_tokens(self) -> int:
        return self.num_latents

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """tokens [B, N, input_dim] (mask [B, N], True = real token) -> latents [B, L, latent_dim]."""
        x = self.latents.to(tokens.dtype).expand(tokens.shape[0], -1, -1)
        for cross_attn, cross_ff, self_blocks in self.layers:
            x = x + cross_attn(x, context=tokens, mask=mask)
            x = x + cross_ff(x)
            for self_attn, self_ff in self_blocks:
                x = x + self_attn(x)
                x = x + self_ff(x)
        return x


class IdentityLens(nn.Module):
    """No resampling: the tokenizer's tokens go to the trunk as they are (widths must match)."""

    def __init__(self, input_dim: int, num_tokens: int | None = None) -> None:
        super().__init__()
        self.input_dim = input_dim
        self._num_tokens = num_tokens

    @property
    def out_dim(self) -> int:
        return self.input_dim

    @property
    def num_tokens(self) -> int | None:
        return self._num_tokens

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return tokens
