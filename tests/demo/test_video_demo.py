import json

import pytest
import torch

from omniclip.demo.video_demo import (
    SPLITS,
    VARIANTS,
    build_model,
    held_out_classes,
    main,
    make_test_set,
    opposite_scores,
    preset,
    pretrain_video_clip,
)
from omniclip.demo.video_world import (
    AXES,
    MOTIONS,
    VideoWorldConfig,
    class_index,
    frame_draw,
    generate_clips,
    opposite,
    reverse,
    split_class,
)
from omniclip.ila import ILAVideoModel
from tests.demo.results import accuracies

WORLD = VideoWorldConfig(num_frames=6, render_points=1024)
LEFT, RIGHT, UP, DOWN, ANTI, CLOCK, GROW, SHRINK = range(8)


def draw(motion: int, seed: int = 4, shapes=(0, 1, 2, 3), world: VideoWorldConfig = WORLD):
    shapes = torch.tensor(shapes)
    return generate_clips(world, shapes, torch.full_like(shapes, motion), torch.Generator().manual_seed(seed))


def silhouette(frames: torch.Tensor) -> torch.Tensor:
    """Masks [..., S, S] of the object (channel 1 is 1 on it, -1 elsewhere)."""
    return frames[..., 1, :, :] > 0


def centroid(frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Silhouette centroid (column, row) in pixels, [B, T] each."""
    mask = silhouette(frames).float()
    size = mask.shape[-1]
    area = mask.sum((-2, -1))
    cols = (mask * torch.arange(size)).sum((-2, -1)) / area
    rows = (mask * torch.arange(size)[:, None]).sum((-2, -1)) / area
    return cols, rows


@pytest.mark.parametrize("motion", [LEFT, UP, ANTI, GROW])
def test_a_clip_reversed_in_time_is_exactly_the_opposite_motion_from_the_same_draws(motion):
    clips, partner = draw(motion), draw(int(opposite(torch.tensor(motion))))
    assert torch.equal(clips.frames.flip(1), partner.frames)
    assert not torch.equal(clips.frames, partner.frames)  # the motion is visible: frames do change
    assert torch.equal(reverse(clips).frames, partner.frames)
    assert torch.equal(reverse(clips).motions, partner.motions)
    # the set of frames is the same, so the mean frame is too
    torch.testing.assert_close(clips.frames.mean(1), partner.frames.mean(1), rtol=0, atol=1e-6)


def test_opposites_pair_up_as_named():
    named = {MOTIONS[m]: MOTIONS[int(opposite(torch.tensor(m)))] for m in range(8)}
    assert named == {"moving left": "moving right", "moving right": "moving left", "moving up": "moving down",
                     "moving down": "moving up", "turning anticlockwise": "turning clockwise",
                     "turning clockwise": "turning anticlockwise", "growing": "shrinking", "shrinking": "growing"}


@pytest.mark.parametrize("motion, d_col, d_row", [(LEFT, -1, 0), (RIGHT, 1, 0), (UP, 0, -1), (DOWN, 0, 1)])
def test_moving_shapes_shift_by_their_speed_in_pixels_per_frame(motion, d_col, d_row):
    clips = draw(motion)
    speed_px = clips.velocity.norm(dim=1) / WORLD.pixel  # [B]
    assert bool(((speed_px >= WORLD.speed_px[0]) & (speed_px <= WORLD.speed_px[1])).all())
    cols, rows = centroid(clips.frames)
    step_col, step_row = cols.diff(dim=1).mean(1), rows.diff(dim=1).mean(1)  # mean shift per frame
    torch.testing.assert_close(step_col, d_col * speed_px, rtol=0, atol=0.15)
    torch.testing.assert_close(step_row, d_row * speed_px, rtol=0, atol=0.15)


def test_an_integer_pixel_step_shifts_the_silhouette_exactly():
    world = VideoWorldConfig(num_frames=4, render_points=1024, speed_px=(2.0, 2.0))
    clips = draw(RIGHT, world=world)
    masks = silhouette(clips.frames)
    shifted = torch.roll(masks[:, :-1], shifts=2, dims=-1)  # one frame later = two columns to the right
    agree = (shifted == masks[:, 1:]).float().mean()
    assert agree > 0.995  # a pixel edge may round the other way


def test_growing_scales_the_silhouette_area_and_turning_keeps_it():
    grow, turn = draw(GROW), draw(ANTI)
    area = silhouette(grow.frames).float().sum((-2, -1))  # [B, T]
    ratio = area[:, 1:] / area[:, :-1]
    expected = torch.exp(2 * grow.growth)[:, None].expand_as(ratio)  # area ~ scale^2
    torch.testing.assert_close(ratio.mean(1), expected[:, 0], rtol=0.05, atol=0)
    assert bool((grow.growth > 0).all()) and bool((draw(SHRINK).growth < 0).all())
    turning = silhouette(turn.frames).float().sum((-2, -1))
    assert float((turning.amax(1) / turning.amin(1)).max()) < 1.25  # a turn is not a zoom
    cols, rows = centroid(turn.frames)
    assert float((cols.amax(1) - cols.amin(1)).max()) < 2.5  # nor a translation (shapes are not centred on their centroid)


def test_every_frame_keeps_the_shape_inside_the_picture():
    for motion in range(8):
        masks = silhouette(draw(motion, seed=motion).frames)
        border = masks[..., 0, :] | masks[..., -1, :] | masks[..., :, 0] | masks[..., :, -1]
        assert not bool(border.any()), MOTIONS[motion]


def test_pretraining_frames_carry_captions_of_their_shape_and_place():
    images, _, captions = frame_draw(WORLD)(torch.tensor([0, 1, 2, 3] * 8), torch.Generator().manual_seed(0))
    assert images.shape == (32, 3, 32, 32)
    from omniclip.demo.world import SYNONYMS

    for label, caption in zip([0, 1, 2, 3] * 8, captions):
        assert any(word in caption for word in SYNONYMS[WORLD.shapes[label]]), caption
    assert any(" left" in c or " right" in c or " top" in c or " bottom" in c for c in captions)


def test_classes_held_out_and_test_set_pairs():
    classes = WORLD.classes
    assert len(classes) == 4 * 8 and classes[class_index(2, GROW)] == "torus growing"
    assert split_class(torch.tensor([class_index(3, CLOCK)])) == (torch.tensor([3]), torch.tensor([CLOCK]))
    held = held_out_classes(SPLITS[0])
    assert [classes[c] for c in held] == ["box moving left", "box moving right", "cone moving up", "cone moving down",
                                         "torus turning anticlockwise", "torus turning clockwise", "capsule growing",
                                         "capsule shrinking"]
    for split in SPLITS:  # one combination per shape and per axis: everything stays seen with partners
        assert sorted(s for s, _ in split) == [0, 1, 2, 3] and sorted(a for _, a in split) == [0, 1, 2, 3]
    test = make_test_set(WORLD, 2, seed=3)
    assert torch.bincount(test.labels, minlength=32).tolist() == [2] * 32
    assert torch.equal(test.pair[test.pair], torch.arange(len(test)))
    assert torch.equal(test.frames[test.pair].flip(1), test.frames)
    shapes, motions = split_class(test.labels)
    assert torch.equal(test.labels[test.pair], class_index(shapes, opposite(motions)))


def test_opposite_scores_count_the_true_class_against_its_opposite_only():
    labels = torch.tensor([class_index(0, LEFT), class_index(0, RIGHT), class_index(1, GROW), class_index(1, SHRINK)])
    logits = torch.zeros(4, 32)
    logits[0, class_index(0, LEFT)] = 1.0  # right
    logits[1, class_index(0, LEFT)] = 1.0  # wrong: it prefers the opposite motion
    logits[2, class_index(3, UP)] = 5.0  # another class wins overall, but it beats its opposite
    logits[2, class_index(1, GROW)] = 1.0
    logits[3, class_index(1, GROW)] = 1.0  # wrong
    held = torch.zeros(32, dtype=torch.bool)
    held[[int(class_index(1, GROW)), int(class_index(1, SHRINK))]] = True
    scores = opposite_scores(logits, labels, held)
    assert scores["seen"] == 0.5 and scores["held_out"] == 0.5 and scores["all"] == 0.5
    assert scores["axes"]["horizontal"] == 0.5 and scores["axes"]["scale"] == 0.5
    assert scores["axes"]["vertical"] != scores["axes"]["vertical"]  # no clip of that axis: nan


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("video-demo")
    assert main(["--quick", "--out", str(out), "--threads", "1"]) == 0
    return out, json.loads((out / "results.json").read_text())


def test_quick_run_writes_results_and_confusion_png(quick_run):
    out, results = quick_run
    assert (out / "confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert {"classes", "motions", "chance", "clip", "variants", "splits", "summary", "seconds", "config"} <= set(results)
    assert results["classes"] == list(VideoWorldConfig().classes)
    assert results["chance"] == pytest.approx({"all": 1 / 32, "seen": 1 / 32, "held_out": 1 / 32,
                                               "held_out_among_held_out": 1 / 8, "opposite": 0.5})
    assert results["variants"] == list(VARIANTS)
    (split,) = results["splits"]
    assert split["held_out_combos"] == ["box horizontal", "cone vertical", "torus rotation", "capsule scale"]
    for name, record in split["variants"].items():
        assert all(0.0 <= value <= 1.0 for value in accuracies(record))
        assert set(record["opposite"]) == {"all", "seen", "held_out", "axes"} and set(record["opposite"]["axes"]) == set(AXES)
        confusion = record["raw"]["confusion"]
        assert len(confusion) == 32 and sum(map(sum, confusion)) == 32 * results["config"]["test_per_class"]
        assert ("train" in record) == (name != "frozen_mean")
        assert results["summary"][name]["opposite"]["held_out"] == record["opposite"]["held_out"]
    # mean pooling cannot tell a clip from its reversal: exactly one of each pair beats its opposite
    for name in ("frozen_mean", "vifi"):
        assert split["variants"][name]["reversal_distance"] == pytest.approx(0.0, abs=1e-5)
        assert split["variants"][name]["opposite"]["all"] == 0.5


def test_clip_weights_are_cached_and_reused(quick_run):
    out, results = quick_run
    cfg = preset("quick")
    messages = []
    _, info = pretrain_video_clip(cfg.world, cfg.clip, out, messages.append)
    assert messages == [f"tiny CLIP: reusing {out / results['clip']['hash'] / 'model.safetensors'}"]
    assert info == results["clip"]


def test_mean_pooling_embeds_a_clip_and_its_reversal_identically_and_ila_need_not(quick_run):
    out, _ = quick_run
    cfg = preset("quick")
    backbone, _ = pretrain_video_clip(cfg.world, cfg.clip, out, lambda _: None)
    clips = draw(LEFT, seed=8, world=cfg.world).frames
    for variant in ("frozen_mean", "vifi"):
        model = build_model(variant, backbone, cfg, seed=0)
        with torch.no_grad():
            forward, backward = model.eval().encode(clips), model.encode(clips.flip(1))
        torch.testing.assert_close(forward, backward, rtol=0, atol=1e-6)
        assert not torch.allclose(forward[0], forward[1], atol=1e-3)  # different clips do differ
    ila = build_model("ila", backbone, cfg, seed=0)
    assert isinstance(ila, ILAVideoModel)
    with torch.no_grad():  # MIT's frame positions make frame order matter once its layer is not ~0
        for parameter in ila.temporal.parameters():  # (X-CLIP's init: std 0.02, nearly a plain mean)
            parameter.normal_(0, 0.5)
        forward, backward = ila.eval().encode(clips), ila.encode(clips.flip(1))
    assert (forward - backward).abs().max() > 1e-4
    trainable = {n.split(".")[0] for n, p in ila.named_parameters() if p.requires_grad}
    assert trainable == {"trunk", "temporal", "text"}  # the ILA hooks live under the trunk; its blocks stay frozen
    assert all(not p.requires_grad for n, p in ila.named_parameters() if n.startswith("trunk.blocks."))
    own = set(ila.trainable_state_dict())
    assert "text.blocks.0.attn.in_proj_weight" in own and "text.token_embedding.weight" not in own
    assert ila.text.blocks[0] is not backbone.model.transformer.resblocks[0]  # a copy: the CLIP never changes


def test_presets():
    assert preset("default").splits == SPLITS[:1]
    assert preset("study").splits == SPLITS
    assert preset("default", split=1).splits == (SPLITS[1],)
    with pytest.raises(ValueError, match="unknown preset `big`"):
        preset("big")
    with pytest.raises(ValueError, match="leave the picture"):
        VideoWorldConfig(radius_range=(0.5, 0.8))


def test_motion_words_add_one_shared_vector_per_motion_and_shape():
    """Zero at first (the class text is the text tower's, normalised); then class (s, m) gets
    exactly ``words[m] + shape_words[s]`` added before renormalising, shared by every class with
    that motion or shape (how a held-out pairing inherits what its parts learned elsewhere)."""
    import torch.nn.functional as F

    from omniclip.demo.video_demo import MotionWords
    from omniclip.demo.video_world import MOTIONS, class_index

    torch.manual_seed(0)
    words = MotionWords(embed_dim=5, num_shapes=3)
    classes = class_index(torch.tensor([0, 2, 1, 2]), torch.tensor([1, 1, 6, 7]))
    features = torch.randn(4, 5)
    torch.testing.assert_close(words(features, classes), F.normalize(features, dim=-1))
    with torch.no_grad():
        words.words.copy_(torch.randn(len(MOTIONS), 5))
        words.shape_words.copy_(torch.randn(3, 5))
    expected = F.normalize(F.normalize(features, dim=-1) + words.words[[1, 1, 6, 7]]
                           + words.shape_words[[0, 2, 1, 2]], dim=-1)
    torch.testing.assert_close(words(features, classes), expected)


def test_held_out_option_names_shape_axis_pairs():
    import argparse

    from omniclip.demo.video_demo import parse_held_out_combos, preset

    assert parse_held_out_combos("box:horizontal, torus:scale") == ((0, 0), (2, 3))
    with pytest.raises(argparse.ArgumentTypeError, match="'ball:scale': give shape:axis with a shape of box, cone"):
        parse_held_out_combos("ball:scale")
    with pytest.raises(argparse.ArgumentTypeError, match="at least one and not every"):
        parse_held_out_combos(" , ")
    assert preset("default", held_out=[((1, 2),)]).splits == (((1, 2),),)
