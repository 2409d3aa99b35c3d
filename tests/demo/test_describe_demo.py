"""The describing demo: scoring, tokenizer, prompt layout, the lens's features in the head's
layout, the quick run end to end and the CLI."""

from __future__ import annotations

import json

import pytest
import torch

from omniclip.blip_trunk import BlipVisionTrunk
from omniclip.demo import describe_demo
from omniclip.demo.captioner import (
    QUESTION,
    SPECIAL_TOKENS,
    CaptionerConfig,
    build_captioner,
    build_tokenizer,
    caption_vocabulary,
    make_prompt,
    training_batch,
)
from omniclip.demo.describe_demo import (
    AlignConfig,
    TowerAlignment,
    build_tower_lens,
    describe,
    image_features,
    lens_features,
    named_shapes,
    names_right_shape,
    preset,
    score_descriptions,
    tower_tokens,
)
from omniclip.demo.lens import LensConfig
from omniclip.demo.render import render
from omniclip.demo.run import main as demo_main
from omniclip.demo.world import CLASS_NAMES, WorldConfig, generate
from omniclip.heads.instructblip import InstructBlipHead

CLASSES = CLASS_NAMES


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer(caption_vocabulary(WorldConfig()))


@pytest.fixture(scope="module")
def captioner(tokenizer):
    model = build_captioner(CaptionerConfig(), tokenizer).eval()
    return model.requires_grad_(False)


# --------------------------------------------------------------------------- scoring
@pytest.mark.parametrize("text, name, right", [
    ("a depth image of a Cube.", "box", True),  # a synonym, any case, punctuation apart
    ("A DONUT!", "torus", True),
    ("a 3d model of a traffic cone lying on its side", "cone", True),
    ("a hollow cylinder.", "tube", True),  # the longer synonym wins: a tube, not a cylinder
    ("a hollow cylinder.", "cylinder", False),
    ("a half sphere", "dome", True),
    ("a half sphere", "sphere", False),
    ("a large sphere.", "box", False),  # the wrong shape
    ("a box next to a ball", "box", False),  # two shapes named
    ("a cube, a crate and a block", "box", True),  # three synonyms of one class
    ("a cubed thing", "box", False),  # whole words only
    ("", "box", False),
])
def test_names_right_shape(text, name, right):
    assert names_right_shape(text, name, CLASSES) is right


def test_named_shapes_in_order():
    assert named_shapes("A tall pill beside a square pyramid, then a hollow cylinder.", CLASSES) == \
        ["capsule", "pyramid", "tube"]


def test_score_descriptions_against_hand_counts():
    labels = torch.tensor([0, 0, 1, 4, 4, 9])  # box, box, sphere, torus, torus, tube
    texts = ["a box.", "a ball.", "a globe", "a ring", "", "a pipe and a box"]
    scores = score_descriptions(texts, labels, CLASSES, held_out=(4, 9))
    # seen: box right, box wrong (ball), sphere right -> 2/3; held out: ring right, nothing, two shapes -> 1/3
    assert scores["seen"] == pytest.approx(2 / 3)
    assert scores["held_out"] == pytest.approx(1 / 3)
    assert scores["all"] == pytest.approx(3 / 6)
    assert scores["no_shape"] == pytest.approx(1 / 6)
    assert (scores["most_common_shape"], scores["most_common_share"]) == ("sphere", pytest.approx(2 / 6))
    assert scores["held_out_naming_a_held_out_class"] == pytest.approx(2 / 3)  # ring, pipe (first named)
    assert scores["per_class"] == {"box": 0.5, "sphere": 1.0, "torus": 0.5, "tube": 0.0}


# --------------------------------------------------------------------------- tokenizer and prompts
def test_tokenizer_round_trips_every_caption(tokenizer):
    assert [tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS] == [0, 1, 2, 3, 4]
    shapes = generate(WorldConfig(num_points=1, render_points=1), torch.arange(300) % 10,
                      torch.Generator().manual_seed(123))
    for caption in [*shapes.captions, QUESTION]:
        ids = tokenizer(caption, add_special_tokens=False)["input_ids"]
        assert tokenizer.unk_token_id not in ids, caption
        assert tokenizer.decode(ids) == caption
    assert tokenizer("a Zebra", add_special_tokens=False)["input_ids"][1] == tokenizer.unk_token_id
    with pytest.raises(ValueError, match="repeats or shadows"):
        build_tokenizer(["a", "a"])


