import math

import pytest
import torch
import torch.nn.functional as F

from omniclip.errors import ConfigError
from omniclip.lens import IdentityLens, Perceiver, build_lens


def _ln(x, sd, prefix):
    return F.layer_norm(x, x.shape[-1:], sd[prefix + ".weight"], sd[prefix + ".bias"], eps=1e-5)


def _attn(x, ctx, sd, prefix, heads, dim_head):
    q = x @ sd[prefix + ".to_q.weight"].T
    kv = ctx @ sd[prefix + ".to_kv.weight"].T
    k, v = kv[..., : heads * dim_head], kv[..., heads * dim_head :]
    outs = []
    for h in range(heads):
        sl = slice(h * dim_head, (h + 1) * dim_head)
        sim = q[..., sl] @ k[..., sl].transpose(-1, -2) / math.sqrt(dim_head)
        outs.append(sim.softmax(-1) @ v[..., sl])
    return torch.cat(outs, -1) @ sd[prefix + ".to_out.weight"].T + sd[prefix + ".to_out.bias"]


def _ff(x, sd, prefix):
    h = x @ sd[prefix + ".net.0.weight"].T + sd[prefix + ".net.0.bias"]
    a, g = h.chunk(2, -1)
    h = a * 0.5 * g * (1 + torch.erf(g / math.sqrt(2)))
    return h @ sd[prefix + ".net.2.weight"].T + sd[prefix + ".net.2.bias"]


def reference_perceiver(sd, tokens, depth, spc, cross=(1, 16), latent=(4, 8)):
    """Perceiver forward from the raw state dict, in the ViT-Lens key layout."""
    x = sd["latents"].expand(tokens.shape[0], -1, -1)
    for i in range(depth):
        p = f"layers.{i}"
        ctx = _ln(tokens, sd, f"{p}.0.norm_context")
        x = x + _attn(_ln(x, sd, f"{p}.0.norm"), ctx, sd, f"{p}.0.fn", *cross)
        x = x + _ff(_ln(x, sd, f"{p}.1.norm"), sd, f"{p}.1.fn")
        for j in range(spc):
            q = f"{p}.2.{j}"
            h = _ln(x, sd, f"{q}.0.norm")
            x = x + _attn(h, h, sd, f"{q}.0.fn", *latent)
            x = x + _ff(_ln(x, sd, f"{q}.1.norm"), sd, f"{q}.1.fn")
    return x


@pytest.mark.parametrize("tie", [False, True])
def test_perceiver_matches_reference_computation(tie):
    torch.manual_seed(0)
    lens = Perceiver(input_dim=12, latent_dim=32, num_latents=9, depth=3, cross_heads=1, cross_dim_head=16,
                     latent_heads=4, latent_dim_head=8, self_per_cross_attn=2, weight_tie_layers=tie).eval()
    for p in lens.parameters():  # non-trivial norms and biases
        p.data.normal_(0, 0.3)
    tokens = torch.randn(2, 7, 12)
    sd = lens.state_dict()
    with torch.no_grad():
        out = lens(tokens)
    torch.testing.assert_close(out, reference_perceiver(sd, tokens, 3, 2), atol=1e-5, rtol=1e-5)
    assert out.shape == (2, 9, 32)
    if tie:
        assert lens.layers[1] is lens.layers[2] and lens.layers[0] is not lens.layers[1]


def test_perceiver_key_layout_matches_vitlens():
    lens = Perceiver(input_dim=384, latent_dim=64, num_latents=4, depth=1, self_per_cross_attn=1,
                     latent_heads=2, latent_dim_head=32)
    assert sorted(lens.state_dict()) == sorted([
        "latents",
        "layers.0.0.norm.weight", "layers.0.0.norm.bias",
        "layers.0.0.norm_context.weight", "layers.0.0.norm_context.bias",
        "layers.0.0.fn.to_q.weight", "layers.0.0.fn.to_kv.weight",
        "layers.0.0.fn.to_out.weight", "layers.0.0.fn.to_out.bias",
        "layers.0.1.norm.weight", "layers.0.1.norm.bias",
        "layers.0.1.fn.net.0.weight", "layers.0.1.fn.net.0.bias",
        "layers.0.1.fn.net.2.weight", "layers.0.1.fn.net.2.bias",
        "layers.0.2.0.0.norm.weight", "layers.0.2.0.0.norm.bias",
        "layers.0.2.0.0.fn.to_q.weight", "layers.0.2.0.0.fn.to_kv.weight",
        "layers.0.2.0.0.fn.to_out.weight", "layers.0.2.0.0.fn.to_out.bias",
        "layers.0.2.0.1.norm.weight", "layers.0.2.0.1.norm.bias",
        "layers.0.2.0.1.fn.net.0.weight", "layers.0.2.0.1.fn.net.0.bias",
        "layers.0.2.0.1.fn.net.2.weight", "layers.0.2.0.1.fn.net.2.bias",
    ])
    assert lens.layers[0][0].fn.to_kv.weight.shape == (128, 384)
    assert lens.layers[0][1].fn.net[0].weight.shape == (4 * 64 * 2, 64)


def test_perceiver_key_padding_mask_ignores_padded_tokens():
    torch.manual_seed(1)
    lens = Perceiver(input_dim=8, latent_dim=16, num_latents=3, depth=2, latent_heads=2, latent_dim_head=8).eval()
    tokens = torch.randn(1, 5, 8)
    padded = torch.cat([tokens, 100 * torch.randn(1, 3, 8)], dim=1)
    mask = torch.tensor([[True] * 5 + [False] * 3])
    with torch.no_grad():
        torch.testing.assert_close(lens(padded, mask=mask), lens(tokens), atol=1e-5, rtol=1e-5)


def test_build_lens_registry_and_errors():
    assert isinstance(build_lens({"name": "identity", "input_dim": 8}), IdentityLens)
    with pytest.raises(ConfigError, match="unknown lens `nope`"):
        build_lens({"name": "nope"})
    with pytest.raises(ConfigError, match=r"lens.name"):
        build_lens({"input_dim": 3})
    with pytest.raises(ConfigError, match="unexpected keyword"):
        build_lens({"name": "perceiver", "bogus": 1})
