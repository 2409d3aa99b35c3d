"""omniclip.flops: the analytic FLOPs of a lens training step against (1) a hand computation
written out here and (2) what `torch.utils.flop_counter.FlopCounterMode` counts on the tiny
model's forward and forward + backward.

Tolerance: none, the counts are compared exactly. FlopCounterMode counts the same things
(matmul, addmm, bmm, convolution and their backward, 2*m*n*k each; elementwise ops ignored).
Two settings make it count what the model counts: attention runs through SDPA's math backend
(torch has no FLOP formula for the fused CPU flash kernel, which would count 0, and a fused
backward counts its recomputation of the scores, 2.5x the forward instead of 2x), and the
audio front end's mel matmul (no gradient, not counted by the model) is the one documented
difference, checked to be exactly that product.
"""

from __future__ import annotations

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from omniclip.flops import lens_step_flops
from omniclip.model import build_lens_model

# The tiny trunk (omniclip-tiny): width 64, 2 blocks, 2 heads, MLP 256, 4 x 4 patches, proj 64 x 64.
POINTBERT = {"name": "pointbert", "num_groups": 16, "group_size": 8, "encoder_dim": 32, "token_dim": 48}
LENS = {"depth": 2, "cross_dim_head": 16, "latent_dim_head": 32}


def _pointcloud_model(backbone, trunk_options=None, tokenizer=POINTBERT, lens=LENS):
    trunk = backbone.trunk(**(trunk_options or {}))
    model, _ = build_lens_model("pointcloud", trunk, tokenizer, lens)
    return model.train()


def _hand_count(unlocked_blocks: int = 0) -> tuple[int, int]:
    """Forward and backward FLOPs per sample of the tiny Point-BERT model, by hand."""
    G, K, E, d = 16, 8, 32, 48          # groups, points per group, encoder width, token width
    L, D = 16, 64                        # latents (= the trunk's 16 patch positions), latent width
    T = 17                               # trunk sequence: class token + 16 latents
    # Tokenizer. The first conv and the first position layer read data: weight gradient only.
    tok_fwd = 2 * G * K * (3 * 128 + 128 * 256 + 512 * 512 + 512 * E) + 2 * G * (E * d + 3 * 128 + 128 * d)
    tok_bwd = 2 * G * K * (3 * 128 + 2 * (128 * 256 + 512 * 512 + 512 * E)) + 2 * G * (2 * E * d + 3 * 128 + 2 * 128 * d)
    # Lens, per layer: cross-attention (1 head x 16), GEGLU FF, self-attention (2 heads x 32), FF.
    cross = 2 * L * D * 16 + 2 * L * d * 32 + 2 * 2 * L * L * 16 + 2 * L * 16 * D
    ff = 2 * L * D * 512 + 2 * L * 256 * D
    self_attn = 2 * L * D * 64 + 2 * L * D * 128 + 2 * 2 * L * L * 64 + 2 * L * 64 * D
    lens_fwd = 2 * (cross + ff + self_attn + ff)
    lens_bwd = 2 * lens_fwd              # everything trains and gradients flow: 2 operands each
    # Trunk, per block: QKV, attention scores + weighted sum, output projection, MLP; then proj.
    linears = 2 * T * D * 3 * D + 2 * T * D * D + 2 * T * D * 256 + 2 * T * 256 * D
    attention = 2 * 2 * T * T * D
    trunk_fwd = 2 * (linears + attention) + 2 * 64 * 64
    # Frozen: input gradients only (1x) for the linears and proj, both operands (2x) for attention;
    # an unlocked block's linears also get weight gradients.
    trunk_bwd = 2 * (linears + 2 * attention) + 2 * 64 * 64 + unlocked_blocks * linears
    return tok_fwd + lens_fwd + trunk_fwd, tok_bwd + lens_bwd + trunk_bwd


