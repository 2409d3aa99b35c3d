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
    with pytest.raises(ConfigError, match=r"lens.num_latents.*input gives 9 tokens .* 16 patch positions"):
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


def _fresh_pair(tiny_backbone):
    torch.manual_seed(0)
    model, _ = build_lens_model("toy", tiny_backbone.trunk(unlocked_blocks=1))
    return model, model.trainable_state_dict()


@pytest.mark.parametrize("kind", ["missing", "unexpected", "shape"])
def test_load_refuses_each_kind_of_mismatch_alone(tiny_backbone, kind):
    """Each defect on its own is refused (a loader that checks only some kinds, or only when
    another kind is present, fails here) and the model is left untouched."""
    model, state = _fresh_pair(tiny_backbone)
    before = {k: v.clone() for k, v in state.items()}
    bad = {k: torch.full_like(v, 7.0) for k, v in state.items()}  # loading these would be visible
    if kind == "missing":
        bad.pop("lens.latents"), bad.pop("trunk.blocks.0.ln_1.weight")
        expected = "missing (2):\n  lens.latents\n  trunk.blocks.0.ln_1.weight"
    elif kind == "unexpected":
        bad["lens.extra"], bad["zz.other"] = torch.zeros(1), torch.zeros(2)
        expected = "unexpected (2):\n  lens.extra\n  zz.other"
    else:
        shape = tuple(state["lens.latents"].shape)
        bad["lens.latents"] = torch.zeros(shape[0] + 1, shape[1])
        expected = (f"shape mismatch (1):\n  lens.latents: checkpoint {(shape[0] + 1, shape[1])} "
                    f"vs model {shape}")
    with pytest.raises(CheckpointMismatchError) as info:
        model.load_trainable_state_dict(bad)
    assert str(info.value) == "lens checkpoint does not match the model:\n" + expected
    for key, value in model.trainable_state_dict().items():
        assert torch.equal(value, before[key]), f"{key} was modified by a refused load"


def test_load_reports_every_mismatch_in_one_message(tiny_backbone):
    model, state = _fresh_pair(tiny_backbone)
    bad = dict(state)
    missing = sorted(k for k in state if k.startswith("trunk.blocks.0."))
    for key in missing:
        bad.pop(key)
    bad["lens.extra"] = torch.zeros(1)
    bad["tokenizer.pos"] = torch.zeros(1, 2, 3)
    with pytest.raises(CheckpointMismatchError) as info:
        model.load_trainable_state_dict(bad)
    pos_shape = tuple(state["tokenizer.pos"].shape)
    assert str(info.value).splitlines() == [
        "lens checkpoint does not match the model:",
        f"missing ({len(missing)}):", *[f"  {k}" for k in missing],
        "unexpected (1):", "  lens.extra",
        "shape mismatch (1):", f"  tokenizer.pos: checkpoint (1, 2, 3) vs model {pos_shape}",
    ]
    assert len(missing) > 2  # the unlocked block really contributes several keys


def test_load_copies_every_value(tiny_backbone):
    """A complete, well-shaped state is loaded entirely (a loader skipping keys fails here)."""
    model, state = _fresh_pair(tiny_backbone)
    target = {k: torch.randn_like(v) if v.is_floating_point() else v.clone() for k, v in state.items()}
    model.load_trainable_state_dict(target)
    for key, value in model.trainable_state_dict().items():
        assert torch.equal(value, target[key]), key
