"""Clip transforms apply one set of random parameters to every frame; multi-scale and three-crop
positions; normalisation presets; mixup / cutmix with label smoothing."""

from __future__ import annotations

import pytest
import torch

from omniclip.errors import ConfigError
from omniclip.modalities.video.mixing import MixOptions, MixupCutmix, mix_batch, mixing_collate, smooth_one_hot
from omniclip.modalities.video.transforms import (
    NORMALIZATIONS, ClipTransform, MultiScaleCrop, Normalize, TransformOptions, three_crop)

T = 6


def base_clip(height: int = 120, width: int = 160, seed: int = 0) -> torch.Tensor:
    """Frame t = one random picture + t (no clipping), so per-frame differences are known."""
    base = torch.randint(20, 200, (3, height, width), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)
    return torch.stack([base + t for t in range(T)])


@pytest.mark.parametrize("crop", ["multiscale", "random_resized"])
def test_training_crop_and_flip_are_the_same_for_every_frame(crop):
    opts = TransformOptions(size=48, short_side=64, train_crop=crop, color_jitter=0.0, grayscale=0.0,
                            normalize="none")
    transform = ClipTransform(opts, train=True)
    outputs = []
    for seed in range(8):
        torch.manual_seed(seed)
        out = transform(base_clip())
        assert out.shape == (T, 3, 48, 48) and out.dtype == torch.uint8
        # resizing and cropping are linear: the same geometry keeps frame t = frame 0 + t (up to the
        # rounding of uint8 resampling); another crop of the random picture would differ by ~50
        for t in range(T):
            assert ((out[t].int() - out[0].int()) - t).abs().max() <= 1
        outputs.append(out[0])
    assert len({o.sum().item() for o in outputs}) > 4  # and the geometry does change between draws


def test_colour_jitter_and_grayscale_are_the_same_for_every_frame():
    transform = ClipTransform(TransformOptions(size=48, short_side=64, color_jitter=1.0, grayscale=0.5,
                                               normalize="none"), train=True)
    still = base_clip()[:1].repeat(T, 1, 1, 1)
    grey = 0
    for seed in range(10):
        torch.manual_seed(seed)
        out = transform(still)
        assert all(torch.equal(out[t], out[0]) for t in range(T))
        grey += int(torch.equal(out[0, 0], out[0, 1]) and torch.equal(out[0, 1], out[0, 2]))
    assert 0 < grey < 10


def test_multiscale_crop_draws_mmaction_candidates():
    crop = MultiScaleCrop()
    sizes = [int(256 * s) for s in (1, 0.875, 0.75, 0.66)]  # 256, 224, 192, 168
    pairs = {(w, h) for i, h in enumerate(sizes) for j, w in enumerate(sizes) if abs(i - j) <= 1}
    seen = set()
    torch.manual_seed(0)
    for _ in range(300):
        p = crop.make_params([torch.zeros(3, 256, 340)])
        assert (p["width"], p["height"]) in pairs
        sw, sh = (340 - p["width"]) // 4, (256 - p["height"]) // 4
        assert (p["left"], p["top"]) in {(0, 0), (4 * sw, 0), (0, 4 * sh), (4 * sw, 4 * sh), (2 * sw, 2 * sh)}
        seen.add((p["width"], p["height"]))
    assert seen == pairs


def test_three_crop_positions():
    columns = torch.arange(300).remainder(256).to(torch.uint8).expand(T, 3, 224, 300)
    crops = three_crop(columns, 224)
    assert crops.shape == (3, T, 3, 224, 224)
    assert [int(c[0, 0, 0, 0]) for c in crops] == [0, 38, 76]  # step (300 - 224) // 2
    rows = torch.arange(260).to(torch.uint8)[:, None].expand(T, 3, 260, 224)
    assert [int(c[0, 0, 0, 0]) for c in three_crop(rows, 224)] == [0, 18, 36]
    transform = ClipTransform(TransformOptions(size=32, short_side=36, num_crops=3, normalize="none"), train=False)
    assert transform(base_clip(40, 80)).shape == (3, T, 3, 32, 32)


def test_evaluation_resizes_short_side_then_centre_crops():
    transform = ClipTransform(TransformOptions(size=32, short_side=40, normalize="none"), train=False)
    clip = base_clip(60, 90)
    out = transform(clip)
    import torchvision.transforms.v2.functional as TF

    expected = TF.center_crop(TF.resize(clip, 40, antialias=True), 32)
    assert torch.equal(out, expected)
    assert torch.equal(transform(clip), out)  # deterministic


