import pytest
import torch

from omniclip.errors import ConfigError
from omniclip.lens import IdentityLens, Perceiver, build_lens
from tests.reference import reference_perceiver


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
    cfg = {"depth": 3, "self_per_cross_attn": 2, "cross_dim_head": 16, "latent_heads": 4, "latent_dim_head": 8}
    torch.testing.assert_close(out, reference_perceiver(sd, tokens, cfg), atol=1e-5, rtol=1e-5)
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


@pytest.mark.parametrize("key", ["latent_heads", "cross_heads", "latent_dim_head", "depth", "num_latents"])
def test_perceiver_refuses_zero_sizes_instead_of_crashing(key):
    from omniclip.errors import ConfigError
    from omniclip.lens.perceiver import Perceiver

    sizes = {"input_dim": 8, "latent_dim": 16, "num_latents": 4, "depth": 1, "latent_heads": 2, "latent_dim_head": 8,
             "cross_heads": 1, "cross_dim_head": 8, key: 0}
    with pytest.raises(ConfigError, match=rf"config `lens.{key}`: must be >= 1, got 0"):
        Perceiver(**sizes)
