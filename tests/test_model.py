import pytest
import torch

from omniclip.errors import CheckpointMismatchError, ConfigError
from omniclip.model import build_lens_model


def test_build_resolves_auto_sizes_from_trunk(tiny_backbone):
    model, config = build_lens_model("toy", tiny_backbone.trunk(), {"dim": 24})
    lens = config["lens"]
    assert lens["latent_dim"] == 64 and lens["num_latents"] == 16 and lens["input_dim"] == 24
    assert lens["latent_heads"] == 4
    out = model({"inputs": torch.randn(3, 10, 3)})
    assert out.shape == (3, 64)
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(3))


def test_encode_equals_manual_composition(tiny_backbone):
    torch.manual_seed(0)
    model, _ = build_lens_model("toy", tiny_backbone.trunk())
    model.eval()
    x = torch.randn(2, 10, 3)
    with torch.no_grad():
        manual = model.trunk(model.lens(model.tokenizer(x)))
        torch.testing.assert_close(model.encode(x, normalize=False), manual)


def test_width_mismatches_name_both_numbers(tiny_backbone):
    trunk = tiny_backbone.trunk()
    with pytest.raises(ConfigError, match=r"lens.latent_dim.*gives 32-wide tokens but the trunk is 64 wide"):
        build_lens_model("toy", trunk, lens_cfg={"latent_dim": 32})
    with pytest.raises(ConfigError, match=r"lens.input_dim.*tokenizer gives 24-wide .* lens reads 30-wide"):
        build_lens_model("toy", trunk, lens_cfg={"input_dim": 30})
    with pytest.raises(ConfigError, match=r"lens.num_latents.*lens gives 9 tokens .* 16 patch positions"):
        build_lens_model("toy", trunk, lens_cfg={"num_latents": 9})
    flexible = tiny_backbone.trunk(interpolate_positions=True)
    model, _ = build_lens_model("toy", flexible, lens_cfg={"num_latents": 9})
    assert model({"inputs": torch.randn(1, 10, 3)}).shape == (1, 64)


def test_unknown_modality_is_a_config_error(tiny_backbone):
    with pytest.raises(ConfigError, match="unknown modality `nonexistent`"):
        build_lens_model("nonexistent", tiny_backbone.trunk())


def test_trainable_state_dict_roundtrip(tmp_path, tiny_backbone):
    torch.manual_seed(0)
    model, config = build_lens_model("toy", tiny_backbone.trunk(unlocked_blocks=1))
    state = model.trainable_state_dict()
    assert any(k.startswith("trunk.blocks.0.") for k in state)
    assert not any(k.startswith("trunk.blocks.1.") for k in state)
    assert "lens.latents" in state and "tokenizer.pos" in state
    model.save_lens(tmp_path, config)
    torch.manual_seed(1)
    other, _ = build_lens_model("toy", tiny_backbone.trunk(unlocked_blocks=1))
    x = torch.randn(2, 10, 3)
    other.load_lens(tmp_path)
    model.eval(), other.eval()
    with torch.no_grad():
        torch.testing.assert_close(other.encode(x), model.encode(x))
    bad = dict(state)
    bad.pop("lens.latents")
    bad["lens.extra"] = torch.zeros(1)
    with pytest.raises(CheckpointMismatchError, match=r"(?s)missing \(1\):\n  lens.latents.*unexpected \(1\):\n  lens.extra"):
        other.load_trainable_state_dict(bad)


def test_tied_lens_saves_and_loads(tmp_path, tiny_backbone):
    model, config = build_lens_model("toy", tiny_backbone.trunk(), lens_cfg={"depth": 3, "weight_tie_layers": True})
    assert model.lens.layers[1] is model.lens.layers[2]
    model.save_lens(tmp_path, config)
    other, _ = build_lens_model("toy", tiny_backbone.trunk(), lens_cfg={"depth": 3, "weight_tie_layers": True})
    other.load_lens(tmp_path)
    for key, value in model.trainable_state_dict().items():
        torch.testing.assert_close(other.trainable_state_dict()[key], value)