def test_normalisation_presets():
    white = torch.full((2, 3, 4, 4), 255, dtype=torch.uint8)
    clip_norm = Normalize("clip")(white)
    assert clip_norm[0, 0, 0, 0].item() == pytest.approx((1 - 0.48145466) / 0.26862954, rel=1e-5)
    imagenet = Normalize("imagenet")(white)
    assert imagenet[0, :, 0, 0].tolist() == pytest.approx([(255 - m) / s for m, s in zip(*NORMALIZATIONS["imagenet"])])
    out = ClipTransform(TransformOptions(size=32, short_side=32, normalize="imagenet"), train=False)(base_clip(32, 32))
    assert out.dtype == torch.float32
    with pytest.raises(ConfigError, match=r"config `normalize`: unknown normalisation `zca`"):
        TransformOptions(normalize="zca")


@pytest.mark.parametrize("kwargs, key", [({"short_side": 100}, "short_side"), ({"train_crop": "x"}, "train_crop"),
                                         ({"flip": 2.0}, "flip"), ({"num_crops": 2}, "num_crops")])
def test_bad_transform_options(kwargs, key):
    with pytest.raises(ConfigError, match=rf"config `{key}`"):
        TransformOptions(**kwargs)


# ---------------------------------------------------------------------------------- mixing


def test_label_smoothing():
    targets = smooth_one_hot(torch.tensor([2, 0]), 4, 0.1)
    torch.testing.assert_close(targets, torch.tensor([[0.025, 0.025, 0.925, 0.025], [0.925, 0.025, 0.025, 0.025]]))


def batch(b: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 256, (b, T, 3, 16, 20), generator=g, dtype=torch.uint8), torch.tensor([0, 1, 2, 3])


def test_mixup_mixes_clips_and_targets_with_one_weight():
    clips, labels = batch()
    opts = MixOptions(num_classes=5, mixup_alpha=0.8, cutmix_alpha=0.0)
    mixed, targets, info = mix_batch(clips, labels, opts, torch.Generator().manual_seed(0))
    w, perm = info["weight"], info["perm"]
    assert info["kind"] == "mixup" and 0 < w < 1 and mixed.dtype == torch.float32
    torch.testing.assert_close(mixed, w * clips.float() + (1 - w) * clips.float()[perm])
    smooth = smooth_one_hot(labels, 5, 0.1)
    torch.testing.assert_close(targets, w * smooth + (1 - w) * smooth[perm])
    torch.testing.assert_close(targets.sum(1), torch.ones(4))
    again, _, _ = mix_batch(clips, labels, opts, torch.Generator().manual_seed(0))
    assert torch.equal(again, mixed)


def test_cutmix_pastes_one_box_into_every_frame_and_weights_by_area():
    clips, labels = batch()
    opts = MixOptions(num_classes=4, mixup_alpha=0.0, cutmix_alpha=1.0, smoothing=0.0)
    for seed in range(5):
        mixed, targets, info = mix_batch(clips, labels, opts, torch.Generator().manual_seed(seed))
        top, bottom, left, right = info["box"]
        perm = info["perm"]
        inside = torch.zeros(16, 20, dtype=torch.bool)
        inside[top:bottom, left:right] = True
        assert torch.equal(mixed[..., inside], clips[perm].float()[..., inside])  # every frame, same box
        assert torch.equal(mixed[..., ~inside], clips.float()[..., ~inside])
        w = 1 - inside.sum().item() / (16 * 20)
        assert info["weight"] == pytest.approx(w)
        torch.testing.assert_close(targets, w * torch.eye(4)[labels] + (1 - w) * torch.eye(4)[labels[perm]])


def test_mixing_collate_turns_a_batch_into_soft_targets():
    from omniclip.modalities.video import collate_views

    samples = [{"inputs": torch.zeros(T, 3, 8, 8, dtype=torch.uint8) + i, "label": i, "path": f"v{i}"}
               for i in range(3)]
    collate = mixing_collate(collate_views, MixOptions(num_classes=3))
    torch.manual_seed(0)
    out = collate(samples)
    assert out["inputs"].shape == (3, T, 3, 8, 8) and out["labels"].shape == (3, 3)
    torch.testing.assert_close(out["labels"].sum(1), torch.ones(3))
    assert MixupCutmix(MixOptions(num_classes=3))({"skipped": []}) == {"skipped": []}
