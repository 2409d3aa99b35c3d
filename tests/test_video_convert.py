"""``omniclip-convert video.vificlip|video.ila``: a published ViFi-CLIP / ILA file (state dicts in
the published layouts, built by tests/test_vificlip.py and tests/test_ila.py) becomes a video
export that `VideoModality.load_export` rebuilds to the very model the published loader returns,
with no pickle in it, and that ``omniclip-zeroshot checkpoint=OUT`` scores as it scores the file."""

from __future__ import annotations

import json

import pytest
import torch

from omniclip import zeroshot
from omniclip.backbone import load_backbone
from omniclip.convert import main as convert_main
from omniclip.errors import CheckpointMismatchError
from omniclip.ila_checkpoint import load_ila
from omniclip.modality import get_modality
from omniclip.vificlip import load_vificlip
from tests import test_ila, test_vificlip
from tests.test_video_zeroshot import k400, written_metrics, zeroshot_cfg  # noqa: F401  (k400: fixture)

TINY = ["--set", "backbone=omniclip-tiny"]
NAMES = ["archery", "playing guitar", "golf"]


def save_published(path, state) -> None:
    """A training dict as the published files hold it, with a pickled (yacs-like) config."""
    torch.save({"model": state, "optimizer": {}, "epoch": 29, "config": test_vificlip.YacsLikeConfig()}, path)


def convert(converter: str, src, out, capsys) -> None:
    assert convert_main([converter, str(src), str(out), "--trust-pickle", *TINY]) == 0, capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "weights.safetensors"]
    assert b"\x80" not in (out / "config.json").read_bytes()[:1]  # JSON, not a pickle
    json.loads((out / "config.json").read_text())
    # safetensors: an 8-byte header length, then a JSON header
    raw = (out / "weights.safetensors").read_bytes()
    json.loads(raw[8:8 + int.from_bytes(raw[:8], "little")])


def ila_state(base) -> dict[str, torch.Tensor]:
    """An ILA checkpoint whose CLIP towers are the base's (ILA trains only its own modules)."""
    state = test_ila.published_checkpoint(base.model, test_ila.HIDDEN, test_ila.T, torch.Generator().manual_seed(6))
    state.update({k: v.clone() for k, v in base.model.state_dict().items() if k in state and k != "logit_scale"})
    return state


@pytest.mark.parametrize("prompts", [False, True], ids=["full_finetune", "bridge_prompt"])
def test_a_vificlip_export_rebuilds_the_published_model(tmp_path, capsys, prompts):
    source = test_vificlip.fresh_backbone(noise=0.0 if prompts else 0.05)  # bridge-and-prompt: frozen towers
    src, out = tmp_path / "vificlip.pth", tmp_path / "out"
    save_published(src, test_vificlip.published_state(source, prompts=prompts))
    convert("video.vificlip", src, out, capsys)
    config = json.loads((out / "config.json").read_text())["model"]
    assert config["model"]["name"] == ("vificlip_bridge_prompt" if prompts else "vificlip")
    if prompts:
        assert config["model"]["vision_prompts"] == {"num_tokens": 4, "depth": 2}
        assert config["model"]["text_prompts"] == {"num_tokens": 4, "init": None, "depth": 2}
    else:
        assert config["model"]["image_tower"] == "whole" and config["model"]["text_tower"] == "whole"

    base = test_vificlip.fresh_backbone()
    published = load_vificlip(src, base, trust_pickle=True).model
    exported, backbone, _ = get_modality("video").load_export(out)
    frames = test_vificlip.clips()
    with torch.no_grad():
        torch.testing.assert_close(exported.encode(frames), published.encode(frames), rtol=0, atol=1e-6)
        torch.testing.assert_close(exported.class_embeddings(NAMES), published.class_embeddings(NAMES),
                                   rtol=0, atol=1e-6)
    assert backbone.logit_scale == base.logit_scale


def test_an_ila_export_rebuilds_the_published_model(tmp_path, capsys):
    src, out = tmp_path / "ila.pth", tmp_path / "out"
    save_published(src, ila_state(load_backbone("omniclip-tiny")))
    convert("video.ila", src, out, capsys)
    config = json.loads((out / "config.json").read_text())["model"]["model"]
    assert {k: config[k] for k in ("name", "num_frames", "hidden", "mit_layers", "prompts_layers")} == {
        "name": "ila", "num_frames": test_ila.T, "hidden": test_ila.HIDDEN, "mit_layers": 1, "prompts_layers": 2}

    published = load_ila(src, load_backbone("omniclip-tiny"), trust_pickle=True)
    exported, backbone, _ = get_modality("video").load_export(out)
    assert backbone.logit_scale == pytest.approx(published.logit_scale, abs=0)
    frames = test_vificlip.clips()
    with torch.no_grad():
        got, want = exported.encode(frames), published.model.encode(frames)
        for a, b in zip(got if isinstance(got, tuple) else (got,), want if isinstance(want, tuple) else (want,)):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
        logits = exported.class_logits(frames, exported.class_features(NAMES), backbone.logit_scale)
        torch.testing.assert_close(logits, published.logits(frames, NAMES), rtol=0, atol=1e-6)


def test_a_checkpoint_the_export_cannot_reproduce_is_refused(tmp_path):
    """ILA towers that differ from the named base CLIP: the export would take the base's, so no."""
    from omniclip.convert import convert as run_convert

    src, out = tmp_path / "ila.pth", tmp_path / "out"
    state = ila_state(load_backbone("omniclip-tiny"))
    state["visual.conv1.weight"] = state["visual.conv1.weight"] + 0.1
    save_published(src, state)
    with pytest.raises(CheckpointMismatchError, match=r"differs from the base CLIP: trunk\.conv1\.weight"):
        run_convert("video.ila", src, out, {"backbone": "omniclip-tiny"}, trust_pickle=True)
    assert not out.exists()


def test_zeroshot_scores_the_export_as_the_published_file(tmp_path, capsys, k400):  # noqa: F811
    source = test_vificlip.fresh_backbone(noise=0.05)
    src, out = tmp_path / "vificlip.pth", tmp_path / "out"
    save_published(src, test_vificlip.published_state(source))
    convert("video.vificlip", src, out, capsys)
    zeroshot.run(zeroshot_cfg(tmp_path, src, k400, "checkpoint_format=vificlip", "backbone_name=omniclip-tiny",
                              "trust_pickle=true"))
    from_file = written_metrics(tmp_path)
    zeroshot.run(zeroshot_cfg(tmp_path, out, k400))
    assert written_metrics(tmp_path) == from_file


def test_a_missing_or_untrusted_file_is_one_line(tmp_path, capsys):
    assert convert_main(["video.ila", str(tmp_path / "nope.pth"), str(tmp_path / "out"), *TINY]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "not found" in err and "nope.pth" in err
    src = tmp_path / "vificlip.pth"
    save_published(src, test_vificlip.published_state(test_vificlip.fresh_backbone()))
    assert convert_main(["video.vificlip", str(src), str(tmp_path / "out"), *TINY]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--trust-pickle" in err
    assert not (tmp_path / "out").exists()
