"""ViT-Lens audio checkpoint import: the published key layout, strict mapping, and the converted forward.

Checkpoints are built here with random weights in the published layout: ViT-Lens' three-tower
model (``visual.*`` audio tower without conv1, ``image.*`` CLIP image tower, text tower at the
top level) wrapped as ``{epoch, name, state_dict, optimizer}`` with DDP ``module.`` prefixes.
"""

from __future__ import annotations


import open_clip
import pytest
import torch
import torch.nn.functional as F
import torchaudio

from omniclip.convert import get_converter, main
from omniclip.model import load_lens_model
from omniclip.modalities.audio.convert import PUBLISHED
from tests.reference import mapped_shapes, perceiver_reference_keys, reference_perceiver, vitlens_three_tower_keys


def test_published_layout_maps_every_key_strictly():
    with torch.device("meta"):
        clip = open_clip.create_model("ViT-L-14", device="meta")
        target = get_converter("audio.vitlens-l").build(PUBLISHED)
    tokenizer = {"conv1.weight": (1024, 1, 14, 14), "pos_emb": (600, 1024)}
    lens = perceiver_reference_keys(1024, 1024, 256, 2, 64, 16 * 64, self_per_cross=3)
    keys = vitlens_three_tower_keys(clip, tokenizer, lens)
    # audio tower 295 (no conv1) + image tower 296 + text tower 150 + tokenizer 2 + lens 1 + 2 x (14 + 3 x 12)
    assert len(keys) == 295 + 296 + 150 + 2 + 1 + 2 * 50
    expected = {k: tuple(v.shape) for k, v in target.state_dict().items()}
    assert mapped_shapes("audio.vitlens-l", keys) == expected
    assert [k for k in expected if k.startswith("trunk.")] == ["trunk.class_embedding"]  # --unlock-cls


# ---------------------------------------------------------------------------------------------- forward

MEL, FRAMES, PATCH, STRIDE = 32, 64, 8, 10  # tiny CLIP: width 64, patch 8 -> 3 x 6 = 18 tokens
LENS = {"input_dim": 64, "latent_dim": 64, "num_latents": 16, "depth": 2, "cross_dim_head": 16, "latent_heads": 2,
        "latent_dim_head": 16, "self_per_cross_attn": 3}


def small_overrides() -> list[str]:
    sets = ["backbone.name=omniclip-tiny", "backbone.pretrained=null", f"tokenizer.num_mel_bins={MEL}",
            f"tokenizer.target_frames={FRAMES}"]
    return ["--set", *sets, *(f"lens.{k}={v}" for k, v in LENS.items())]


