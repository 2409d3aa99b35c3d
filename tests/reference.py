"""Independent reference computations shared by tests: written from the published layouts and
the papers' formulas, never by calling the modules under test."""

from __future__ import annotations

import math
from typing import Any, Mapping

import torch
import torch.nn.functional as F

from omniclip.convert import get_converter


def reference_perceiver(s: Mapping[str, torch.Tensor], tokens: torch.Tensor, cfg: Mapping[str, Any]) -> torch.Tensor:
    """ViT-Lens Perceiver forward from the raw state dict ``s`` (``latents``, ``layers.*``).

    ``cfg``: depth, cross_dim_head, latent_heads, latent_dim_head, optional cross_heads (1) and
    self_per_cross_attn (1). Attention per head with an explicit softmax; GEGLU with exact gelu.
    """

    def ln(x: torch.Tensor, name: str) -> torch.Tensor:
        return F.layer_norm(x, x.shape[-1:], s[f"{name}.weight"], s[f"{name}.bias"])

    def attention(x: torch.Tensor, ctx: torch.Tensor, prefix: str, heads: int, dim_head: int) -> torch.Tensor:
        q = x @ s[f"{prefix}.fn.to_q.weight"].T
        kv = ctx @ s[f"{prefix}.fn.to_kv.weight"].T
        k, v = kv[..., : heads * dim_head], kv[..., heads * dim_head:]
        outs = []
        for h in range(heads):
            sl = slice(h * dim_head, (h + 1) * dim_head)
            weights = torch.softmax(q[..., sl] @ k[..., sl].transpose(-1, -2) / math.sqrt(dim_head), dim=-1)
            outs.append(weights @ v[..., sl])
        return torch.cat(outs, -1) @ s[f"{prefix}.fn.to_out.weight"].T + s[f"{prefix}.fn.to_out.bias"]

    def ff(x: torch.Tensor, prefix: str) -> torch.Tensor:
        h = ln(x, f"{prefix}.norm") @ s[f"{prefix}.fn.net.0.weight"].T + s[f"{prefix}.fn.net.0.bias"]
        a, g = h.chunk(2, -1)
        gelu = 0.5 * g * (1 + torch.erf(g / math.sqrt(2)))
        return (a * gelu) @ s[f"{prefix}.fn.net.2.weight"].T + s[f"{prefix}.fn.net.2.bias"]

    cross = (int(cfg.get("cross_heads", 1)), int(cfg["cross_dim_head"]))
    latent = (int(cfg["latent_heads"]), int(cfg["latent_dim_head"]))
    x = s["latents"].expand(tokens.shape[0], -1, -1)
    for i in range(int(cfg["depth"])):
        p = f"layers.{i}.0"
        x = x + attention(ln(x, f"{p}.norm"), ln(tokens, f"{p}.norm_context"), p, *cross)
        x = x + ff(x, f"layers.{i}.1")
        for j in range(int(cfg.get("self_per_cross_attn", 1))):
            p = f"layers.{i}.2.{j}.0"
            normed = ln(x, f"{p}.norm")
            x = x + attention(normed, normed, p, *latent)
            x = x + ff(x, f"layers.{i}.2.{j}.1")
    return x


def perceiver_reference_keys(ctx: int, dim: int, latents: int, depth: int, cross_inner: int, self_inner: int,
                             self_per_cross: int = 1) -> dict[str, tuple]:
    """ViT-Lens `Perceiver` (no Fourier features, no classifier head) names and shapes."""
    keys: dict[str, tuple] = {"latents": (latents, dim)}

    def ff(prefix: str) -> None:
        keys.update({f"{prefix}.norm.weight": (dim,), f"{prefix}.norm.bias": (dim,),
                     f"{prefix}.fn.net.0.weight": (8 * dim, dim), f"{prefix}.fn.net.0.bias": (8 * dim,),
                     f"{prefix}.fn.net.2.weight": (dim, 4 * dim), f"{prefix}.fn.net.2.bias": (dim,)})

    def attn(prefix: str, inner: int, context: int) -> None:
        keys.update({f"{prefix}.norm.weight": (dim,), f"{prefix}.norm.bias": (dim,),
                     f"{prefix}.fn.to_q.weight": (inner, dim), f"{prefix}.fn.to_kv.weight": (2 * inner, context),
                     f"{prefix}.fn.to_out.weight": (dim, inner), f"{prefix}.fn.to_out.bias": (dim,)})

    for i in range(depth):
        attn(f"layers.{i}.0", cross_inner, ctx)
        keys.update({f"layers.{i}.0.norm_context.weight": (ctx,), f"layers.{i}.0.norm_context.bias": (ctx,)})
        ff(f"layers.{i}.1")
        for j in range(self_per_cross):
            attn(f"layers.{i}.2.{j}.0", self_inner, dim)
            ff(f"layers.{i}.2.{j}.1")
    return keys


def vitlens_three_tower_keys(clip: torch.nn.Module, tokenizer: dict, lens: dict) -> dict[str, tuple]:
    """Every key of a ViT-Lens 3D checkpoint: 3D tower (no conv1), image tower, text tower."""
    state = {k: tuple(v.shape) for k, v in clip.state_dict().items()}
    keys = {f"visual.visual_adapter.{k}": s for k, s in tokenizer.items()}
    keys.update({f"visual.perceiver.{k}": s for k, s in lens.items()})
    keys.update({k: s for k, s in state.items() if k.startswith("visual.") and not k.startswith("visual.conv1")})
    keys.update({f"image.{k[len('visual.'):]}": s for k, s in state.items() if k.startswith("visual.")})
    keys.update({k: s for k, s in state.items() if not k.startswith("visual.")})
    return keys


def mapped_shapes(name: str, keys: dict[str, tuple]) -> dict[str, tuple]:
    converter = get_converter(name)
    mapped, unmatched = converter.keymap.apply({k: torch.empty(s, device="meta") for k, s in keys.items()})
    assert unmatched == []
    return {k: tuple(v.shape) for k, v in mapped.items()}


def cubic_resample_matrix(n_in: int, n_out: int, a: float = -0.75) -> torch.Tensor:
    """[n_out, n_in] matrix of 1D cubic-convolution weights (Keys, a = -0.75), half-pixel
    centres (``align_corners=False``), border samples repeated: written from the formula."""

    def kernel(x: float) -> float:
        x = abs(x)
        if x <= 1:
            return (a + 2) * x ** 3 - (a + 3) * x ** 2 + 1
        if x < 2:
            return a * x ** 3 - 5 * a * x ** 2 + 8 * a * x - 4 * a
        return 0.0

    m = torch.zeros(n_out, n_in, dtype=torch.float64)
    for o in range(n_out):
        src = (o + 0.5) * n_in / n_out - 0.5
        base = math.floor(src)
        for k in range(base - 1, base + 3):
            m[o, min(max(k, 0), n_in - 1)] += kernel(src - k)
    return m


def reference_resample_positions(pos: torch.Tensor, grid: tuple[int, int], side: int) -> torch.Tensor:
    """A [1 + H*W, D] table (row 1 + i*W + j holds grid cell (i, j)) resampled to a side x side
    grid: separable cubic along rows (H) and columns (W), class row kept."""
    h, w = grid
    table = pos[1:].double().reshape(h, w, -1)
    rows = cubic_resample_matrix(h, side)   # [side, H]
    cols = cubic_resample_matrix(w, side)   # [side, W]
    out = torch.einsum("ai,bj,ijd->abd", rows, cols, table).reshape(side * side, -1)
    return torch.cat([pos[:1].double(), out]).to(pos.dtype)
