"""Analytic FLOPs of one lens training step, per sample, read from the shapes of a built model.

Model FLOP utilisation (MFU) compares the FLOPs a step *must* do with what the device could do
in the same time. This module gives the first number for a `omniclip.model.LensModel`
(tokenizer -> Perceiver lens -> frozen ViT trunk -> projection), taking every size from the
modules as built (``nn.Linear`` / conv shapes, heads, latents, the blocks the trunk runs), so a
recipe's model and its count cannot drift apart.

Convention (the one ``torch.utils.flop_counter.FlopCounterMode`` uses, so the two can be
checked against each other; tests/test_flops.py does):

* Only matrix products count, at 2*m*n*k each (one multiply and one add per term): linear
  layers, convolutions (2 x output positions x out channels x in channels x kernel size), the
  ViT's QKV / output projection / MLP, and attention's two products, scores q.k^T and the
  weighted sum of v, 2*Lq*Lk*inner each (inner = heads x head width). Biases, norms,
  activations, softmax, residual adds, max-pooling, FPS / kNN grouping, positional
  interpolation and the loss are not counted (elementwise or O(m*n): well under 1% here; the
  loss's logits are 2*B*E per sample and anchor kind, batch-dependent and < 0.01%).
* Backward: a product's backward is one product of the same size for each operand whose
  gradient autograd computes: the activation operand when anything upstream trains, the weight
  when it trains. So a trainable layer fed by trainable layers costs 3x its forward (forward +
  input gradient + weight gradient: PaLM's 6N FLOPs per token for N trained parameters), a
  frozen layer that gradients pass through 2x (forward + input gradient, no weight gradient:
  about 4N per token, the frozen trunk), the first trainable layer (its input is data) 2x,
  and attention's products (two activation operands) 3x when gradients flow.
* Model FLOPs, not hardware FLOPs: what gradient checkpointing recomputes, what a fused
  attention backward recomputes, and the anchor towers run when the anchor cache is off are
  work the step does but does not need, so they are left out; MFU then shows what they cost.

Every number is per sample: each counted product scales with the batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn

PARTS = ("tokenizer", "lens", "trunk")


@dataclass(frozen=True)
class Product:
    """One matrix product of the step: its forward FLOPs per sample and how many of its two
    operands get a gradient in the backward (0, 1 or 2)."""

    name: str
    part: str
    forward: int
    grads: int

    @property
    def backward(self) -> int:
        return self.forward * self.grads


@dataclass(frozen=True)
class StepFlops:
    """The products of one lens training step, per sample; sums by part (tokenizer, lens, trunk)."""

    products: tuple[Product, ...]

    def forward(self, part: str | None = None) -> int:
        return sum(p.forward for p in self.products if part in (None, p.part))

    def backward(self, part: str | None = None) -> int:
        return sum(p.backward for p in self.products if part in (None, p.part))

    def total(self, part: str | None = None) -> int:
        """Forward + backward: the model FLOPs of one training step, per sample."""
        return self.forward(part) + self.backward(part)

    def as_dict(self) -> dict[str, dict[str, int]]:
        """``{part or "step": {"forward", "backward", "total"}}``, for JSON reports."""
        return {name: {"forward": self.forward(part), "backward": self.backward(part), "total": self.total(part)}
                for name, part in [(p, p) for p in PARTS] + [("step", None)]}


def _trains(module: nn.Module) -> bool:
    return any(p.requires_grad for p in module.parameters())


class _Tally:
    """Collects products; each method returns whether its output needs a gradient."""

    def __init__(self) -> None:
        self.products: list[Product] = []

    def add(self, name: str, part: str, flops: int, grads: int) -> None:
        self.products.append(Product(name, part, int(flops), int(grads)))

    def layer(self, name: str, part: str, positions: int, layer: nn.Module, input_grad: bool) -> bool:
        """A linear layer or convolution applied at ``positions`` output positions."""
        weight = layer.weight  # Linear [out, in]; conv [out, in / groups, *kernel]
        per_position = weight.numel()
        self.add(name, part, 2 * positions * per_position, int(input_grad) + int(weight.requires_grad))
        return input_grad or _trains(layer)

    def attention(self, name: str, part: str, q_len: int, kv_len: int, inner: int, q_grad: bool,
                  kv_grad: bool) -> bool:
        """Scores q.k^T and the weighted sum of v (k and v come from the same tokens)."""
        flops = 2 * q_len * kv_len * inner
        self.add(f"{name}.scores", part, flops, int(q_grad) + int(kv_grad))
        self.add(f"{name}.weighted_sum", part, flops, int(q_grad or kv_grad) + int(kv_grad))
        return q_grad or kv_grad


# ------------------------------------------------------------------------------ tokenizers
# Keyed by class name, so the core imports no modality code; a modality with another tokenizer
# adds its function here (or to TOKENIZER_FLOPS at import time).
TokenizerFlops = Callable[[_Tally, nn.Module], tuple[int, bool]]


def _pointbert(tally: _Tally, tok: nn.Module) -> tuple[int, bool]:
    """Point-BERT: mini-PointNet over num_groups x group_size points, reduce_dim, position MLP."""
    groups, points = int(tok.num_groups), int(tok.group_size)
    first, second = tok.encoder.first_conv, tok.encoder.second_conv
    x = tally.layer("tokenizer.encoder.first_conv.0", "tokenizer", groups * points, first[0], False)
    x = tally.layer("tokenizer.encoder.first_conv.3", "tokenizer", groups * points, first[3], x or _trains(first[1]))
    x = tally.layer("tokenizer.encoder.second_conv.0", "tokenizer", groups * points, second[0], x)
    x = tally.layer("tokenizer.encoder.second_conv.3", "tokenizer", groups * points, second[3], x or _trains(second[1]))
    x = tally.layer("tokenizer.reduce_dim", "tokenizer", groups, tok.reduce_dim, x)
    pos = tally.layer("tokenizer.pos_embed.0", "tokenizer", groups, tok.pos_embed[0], False)
    pos = tally.layer("tokenizer.pos_embed.2", "tokenizer", groups, tok.pos_embed[2], pos)
    return groups, x or pos


def _pointnet2(tally: _Tally, tok: nn.Module) -> tuple[int, bool]:
    """PointNet++ set abstraction (1x1 convs over num_groups x group_size), then the lift conv."""
    groups, points = int(tok.sa.num_groups), int(tok.sa.group_size)
    x = False
    for i, (conv, bn) in enumerate(zip(tok.sa.mlp_convs, tok.sa.mlp_bns)):
        x = tally.layer(f"tokenizer.sa.mlp_convs.{i}", "tokenizer", groups * points, conv, x) or _trains(bn)
    x = tally.layer("tokenizer.lift.0", "tokenizer", groups, tok.lift[0], x)
    return groups, x or _trains(tok.lift)


def _audio_patches(tally: _Tally, tok: nn.Module) -> tuple[int, bool]:
    """AST-style patch conv over the fbank (the waveform front end, FFT + mel, is not counted)."""
    tokens = int(tok.num_tokens)
    x = tally.layer("tokenizer.conv1", "tokenizer", tokens, tok.conv1, False)
    return tokens, x or tok.pos_emb.requires_grad


TOKENIZER_FLOPS: dict[str, TokenizerFlops] = {
    "PointBertTokenizer": _pointbert,
    "PointNet2Tokenizer": _pointnet2,
    "AudioPatchTokenizer": _audio_patches,  # AudioTokenizer (waveforms in) is a subclass
}


def _tokenizer(tally: _Tally, tok: nn.Module) -> tuple[int, bool]:
    for cls in type(tok).__mro__:
        if cls.__name__ in TOKENIZER_FLOPS:
            return TOKENIZER_FLOPS[cls.__name__](tally, tok)
    raise TypeError(f"omniclip.flops has no FLOP model for the tokenizer {type(tok).__name__} (known: "
                    f"{', '.join(TOKENIZER_FLOPS)}): add one to omniclip.flops.TOKENIZER_FLOPS")


# ------------------------------------------------------------------------------ lens
def _perceiver_attention(tally: _Tally, name: str, block: nn.Module, q_len: int, kv_len: int, x_grad: bool,
                         context_grad: bool | None) -> bool:
    """PreNorm(Attention): norm(s), to_q, to_kv, the attention products, to_out."""
    attn = block.fn
    q_in = x_grad or _trains(block.norm)
    if context_grad is None:  # self-attention: k and v read the same normed latents
        kv_in = q_in
    else:
        kv_in = context_grad or _trains(block.norm_context)
    q = tally.layer(f"{name}.fn.to_q", "lens", q_len, attn.to_q, q_in)
    kv = tally.layer(f"{name}.fn.to_kv", "lens", kv_len, attn.to_kv, kv_in)
    out = tally.attention(f"{name}.fn", "lens", q_len, kv_len, attn.heads * attn.dim_head, q, kv)
    return tally.layer(f"{name}.fn.to_out", "lens", q_len, attn.to_out, out)


def _perceiver_ff(tally: _Tally, name: str, block: nn.Module, tokens: int, x_grad: bool) -> bool:
    """PreNorm(FeedForward): Linear(D, 2 * mult * D), GEGLU, Linear(mult * D, D)."""
    x = tally.layer(f"{name}.fn.net.0", "lens", tokens, block.fn.net[0], x_grad or _trains(block.norm))
    return tally.layer(f"{name}.fn.net.2", "lens", tokens, block.fn.net[2], x)


def _lens(tally: _Tally, lens: nn.Module, num_inputs: int, inputs_grad: bool) -> tuple[int, bool]:
    kind = type(lens).__name__
    if kind == "IdentityLens":
        return num_inputs, inputs_grad
    if kind != "Perceiver":
        raise TypeError(f"omniclip.flops has no FLOP model for the lens {kind} (known: Perceiver, IdentityLens)")
    latents = int(lens.num_latents)
    x = lens.latents.requires_grad
    for i, (cross, cross_ff, selfs) in enumerate(lens.layers):  # tied layers run (and count) once per use
        x = _perceiver_attention(tally, f"lens.layers.{i}.0", cross, latents, num_inputs, x, inputs_grad) or x
        x = _perceiver_ff(tally, f"lens.layers.{i}.1", cross_ff, latents, x) or x
        for j, (self_attn, self_ff) in enumerate(selfs):
            x = _perceiver_attention(tally, f"lens.layers.{i}.2.{j}.0", self_attn, latents, latents, x, None) or x
            x = _perceiver_ff(tally, f"lens.layers.{i}.2.{j}.1", self_ff, latents, x) or x
    return latents, x


# ------------------------------------------------------------------------------ trunk
def _trunk(tally: _Tally, trunk: nn.Module, num_tokens: int, tokens_grad: bool) -> None:
    """Class token + tokens through the blocks the trunk runs (skipped ones are not in
    ``trunk.blocks``), then the projection of the pooled token."""
    if len(getattr(trunk, "block_hooks", {})):
        raise TypeError("omniclip.flops does not count block hooks (ILA); the trunk has "
                        f"{sorted(trunk.block_hooks)}")
    seq = num_tokens + 1
    x = tokens_grad or trunk.class_embedding.requires_grad or trunk.positional_embedding.requires_grad
    x = x or _trains(trunk.ln_pre)
    for i, block in enumerate(trunk.blocks):
        attn, mlp = getattr(block, "attn", None), getattr(block, "mlp", None)
        if not isinstance(attn, nn.MultiheadAttention) or not hasattr(mlp, "c_fc"):
            raise TypeError(f"omniclip.flops counts open_clip ResidualAttentionBlocks (nn.MultiheadAttention + "
                            f"mlp.c_fc / c_proj); trunk block {i} is a {type(block).__name__}")
        name = f"trunk.blocks.{i}"
        # in_proj_weight [3D, D]: q, k and v of every token in one product.
        qkv_in = x or _trains(block.ln_1)
        weight_grad = attn.in_proj_weight.requires_grad
        tally.add(f"{name}.attn.in_proj", "trunk", 2 * seq * attn.in_proj_weight.numel(),
                  int(qkv_in) + int(weight_grad))
        qkv = qkv_in or weight_grad or (attn.in_proj_bias is not None and attn.in_proj_bias.requires_grad)
        out = tally.attention(f"{name}.attn", "trunk", seq, seq, attn.embed_dim, qkv, qkv)
        x = tally.layer(f"{name}.attn.out_proj", "trunk", seq, attn.out_proj, out) or x or _trains(block.ls_1)
        h = tally.layer(f"{name}.mlp.c_fc", "trunk", seq, mlp.c_fc, x or _trains(block.ln_2))
        x = tally.layer(f"{name}.mlp.c_proj", "trunk", seq, mlp.c_proj, h) or x or _trains(block.ls_2)
    if trunk.proj is not None:  # pooled [E_in] @ proj [E_in, E]
        pooled = x or _trains(trunk.ln_post)
        tally.add("trunk.proj", "trunk", 2 * trunk.proj.numel(), int(pooled) + int(trunk.proj.requires_grad))


def lens_step_flops(model: nn.Module) -> StepFlops:
    """Model FLOPs per sample of a training step of ``model`` (a `omniclip.model.LensModel`:
    ``tokenizer``, ``lens``, ``trunk``), counted as the module docstring says.

    Trainability is read from ``requires_grad``, so build the model as it trains (a frozen
    trunk with its unlocked blocks, if any). Raises TypeError for a tokenizer, lens or trunk
    block this module has no FLOP model for, naming it.
    """
    tally = _Tally()
    num_inputs, inputs_grad = _tokenizer(tally, model.tokenizer)
    num_tokens, tokens_grad = _lens(tally, model.lens, num_inputs, inputs_grad)
    _trunk(tally, model.trunk, num_tokens, tokens_grad)
    return StepFlops(tuple(tally.products))
