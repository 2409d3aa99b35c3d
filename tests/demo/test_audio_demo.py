import argparse
import json

import pytest
import torch

from omniclip.demo.audio_demo import (
    SPLITS,
    VARIANTS,
    build_audio_lens,
    main,
    make_sound_set,
    preset,
    pretrain_sound_clip,
)
from dataclasses import replace

from omniclip.demo.dataset import PairedDataset
from omniclip.demo.experiment import parse_held_out as _held_out
from omniclip.demo.lens import PatchTokens, PooledHead
from omniclip.demo.sounds import CLASS_NAMES, log_mel, spectrogram_image
from omniclip.trunk import ViTTrunk
from tests.demo.results import accuracies


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("audio-demo")
    assert main(["--quick", "--out", str(out), "--threads", "1", "--held-out", "falling chirp,hiss"]) == 0
    return out, json.loads((out / "results.json").read_text())



def test_quick_run_writes_results_and_confusion_png(quick_run):
    out, results = quick_run
    assert (out / "confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert {"classes", "chance", "clip", "variants", "splits", "summary", "seconds", "config"} <= set(results)
    assert results["classes"] == list(CLASS_NAMES)
    assert results["chance"]["all"] == pytest.approx(1 / 10)
    assert results["chance"]["seen"] == pytest.approx(1 / 10)
    assert results["chance"]["held_out"] == pytest.approx(1 / 10)
    assert results["chance"]["held_out_among_held_out"] == pytest.approx(1 / 2)
    assert results["variants"] == list(VARIANTS)
    (split,) = results["splits"]
    assert split["held_out"] == ["falling chirp", "hiss"]
    for record in [split["image_tower"], *split["variants"].values()]:
        assert all(0.0 <= value <= 1.0 for value in accuracies(record))
        confusion = record["raw"]["confusion"]
        assert len(confusion) == 10 and all(len(row) == 10 for row in confusion)
        assert sum(map(sum, confusion)) == 10 * results["config"]["test_per_class"]
    records = {**split["variants"], "image_tower": split["image_tower"]}
    for name, record in records.items():  # one split: its mean is itself
        assert results["summary"][name]["calibrated"]["held_out"] == record["calibrated"]["held_out"]


def test_clip_weights_are_cached_and_reused(quick_run):
    out, results = quick_run
    weights = out / results["clip"]["hash"] / "model.safetensors"
    cfg = preset("quick")
    messages = []
    _, info = pretrain_sound_clip(cfg.sounds, cfg.clip, out, messages.append)
    assert messages == [f"tiny CLIP: reusing {weights}"]
    assert info == results["clip"]


def test_presets_and_held_out_option():
    assert preset("default").splits == SPLITS[:3] and preset("default").curve_sizes == ()
    assert preset("study").splits == SPLITS and preset("study").curve_sizes == (4, 16, 64)
    assert preset("quick").splits == SPLITS[:1]
    assert preset("default", splits=[(0, 1)]).splits == ((0, 1),)
    assert _held_out("rumble, tone", CLASS_NAMES) == (8, 0)
    with pytest.raises(argparse.ArgumentTypeError, match=r"unknown classes \['meow'\]"):
        _held_out("tone,meow", CLASS_NAMES)
    with pytest.raises(argparse.ArgumentTypeError, match="at least one class must stay seen"):
        _held_out(",".join(CLASS_NAMES), CLASS_NAMES)
    with pytest.raises(ValueError, match="unknown preset `big`"):
        preset("big")


def test_dataset_samples_pair_each_clip_with_its_own_spectrogram():
    cfg = preset("quick")
    clips = make_sound_set(cfg.sounds, [1, 4], 2, seed=5, name="t", image_size=32)
    assert clips.labels.tolist() == [1, 1, 4, 4]
    sample = PairedDataset(clips)[3]
    assert set(sample) == {"inputs", "label", "text", "image", "image_key", "path"}
    assert sample["label"] == 4 and sample["image_key"] == "t/3" and sample["text"] == clips.captions[3]
    expected = spectrogram_image(log_mel(sample["inputs"][None], cfg.sounds), 32)[0]
    torch.testing.assert_close(sample["image"], expected)


def test_lens_variants_share_the_lens_and_differ_in_the_trunk(quick_run):
    out, _ = quick_run
    cfg = preset("quick")
    backbone, _ = pretrain_sound_clip(cfg.sounds, cfg.clip, out, lambda _: None)
    waves = make_sound_set(cfg.sounds, [0, 9], 1, seed=1, name="x").inputs
    fbank = replace(cfg.lens, tokenizer="fbank")
    models = {v: build_audio_lens(v, backbone, cfg.sounds, fbank, seed=0) for v in VARIANTS}
    for variant, model in models.items():
        assert model.tokenizer.num_tokens == 8 * 12  # 64 mel x 96 frames in 8 x 8 patches
        assert model.lens.num_latents == 16  # the 4 x 4 patch grid of the 32 px ViT
        embedding = model.eval().encode(waves)
        assert embedding.shape == (2, 64)
        torch.testing.assert_close(embedding.norm(dim=-1), torch.ones(2))
        trainable = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
        assert trainable == ({"tokenizer", "lens", "trunk"} if variant == "no_vit" else {"tokenizer", "lens"})
    torch.testing.assert_close(models["vit"].lens.latents, models["no_vit"].lens.latents)
    # The default grid tokenizer: one token per patch of the 4 x 4 grid, no Perceiver between.
    grid = {v: build_audio_lens(v, backbone, cfg.sounds, cfg.lens, seed=0) for v in VARIANTS}
    for model in grid.values():
        assert model.tokenizer.num_tokens == 16 and isinstance(model.lens, PatchTokens)
    for name, weight in grid["vit"].tokenizer.state_dict().items():
        torch.testing.assert_close(grid["random_vit"].tokenizer.state_dict()[name], weight)
    assert isinstance(models["no_vit"].trunk, PooledHead) and isinstance(models["vit"].trunk, ViTTrunk)
    pretrained = backbone.visual.transformer.resblocks[0].mlp.c_fc.weight
    assert models["vit"].trunk.blocks[0].mlp.c_fc.weight is pretrained
    assert not torch.allclose(models["random_vit"].trunk.blocks[0].mlp.c_fc.weight, pretrained)
    with pytest.raises(ValueError, match="unknown lens variant `big`"):
        build_audio_lens("big", backbone, cfg.sounds, cfg.lens, seed=0)