def _measured(model, inputs: torch.Tensor) -> tuple[float, float]:
    """FlopCounterMode's forward and forward + backward FLOPs per sample."""
    batch = inputs.shape[0]
    with sdpa_kernel(SDPBackend.MATH):
        with FlopCounterMode(display=False) as forward:
            model({"inputs": inputs})
        with FlopCounterMode(display=False) as step:
            model({"inputs": inputs}).square().sum().backward()
    return forward.get_total_flops() / batch, step.get_total_flops() / batch


def test_tiny_pointbert_count_equals_hand_computation(tiny_backbone):
    flops = lens_step_flops(_pointcloud_model(tiny_backbone))
    forward, backward = _hand_count()
    assert (flops.forward(), flops.backward()) == (forward, backward)
    assert flops.total() == forward + backward
    parts = flops.as_dict()
    assert sum(parts[p]["total"] for p in ("tokenizer", "lens", "trunk")) == parts["step"]["total"]
    assert parts["trunk"]["forward"] == 2 * (2 * 17 * 64 * (3 * 64 + 64 + 256 + 256) + 2 * 2 * 17 * 17 * 64) + 2 * 64 * 64


def test_unlocked_block_adds_its_weight_gradients(tiny_backbone):
    flops = lens_step_flops(_pointcloud_model(tiny_backbone, {"unlocked_blocks": 1}))
    assert (flops.forward(), flops.backward()) == _hand_count(unlocked_blocks=1)


def test_skipped_blocks_are_not_counted(tiny_backbone):
    full = lens_step_flops(_pointcloud_model(tiny_backbone))
    skipped = lens_step_flops(_pointcloud_model(tiny_backbone, {"skip_blocks": 1}))
    one_block = 2 * 17 * 64 * (3 * 64 + 64 + 256 + 256) + 2 * 2 * 17 * 17 * 64
    assert full.forward("trunk") - skipped.forward("trunk") == one_block
    assert full.forward("lens") == skipped.forward("lens")


def test_pointbert_count_equals_flop_counter(tiny_backbone):
    torch.manual_seed(0)
    model = _pointcloud_model(tiny_backbone, {"unlocked_blocks": 1})
    forward, step = _measured(model, torch.rand(2, 64, 3))
    flops = lens_step_flops(model)
    assert (forward, step) == (flops.forward(), flops.total())


def test_pointnet2_tied_lens_and_unlocked_class_token_equal_flop_counter(tiny_backbone):
    torch.manual_seed(0)
    tokenizer = {"name": "pnsa", "num_groups": 16, "group_size": 8, "mlp": [16, 16, 32], "token_dim": 24}
    model = _pointcloud_model(tiny_backbone, {"unlock_class_token": True, "skip_blocks": 1}, tokenizer,
                              {**LENS, "depth": 3, "weight_tie_layers": True, "self_per_cross_attn": 2})
    forward, step = _measured(model, torch.rand(2, 64, 6))
    flops = lens_step_flops(model)
    assert (forward, step) == (flops.forward(), flops.total())


def test_audio_count_equals_flop_counter_but_for_the_mel_matmul(tiny_backbone):
    torch.manual_seed(0)
    model, _ = build_lens_model("audio", tiny_backbone.trunk(), {}, {"depth": 1, "self_per_cross_attn": 1})
    model.train()
    forward, step = _measured(model, 0.1 * torch.randn(2, 16000))
    flops = lens_step_flops(model)
    # 1 s at 16 kHz: 98 frames of 400 samples, FFT size 512 -> 257 bins, 128 mel bins; no gradient.
    mel = 2 * 98 * 257 * 128
    assert (forward - mel, step - mel) == (flops.forward(), flops.total())
    # Patch conv 1 -> 64, kernel 8 (the trunk's patch), stride 10 over 128 x 512: 13 x 51 tokens.
    assert flops.forward("tokenizer") == 2 * 13 * 51 * 64 * 8 * 8


def test_unknown_tokenizer_is_named(tiny_backbone):
    model = _pointcloud_model(tiny_backbone)
    model.tokenizer = torch.nn.Linear(3, 48)
    with pytest.raises(TypeError, match="no FLOP model for the tokenizer Linear .*TOKENIZER_FLOPS"):
        lens_step_flops(model)