def test_training_batch_layout(tokenizer):
    ids = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    batch = training_batch(tokenizer, 3, ["a cube.", "a large tall box lying on its side"])
    head = [4, 4, 4, 2, *ids(QUESTION)]  # image tokens, BOS, the question
    first = head + ids("a cube.") + [3]
    second = head + ids("a large tall box lying on its side") + [3]
    assert batch["input_ids"].tolist() == [first + [0] * (len(second) - len(first)), second]
    assert batch["attention_mask"].tolist() == [[1] * len(first) + [0] * (len(second) - len(first)), [1] * len(second)]
    assert batch["labels"][1].tolist() == [-100] * len(head) + second[len(head):]
    assert batch["labels"][0].tolist() == [-100] * len(head) + first[len(head):] + [-100] * (len(second) - len(first))
    assert batch["qformer_input_ids"].tolist() == [ids(QUESTION)] * 2
    prompt = make_prompt(tokenizer, 3, 2)
    assert prompt.input_ids.tolist() == [head] * 2 and prompt.length == len(head)


# --------------------------------------------------------------------------- features and the head
def test_lens_features_have_the_towers_layout_and_feed_the_head(captioner, tokenizer):
    trunk, head = BlipVisionTrunk(captioner.vision_model), InstructBlipHead(captioner)
    shapes = generate(WorldConfig(num_points=128, render_points=1024), torch.tensor([0, 4, 7]),
                      torch.Generator().manual_seed(5))
    images = render(shapes.surface, 32)
    with torch.no_grad():
        reference = captioner.vision_model(pixel_values=images).last_hidden_state  # transformers' post-LN output
    features = image_features(trunk, images)
    assert features.shape == (3, 1 + (32 // CaptionerConfig().patch_size) ** 2, 64)
    torch.testing.assert_close(features, reference, rtol=0, atol=1e-5)
    for cfg in (LensConfig(tokenizer="pointbert", num_groups=8, group_size=8), LensConfig(tokenizer="projection")):
        lens = build_tower_lens(trunk, cfg, seed=0)
        clouds = lens_features(lens, shapes.points)
        with torch.no_grad():  # the same path by hand: tokenizer -> lens -> tower blocks -> post-LN
            by_hand = trunk.ln_post(trunk.forward_features(lens.lens(lens.tokenizer(shapes.points))))
        assert clouds.shape == features.shape
        torch.testing.assert_close(clouds, by_hand, rtol=0, atol=1e-6)
    assert lens.tokenizer.num_tokens == 16 and lens.lens.num_tokens == 16  # the projection: the tower's 4x4 grid
    with pytest.raises(ValueError, match="unknown demo tokenizer `voxels`"):
        build_tower_lens(trunk, LensConfig(tokenizer="voxels"), seed=0)
    # Described from the tower's own features, the head says what transformers' generate says.
    prompt = make_prompt(tokenizer, head.num_query_tokens, 3)
    expected = captioner.generate(pixel_values=images, qformer_input_ids=prompt.qformer_input_ids,
                                  input_ids=prompt.input_ids, max_new_tokens=6, do_sample=False,
                                  eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    texts = describe(head, tokenizer, features, max_new_tokens=6)
    assert texts == [t.strip() for t in tokenizer.batch_decode(expected[:, prompt.length:], skip_special_tokens=True)]
    assert all(texts)  # a random model still says something
    assert len(describe(head, tokenizer, clouds, max_new_tokens=6)) == 3


def test_tower_alignment_loss_by_hand(captioner):
    trunk = BlipVisionTrunk(captioner.vision_model)
    images = torch.rand(4, 3, 32, 32) * 2 - 1
    target = tower_tokens(trunk, images).detach()
    both = TowerAlignment(trunk, AlignConfig(token_weight=1.0, class_weight=0.5, temperature=0.1))
    noise = torch.randn_like(target)
    loss, logs = both(target + noise, {"images": images})
    mse = noise.pow(2).mean() / target.pow(2).mean()
    a = torch.nn.functional.normalize(target[:, 0] + noise[:, 0], dim=-1)
    b = torch.nn.functional.normalize(target[:, 0], dim=-1)
    nce = torch.nn.functional.cross_entropy(a @ b.T / 0.1, torch.arange(4))
    torch.testing.assert_close(loss, mse + 0.5 * nce)
    assert logs == {"tokens": pytest.approx(mse.item()), "class": pytest.approx(nce.item())}
    exact, _ = TowerAlignment(trunk, AlignConfig(class_weight=0.0))(target, {"images": images})
    assert exact.item() == 0.0
    with pytest.raises(ValueError, match="token_weight and class_weight are both 0"):
        TowerAlignment(trunk, AlignConfig(token_weight=0.0, class_weight=0.0))


# --------------------------------------------------------------------------- end to end and CLI
def test_quick_run_through_omniclip_demo(tmp_path, capsys):
    assert demo_main(["--describe", "--quick", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "SMOKE TEST" in printed and "| describer |" in printed
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["smoke_test"] is True
    assert {"classes", "held_out", "question", "chance", "scores", "examples", "captioner", "lens_training", "seconds",
            "versions", "config", "load_average"} <= set(results)
    assert results["held_out"] == ["torus", "capsule", "tube"]
    assert results["chance"]["held_out"] == pytest.approx(1 / 10)
    assert set(results["scores"]) == {"cloud", "untrained_lens", "rendering"}
    for record in results["scores"].values():
        for key in ("all", "seen", "held_out", "no_shape", "most_common_share", "held_out_naming_a_held_out_class"):
            assert 0.0 <= record[key] <= 1.0
    assert len(results["examples"]) == 8
    assert [e["split"] for e in results["examples"]] == ["held_out"] * 3 + ["seen"] * 5
    for example in results["examples"]:
        assert example["question"] == QUESTION
        assert {"class", "caption", "cloud", "rendering", "untrained_lens"} <= set(example)
    assert (tmp_path / f"{results['captioner']['hash']}" / "captioner.safetensors").is_file()
    assert {"captioner", "lens", "describe", "total"} <= set(results["seconds"])


def test_cli_help_and_presets(capsys):
    for argv in (["--describe", "--help"], ["--modality", "describe", "--help"]):
        with pytest.raises(SystemExit) as exit_info:
            demo_main(argv)
        assert exit_info.value.code == 0
        text = capsys.readouterr().out
        assert "omniclip-demo --describe" in text and "--quick" in text and "--held-out" in text
    with pytest.raises(SystemExit):
        demo_main(["--describe", "--held-out", "zebra"])
    assert "unknown classes ['zebra'] (known: box, sphere" in capsys.readouterr().err
    assert preset("quick").test_per_class < preset("default").test_per_class
    with pytest.raises(ValueError, match="unknown preset `study`"):
        preset("study")


def test_a_cached_captioner_is_reloaded_with_its_trained_weights(tmp_path):
    """The second run reuses the captioner the first trained: the same weights, not a fresh model."""
    from omniclip.demo.captioner import train_captioner
    from omniclip.demo.dataset import shape_draw

    cfg = describe_demo.preset("quick")
    draw = shape_draw(cfg.world, cfg.captioner.image_size)
    first, _, info = train_captioner(cfg.world, draw, cfg.captioner, tmp_path, report=lambda line: None)
    lines = []
    again, _, info_again = train_captioner(cfg.world, draw, cfg.captioner, tmp_path, report=lines.append)
    assert len(lines) == 1 and lines[0].startswith("captioner: reusing ") and info_again == info
    trained, reloaded = first.state_dict(), again.state_dict()
    assert trained.keys() == reloaded.keys()
    assert all(torch.equal(trained[k], reloaded[k]) for k in trained)



def test_several_held_out_splits_share_one_captioner_and_report_mean_and_spread(tmp_path, capsys):
    assert demo_main(["--describe", "--quick", "--held-out", "torus", "--held-out", "box,cone",
                      "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert [r["held_out"] for r in results["splits"]] == [["torus"], ["box", "cone"]]
    assert len(list(tmp_path.glob("captioner-*"))) == 1  # trained once, reused by the second split
    assert not list((tmp_path / "split-torus").glob("captioner-*"))
    for condition, summary in results["summary"].items():
        values = [r["scores"][condition]["held_out"] for r in results["splits"]]
        assert summary["held_out"] == pytest.approx(sum(values) / 2)
        assert summary["std"]["held_out"] == pytest.approx(abs(values[0] - values[1]) / 2 ** 0.5)
    assert "| describer (mean of 2 held-out splits) |" in capsys.readouterr().out
    assert describe_demo.STUDY_SPLITS[0] == describe_demo.HELD_OUT