def small_checkpoint(tiny_clip: torch.nn.Module, seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    lens_keys = perceiver_reference_keys(64, 64, 16, 2, 16, 2 * 16, self_per_cross=3)
    lens = {k: torch.randn(s, generator=gen) * (0.15 if len(s) > 1 else 0.1) for k, s in lens_keys.items()}
    lens.update({k: 1 + 0.1 * torch.randn(s, generator=gen) for k, s in lens_keys.items() if k.endswith("norm.weight")
                 or k.endswith("norm_context.weight")})
    state = {"visual.visual_adapter.conv1.weight": torch.randn(64, 1, PATCH, PATCH, generator=gen) * 0.1,
             "visual.visual_adapter.pos_emb": torch.randn(18, 64, generator=gen) * 0.1}
    state.update({f"visual.perceiver.{k}": v for k, v in lens.items()})
    clip = tiny_clip.state_dict()
    state.update({k: v.clone() for k, v in clip.items() if k.startswith("visual.") and not k.startswith("visual.conv1")})
    state["visual.class_embedding"] = torch.randn(64, generator=gen)  # trained (--unlock-cls)
    state.update({f"image.{k[7:]}": v.clone() for k, v in clip.items() if k.startswith("visual.")})
    state.update({k: v.clone() for k, v in clip.items() if not k.startswith("visual.")})
    return {"epoch": 80, "name": "audio/vitlensL_AS_dur5", "state_dict": {f"module.{k}": v for k, v in state.items()},
            "optimizer": {"state": {}, "param_groups": [{"lr": 0.1, "params": [0]}]}}


def reference_tokens(waves: torch.Tensor, s: dict[str, torch.Tensor]) -> torch.Tensor:
    """torchaudio's Kaldi fbank per clip, zero-padded, normalised; conv as unfold + matmul."""
    out = []
    for wave in waves:
        fbank = torchaudio.compliance.kaldi.fbank(
            (wave - wave.mean())[None], htk_compat=True, sample_frequency=16000, use_energy=False,
            window_type="hanning", num_mel_bins=MEL, dither=0.0, frame_shift=10)
        fbank = F.pad(fbank, (0, 0, 0, FRAMES - fbank.shape[0]))
        image = ((fbank + 4.2677393) / 4.5689974).T  # [mel, time]
        patches = image.unfold(0, PATCH, STRIDE).unfold(1, PATCH, STRIDE)  # [3, 6, P, P]
        out.append(patches.reshape(-1, PATCH * PATCH) @ s["conv1.weight"].reshape(64, -1).T + s["pos_emb"])
    return torch.stack(out)


def test_convert_cli_writes_a_lens_export_whose_forward_matches_the_raw_tensors(tmp_path, tiny_backbone, capsys):
    ckpt = small_checkpoint(tiny_backbone.model)
    src = tmp_path / "vitlensL_audio.pt"
    torch.save(ckpt, src)
    assert main(["audio.vitlens-l", str(src), str(tmp_path / "out"), *small_overrides()]) == 0
    assert "loaded 104 tensors" in capsys.readouterr().out  # 2 tokenizer + 101 lens + class token
    model, _, config = load_lens_model(tmp_path / "out", backbone=tiny_backbone)
    assert config["converted_from"]["converter"] == "audio.vitlens-l" and config["trunk"]["unlock_class_token"]
    raw = {k[len("module."):]: v for k, v in ckpt["state_dict"].items()}
    tok = {k[len("visual.visual_adapter."):]: v for k, v in raw.items() if k.startswith("visual.visual_adapter.")}
    lens = {k[len("visual.perceiver."):]: v for k, v in raw.items() if k.startswith("visual.perceiver.")}
    waves = 0.1 * torch.randn(2, 5000, generator=torch.Generator().manual_seed(5))  # 0.31 s: 30 of 64 frames
    visual = tiny_backbone.model.visual
    with torch.no_grad():
        got = model.encode(waves)
        tokens = reference_tokens(waves, tok)
        torch.testing.assert_close(model.tokenizer(waves), tokens, rtol=1e-4, atol=1e-4)
        latents = reference_perceiver(lens, tokens, LENS)
        x = torch.cat([raw["visual.class_embedding"].expand(2, 1, -1), latents], 1) + visual.positional_embedding
        x = visual.ln_pre(x)
        for block in visual.transformer.resblocks:
            x = block(x)
        expected = F.normalize(visual.ln_post(x[:, 0]) @ visual.proj, dim=-1)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_convert_reports_every_missing_and_unexpected_key(tmp_path, tiny_backbone, capsys):
    ckpt = small_checkpoint(tiny_backbone.model)
    state = ckpt["state_dict"]
    del state["module.visual.visual_adapter.pos_emb"]
    state["module.visual.visual_adapter.pos_embed"] = torch.zeros(18, 64)
    state["module.visual.audio_head.weight"] = torch.zeros(3)
    torch.save(ckpt, tmp_path / "bad.pt")
    assert main(["audio.vitlens-l", str(tmp_path / "bad.pt"), str(tmp_path / "out"), *small_overrides()]) == 1
    err = capsys.readouterr().err
    assert "1 missing, 2 unexpected" in err
    assert "tokenizer.pos_emb  (closest unexpected: visual.visual_adapter.pos_embed -> tokenizer.pos_embed)" in err
    assert "visual.audio_head.weight (no key-map rule matches)" in err
    assert not (tmp_path / "out" / "lens.safetensors").exists()


def test_converter_is_listed_and_refuses_auto_sizes(capsys):
    assert main(["list"]) == 0
    assert "audio.vitlens-l" in capsys.readouterr().out
    config = {**PUBLISHED, "lens": {**PUBLISHED["lens"], "latent_dim": "auto"}}
    with pytest.raises(Exception, match=r"config `lens.latent_dim`: a converter needs explicit lens sizes"):
        get_converter("audio.vitlens-l").build(config)
