"""Strict checkpoint import: file reading, unwrapping, key maps, mismatch reports, convert, CLI."""

from __future__ import annotations

import argparse
import json
import re

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from omniclip import registry
from omniclip.convert import (
    CheckpointFileError,
    Converter,
    KeyMap,
    UntrustedPickleError,
    convert,
    load_checkpoint_file,
    load_state_dict_strict,
    main,
    register_converter,
    unwrap_state_dict,
)
from omniclip.errors import CheckpointMismatchError, ConfigError


class Block(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc = nn.Linear(width, width)


class Tiny(nn.Module):
    """Stand-in for a lens: a Parameter, a Linear, a nested ModuleList and a buffer."""

    def __init__(self, width: int = 4, depth: int = 2):
        super().__init__()
        self.latents = nn.Parameter(torch.zeros(3, width))
        self.proj = nn.Linear(width, 2)
        self.blocks = nn.ModuleList(Block(width) for _ in range(depth))
        self.register_buffer("scale", torch.zeros(()))


# The reference training code's names, as a hand-written table (module key -> checkpoint key).
REFERENCE_NAMES = {
    "latents": "visual.perceiver.latents",
    "proj.weight": "visual.perceiver.proj_out.weight",
    "proj.bias": "visual.perceiver.proj_out.bias",
    "scale": "visual.perceiver.scale",
    **{
        f"blocks.{i}.{ours}.{p}": f"visual.perceiver.layers.{i}.{theirs}.{p}"
        for i in range(2)
        for ours, theirs in (("norm", "0.norm"), ("fc", "1.fn"))
        for p in ("weight", "bias")
    },
}
# Frozen CLIP tower and logit scale: present in the reference checkpoint, not part of the lens.
EXTRA_KEYS = {
    "visual.transformer.resblocks.0.attn.in_proj_weight": (12, 4),
    "text.token_embedding.weight": (10, 4),
    "logit_scale": (),
}

KEYMAP = KeyMap(
    rules=(
        (r"visual\.perceiver\.latents$", "latents"),
        (r"visual\.perceiver\.scale$", "scale"),
        (r"visual\.perceiver\.proj_out\.", "proj."),
        (r"visual\.perceiver\.layers\.(\d+)\.0\.norm\.", r"blocks.\1.norm."),
        (r"visual\.perceiver\.layers\.(\d+)\.1\.fn\.", r"blocks.\1.fc."),
        (r"visual\.transformer\.", None),
        (r"text\.", ""),
    ),
    ignore=(r"logit_scale$",),
)


def reference_tensors(dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """Checkpoint-named tensors with distinct random values and the module's shapes."""
    gen = torch.Generator().manual_seed(0)
    shapes = {k: v.shape for k, v in Tiny().state_dict().items()}
    names = list(REFERENCE_NAMES.items()) + [(k, k) for k in EXTRA_KEYS]
    shapes |= EXTRA_KEYS
    return {theirs: torch.randn(shapes[ours], generator=gen, dtype=dtype) for ours, theirs in names}


def training_dict(tensors: dict[str, torch.Tensor]) -> dict:
    """What the reference trainer saves: DDP-prefixed weights next to epoch and optimizer."""
    return {
        "epoch": 3,
        "state_dict": {f"module.{k}": v for k, v in tensors.items()},
        "optimizer": {"state": {0: {"exp_avg": torch.ones(3)}}, "param_groups": [{"lr": 0.1}]},
    }


def assert_loaded_from(module: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    state = module.state_dict()
    assert set(state) == set(REFERENCE_NAMES)
    for ours, theirs in REFERENCE_NAMES.items():
        expected = tensors[theirs].to(state[ours].dtype)
        torch.testing.assert_close(state[ours], expected, rtol=0, atol=0)


# --------------------------------------------------------------------------------------------
# Reading and unwrapping


def test_strict_load_from_torch_and_safetensors_files(tmp_path):
    tensors = reference_tensors()
    torch.save(training_dict(tensors), tmp_path / "ref.pt")
    save_file({f"module.{k}": v for k, v in tensors.items()}, str(tmp_path / "ref.safetensors"))

    for name in ("ref.pt", "ref.safetensors"):
        module = Tiny()
        state = unwrap_state_dict(load_checkpoint_file(tmp_path / name))
        report = load_state_dict_strict(module, state, KEYMAP, what=name)
        assert_loaded_from(module, tensors)
        assert report.loaded == len(REFERENCE_NAMES)
        assert report.ignored == len(EXTRA_KEYS)
        assert report.mapped == list(Tiny().state_dict())
        assert str(report) == (
            f"loaded 12 tensors from {name} into Tiny (12 renamed by the key map, "
            f"3 checkpoint keys ignored)"
        )


def test_tensors_are_cast_to_the_module_dtype():
    tensors = reference_tensors(torch.float64)
    module = Tiny()
    load_state_dict_strict(module, tensors, KEYMAP)
    assert all(v.dtype == torch.float32 for v in module.state_dict().values())
    assert_loaded_from(module, tensors)


def test_unwrap_descends_wrappers_in_order_and_drops_non_tensors():
    w = torch.ones(2)
    assert unwrap_state_dict({"epoch": 1, "state_dict": {"a": w, "step": 5}}).keys() == {"a"}
    assert unwrap_state_dict({"model_state_dict": {"b": w}, "optimizer": {"x": w}}).keys() == {"b"}
    assert unwrap_state_dict({"model": {"module": {"c": w}}}).keys() == {"c"}
    # `state_dict` wins over `model` when both are present.
    assert unwrap_state_dict({"model": {"m": w}, "state_dict": {"s": w}}).keys() == {"s"}
    assert unwrap_state_dict({"d": w, "epoch": 2}).keys() == {"d"}


def test_unwrap_strips_ddp_prefix_only_when_every_key_has_it():
    w = torch.ones(1)
    assert list(unwrap_state_dict({"module.a": w, "module.b.c": w})) == ["a", "b.c"]
    assert list(unwrap_state_dict({"module.a": w, "b": w})) == ["module.a", "b"]
    assert list(unwrap_state_dict({"module.module.a": w})) == ["module.a"]


def test_unwrap_never_takes_ema_weights_implicitly():
    with pytest.raises(CheckpointMismatchError, match=r"ref\.pt: no tensors found") as info:
        unwrap_state_dict({"epoch": 1, "ema": {"a": torch.ones(1)}}, source="ref.pt")
    assert "top-level keys: ['ema', 'epoch']" in str(info.value)
    assert "EMA weights under ['ema'] are never taken implicitly" in str(info.value)
    assert "unwrap_state_dict(checkpoint['ema'])" in str(info.value)


def test_pickled_namespace_needs_trust_pickle(tmp_path):
    tensors = reference_tensors()
    ckpt = training_dict(tensors) | {"args": argparse.Namespace(lr=0.1)}
    path = tmp_path / "train.pth"
    torch.save(ckpt, path)
    with pytest.raises(UntrustedPickleError) as info:
        load_checkpoint_file(path)
    message = str(info.value)
    assert message.startswith(
        f"{path}: the safe loader (torch.load with weights_only=True) refused it: "
    )
    assert "it contains a pickled `argparse.Namespace` object" in message
    assert "trust_pickle=True (`--trust-pickle` on the command line)" in message

    loaded = load_checkpoint_file(path, trust_pickle=True)
    assert loaded["args"].lr == 0.1
    module = Tiny()
    load_state_dict_strict(module, unwrap_state_dict(loaded), KEYMAP)
    assert_loaded_from(module, tensors)


def test_whole_module_pickle_loads_with_trust(tmp_path):
    source = Tiny()
    nn.init.normal_(source.latents)
    torch.save(source, tmp_path / "whole.ckpt")
    with pytest.raises(UntrustedPickleError):
        load_checkpoint_file(tmp_path / "whole.ckpt")
    state = load_checkpoint_file(tmp_path / "whole.ckpt", trust_pickle=True)
    torch.testing.assert_close(state["latents"], source.latents.detach(), rtol=0, atol=0)


def test_bad_files_name_the_file(tmp_path):
    missing = tmp_path / "no.pt"
    with pytest.raises(FileNotFoundError, match=re.escape(f"checkpoint file not found: {missing}")):
        load_checkpoint_file(missing)
    (tmp_path / "w.npz").write_bytes(b"x")
    unsupported = r"w\.npz: unsupported suffix `\.npz` \(supported: \.safetensors, \.pt, \.pth"
    with pytest.raises(CheckpointFileError, match=unsupported):
        load_checkpoint_file(tmp_path / "w.npz")
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(CheckpointFileError, match=r"bad\.safetensors: not a readable safetensors"):
        load_checkpoint_file(tmp_path / "bad.safetensors")
    (tmp_path / "empty.bin").write_bytes(b"")
    unreadable = r"empty\.bin: cannot read it as a PyTorch checkpoint: EOFError"
    with pytest.raises(CheckpointFileError, match=unreadable):
        load_checkpoint_file(tmp_path / "empty.bin")
    torch.save([torch.ones(1)], tmp_path / "list.pt")
    with pytest.raises(CheckpointFileError, match=r"list\.pt: holds a list, not a dict of tensors"):
        load_checkpoint_file(tmp_path / "list.pt")


# --------------------------------------------------------------------------------------------
# Key maps


def test_keymap_apply_first_rule_wins_and_reports_unmatched():
    w = torch.ones(1)
    keymap = KeyMap(
        rules=((r"a\.(\d+)\.", r"b.\1."), (r"a\.", "z."), (r"frozen\.", None)),
        ignore=(r".*num_batches_tracked$",),
    )
    mapped, unmatched = keymap.apply(
        {"a.0.w": w, "a.x": w, "frozen.k": w, "bn.num_batches_tracked": w, "other": w}
    )
    assert list(mapped) == ["b.0.w", "z.x"]
    assert unmatched == ["other"]
    assert keymap.resolve("a.7.w") == (True, "b.7.w")
    assert keymap.resolve("frozen.k") == (True, None)
    assert keymap.resolve("other") == (False, None)


def test_keymap_apply_refuses_duplicate_targets():
    keymap = KeyMap(rules=((r"(old|new)\.", "x."),))
    with pytest.raises(CheckpointMismatchError, match=r"x\.w <- old\.w, new\.w"):
        keymap.apply({"old.w": torch.ones(1), "new.w": torch.ones(1)})


def test_keymap_bad_regex_and_replacement_are_config_errors():
    with pytest.raises(ConfigError, match=r"config `keymap rule 1`: invalid regex '\('"):
        KeyMap(rules=(("a", "b"), ("(", "c")))
    with pytest.raises(ConfigError, match=r"config `keymap ignore 0`: invalid regex"):
        KeyMap(ignore=("[",))
    keymap = KeyMap(rules=((r"a\.", r"\2."),))
    misfit = r"keymap rule 0.*replacement '\\\\2\.' does not fit .* key `a\.w`"
    with pytest.raises(ConfigError, match=misfit):
        keymap.resolve("a.w")


def test_ignore_rules_are_what_keep_extra_keys_out():
    tensors = reference_tensors()
    no_ignore = KeyMap(rules=KEYMAP.rules)
    with pytest.raises(CheckpointMismatchError) as info:
        load_state_dict_strict(Tiny(), tensors, no_ignore)
    assert str(info.value) == (
        "checkpoint does not match Tiny: 0 missing, 1 unexpected, 0 shape mismatches, "
        "0 duplicate targets\n"
        "unexpected keys (1), in checkpoint but not in the module:\n"
        "  logit_scale (no key-map rule matches)"
    )


# --------------------------------------------------------------------------------------------
# Mismatch reports


def test_missing_key_with_closest_unexpected_hint():
    tensors = reference_tensors()
    typo = tensors.pop("visual.perceiver.layers.0.1.fn.weight")
    tensors["visual.perceiver.layers.0.1.fn.weights"] = typo
    del tensors["visual.perceiver.layers.1.1.fn.bias"]
    module = Tiny()
    before = {k: v.clone() for k, v in module.state_dict().items()}
    with pytest.raises(CheckpointMismatchError) as info:
        load_state_dict_strict(module, tensors, KEYMAP, what="ref.pt")
    assert str(info.value) == (
        "ref.pt does not match Tiny: 2 missing, 1 unexpected, 0 shape mismatches, "
        "0 duplicate targets\n"
        "missing keys (2), in the module but not in ref.pt:\n"
        "  blocks.0.fc.weight  (closest unexpected: "
        "visual.perceiver.layers.0.1.fn.weights -> blocks.0.fc.weights)\n"
        "  blocks.1.fc.bias\n"
        "unexpected keys (1), in ref.pt but not in the module:\n"
        "  visual.perceiver.layers.0.1.fn.weights -> blocks.0.fc.weights"
    )
    # A failed load leaves the module untouched.
    for key, value in module.state_dict().items():
        assert torch.equal(value, before[key])


def test_unexpected_and_shape_mismatch_and_duplicate_are_all_listed():
    tensors = reference_tensors()
    tensors["visual.perceiver.latents"] = torch.zeros(5, 4)
    tensors["visual.perceiver.proj_out.gamma"] = torch.zeros(2)
    tensors["visual.perceiver.head.weight"] = torch.zeros(2, 4)
    tensors["visual.adapter.conv.weight"] = torch.zeros(1)
    second_head = (r"visual\.perceiver\.head\.", "proj.")
    keymap = KeyMap(rules=(second_head, *KEYMAP.rules), ignore=KEYMAP.ignore)
    with pytest.raises(CheckpointMismatchError) as info:
        load_state_dict_strict(Tiny(), tensors, keymap, what="ref.pt")
    assert str(info.value) == (
        "ref.pt does not match Tiny: 0 missing, 2 unexpected, 1 shape mismatches, "
        "1 duplicate targets\n"
        "unexpected keys (2), in ref.pt but not in the module:\n"
        "  visual.perceiver.proj_out.gamma -> proj.gamma\n"
        "  visual.adapter.conv.weight (no key-map rule matches)\n"
        "shape mismatches (1), ref.pt vs module:\n"
        "  visual.perceiver.latents -> latents: (5, 4) vs (3, 4)\n"
        "duplicate targets (1), several ref.pt keys mapped to one module key:\n"
        "  proj.weight <- visual.perceiver.proj_out.weight, visual.perceiver.head.weight"
    )


def test_identity_load_without_keymap():
    source = Tiny()
    for p in source.parameters():
        nn.init.normal_(p)
    target = Tiny()
    report = load_state_dict_strict(target, source.state_dict())
    assert report.renamed == 0 and report.ignored == 0
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value)
    wrong = source.state_dict() | {"blocks.1.fc.bias": torch.zeros(3)}
    line = r"(?m)^  blocks\.1\.fc\.bias: \(3,\) vs \(4,\)$"
    with pytest.raises(CheckpointMismatchError, match=line):
        load_state_dict_strict(Tiny(), wrong)


# --------------------------------------------------------------------------------------------
# Converters and the command line

TEST_CONVERTER = register_converter(
    Converter(
        name="testmodality.tiny",
        description="tiny test lens from the reference layout",
        keymap=KEYMAP,
        build=lambda config: Tiny(**config),
        default_config={"width": 4, "depth": 2},
    )
)


def test_convert_writes_safetensors_and_config(tmp_path):
    tensors = reference_tensors()
    src = tmp_path / "ref.pt"
    torch.save(training_dict(tensors), src)
    out = tmp_path / "out" / "lens"
    report = convert("testmodality.tiny", src, out)
    assert report.loaded == 12
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "lens.safetensors"]
    assert json.loads((out / "config.json").read_text()) == {
        "width": 4,
        "depth": 2,
        "converted_from": {"converter": "testmodality.tiny", "source": str(src)},
    }
    module = Tiny()
    module.load_state_dict(load_file(str(out / "lens.safetensors")), strict=True)
    assert_loaded_from(module, tensors)


def test_convert_overrides_and_failure_writes_nothing(tmp_path):
    src = tmp_path / "ref.pt"
    torch.save(training_dict(reference_tensors()), src)
    with pytest.raises(CheckpointMismatchError, match=r"4 missing, 0 unexpected") as info:
        convert("testmodality.tiny", src, tmp_path / "out", config_overrides={"depth": 3})
    assert "  blocks.2.fc.weight\n" in str(info.value)
    assert not (tmp_path / "out").exists()
    unknown = r"config `dept`: no such key in the converter config \(known: depth, width\)"
    with pytest.raises(ConfigError, match=unknown):
        convert("testmodality.tiny", src, tmp_path / "out", config_overrides={"dept": 3})
    with pytest.raises(ConfigError, match=r"unknown converter `testmodality.huge`"):
        convert("testmodality.huge", src, tmp_path / "out")


def test_cli_list(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"(?m)^testmodality\.tiny +tiny test lens from the reference layout$", out)
    assert "testmodality.tiny" in registry.names("converter")


def test_cli_convert_success_and_failures(tmp_path, capsys):
    src = tmp_path / "train.pth"
    torch.save(training_dict(reference_tensors()) | {"args": argparse.Namespace(lr=0.1)}, src)
    out = tmp_path / "out"

    assert main(["testmodality.tiny", str(src), str(out)]) == 2
    assert "--trust-pickle" in capsys.readouterr().err

    args = ["testmodality.tiny", str(src), str(out), "--trust-pickle"]
    assert main([*args, "--set", "depth=3", "width=4"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"{src} does not match Tiny: 4 missing")
    assert "  blocks.2.norm.weight\n" in err
    assert not out.exists()

    assert main(args) == 0
    assert "loaded 12 tensors from" in capsys.readouterr().out
    assert (out / "lens.safetensors").is_file()
