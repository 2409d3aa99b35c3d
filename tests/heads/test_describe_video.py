"""``omniclip-describe`` on video files, end to end, on a tiny random InstructBlipVideo.

The model is tests/heads/test_instructblip.py's tiny config as an ``InstructBlipVideoConfig``
(wide init, so answers follow the frames), saved with its processor (the word-level tokenizers of
tests/heads/test_describe.py plus a ``<video>`` token, a 30-px video processor). Videos are
written with PyAV. The reference for every answer is transformers' own: the frames decoded
independently (every frame with PyAV, uniform indices by formula), the processor's pixels and
prompt, ``InstructBlipVideoForConditionalGeneration.generate(pixel_values=...)``, the decode.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import (
    InstructBlipVideoConfig,
    InstructBlipVideoForConditionalGeneration,
    InstructBlipVideoProcessor,
    InstructBlipVideoVideoProcessor,
)

from omniclip import describe
from omniclip.blip_trunk import BlipVisionTrunk
from omniclip.heads import InstructBlipHead
from omniclip.model import build_lens_model
from tests.heads.test_describe import CLOUD_TOKENIZER, POINTS, QUESTION, SMALL_HEADS, run_main, unit_sphere, \
    word_tokenizer
from tests.heads.test_instructblip import QUERIES, tiny_config
from tests.modalities.video import media

VIDEO_TOKEN = 98  # the word tokenizer's `<image>` slot; renamed `<video>` below
FRAMES_IN_FILE = (9, 14, 3)  # the 3-frame video gives 4 frames, its last repeated (as the sampler does)


def video_tokenizer(bos: bool):
    tokenizer = word_tokenizer(bos)
    tokenizer.add_tokens(["<video>"], special_tokens=True)
    return tokenizer


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("describe_video")
    image_cfg = tiny_config().to_dict()
    config = InstructBlipVideoConfig(vision_config=image_cfg["vision_config"],
                                     qformer_config=image_cfg["qformer_config"], text_config=image_cfg["text_config"],
                                     num_query_tokens=QUERIES, initializer_range=0.5)
    torch.manual_seed(0)
    model = InstructBlipVideoForConditionalGeneration(config).eval()
    processor = InstructBlipVideoProcessor(InstructBlipVideoVideoProcessor(size={"height": 30, "width": 30}),
                                           video_tokenizer(True), word_tokenizer(False), num_query_tokens=QUERIES)
    model.config.video_token_index = processor.tokenizer.convert_tokens_to_ids("<video>")
    with torch.no_grad():
        model.query_tokens.normal_()
        # the new token's embedding row: the vocabulary grew by one
        model.resize_token_embeddings(len(processor.tokenizer))
    model_dir = root / "instructblipvideo"
    model.save_pretrained(model_dir)
    processor.save_pretrained(model_dir)
    videos = {}
    for i, count in enumerate(FRAMES_IN_FILE):
        videos[f"v{i}.mp4"] = media.write_video(root / f"v{i}.mp4", count, width=40 + 8 * i, height=32)
    return {"root": root, "model_dir": model_dir, "model": model, "processor": processor, "videos": videos}


@pytest.fixture(autouse=True)
def keep_logging(monkeypatch):
    monkeypatch.setattr(describe, "_quiet", lambda verbose: None)


def uniform(count: int, t: int) -> list[int]:
    """Uniform indices, first and last frame included; a short video repeats its last frame."""
    length = max(count, t)
    return [min(round(i * (length - 1) / (t - 1)), count - 1) for i in range(t)]


def reference_answers(assets, paths, frames: int = 4, **generate_kwargs) -> list[str]:
    """transformers' own path: processor(images=videos, text=question) -> generate(pixel_values=...)."""
    processor, model = assets["processor"], assets["model"]
    clips = [media.all_frames(path)[uniform(len(media.all_frames(path)), frames)] for path in paths]
    inputs = processor(images=clips, text=[QUESTION] * len(clips), return_tensors="pt")
    assert inputs["pixel_values"].shape == (len(clips), frames, 3, 30, 30)
    if frames != 4:  # the processor always writes 4 x Q video tokens: the model's placeholders follow the frames
        ids = inputs["input_ids"][:, 4 * QUERIES:]
        tokens = torch.full((len(clips), frames * QUERIES), model.config.video_token_id)
        inputs["input_ids"] = torch.cat([tokens, ids], dim=1)
        inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
    with torch.no_grad():
        generated = model.generate(**inputs, do_sample=False, **generate_kwargs)
    new = generated[:, inputs["input_ids"].shape[1]:]
    assert new.shape[1] > 0
    return [t.strip() for t in processor.tokenizer.batch_decode(new, skip_special_tokens=True)]


def command(assets, *extra: str) -> list[str]:
    return ["--question", QUESTION, "--instructblip", str(assets["model_dir"]), "--device", "cpu", *extra]


def lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines()]


# ------------------------------------------------------------------------------------------ answers
@pytest.mark.parametrize("generate", [{"max_new_tokens": 6}, {"max_new_tokens": 5, "num_beams": 3}])
def test_video_answers_equal_transformers_generate_for_the_same_frames(assets, capsys, tmp_path, generate):
    paths = list(assets["videos"].values())
    expected = reference_answers(assets, paths, **generate)
    assert len(set(expected)) > 1  # the answers follow the frames
    flags = ["--max-new-tokens", str(generate["max_new_tokens"]), "--num-beams", str(generate.get("num_beams", 1))]
    for batch in ("1", "3"):
        output = tmp_path / f"b{batch}.jsonl"
        code, out, err = run_main([*map(str, paths), *command(assets, *flags, "--batch-size", batch,
                                                              "--output", str(output))], capsys)
        assert (code, out, err) == (0, "", "")
        assert lines(output.read_text()) == [{"file": str(p), "question": QUESTION, "answer": a}
                                             for p, a in zip(paths, expected)]


def test_the_tokens_equal_transformers_and_num_frames_changes_them(assets):
    video = describe.load_video_describer(str(assets["model_dir"]), num_frames=None)
    assert video.num_frames == 4  # neither config nor video processor says: InstructBLIP-video's 4
    paths = list(assets["videos"].values())
    answers4 = video.answer(video.features(paths), QUESTION, max_new_tokens=6)
    assert answers4 == reference_answers(assets, paths, max_new_tokens=6)
    three = describe.load_video_describer(str(assets["model_dir"]), num_frames=3)
    features = three.features(paths)
    assert features.shape == (3 * 3, 226, 32)
    answers3 = three.answer(features, QUESTION, max_new_tokens=6)
    assert answers3 == reference_answers(assets, paths, frames=3, max_new_tokens=6)
    assert answers3 != answers4


def test_the_head_per_frame_equals_the_video_models_features(assets):
    model = assets["model"]
    pixels = torch.randn(2, 3, 3, 30, 30)
    ids = torch.randint(3, 90, (2, 5))
    with torch.no_grad():
        reference = model.get_video_features(pixels, qformer_input_ids=ids).pooler_output
        features = model.vision_model(pixel_values=pixels.flatten(0, 1)).last_hidden_state
        ours = InstructBlipHead(model).query_outputs(features, ids, frames=3)
    assert ours.shape == (2, 3 * QUERIES, 16)
    torch.testing.assert_close(ours, reference, rtol=0, atol=0)
    with pytest.raises(ValueError, match="6 feature rows for 2 instructions of 4 frames each"):
        InstructBlipHead(model).query_outputs(features, ids, frames=4)


def test_a_mixed_list_sends_each_file_its_way(assets, capsys, tmp_path):
    """Clouds through a lens on the video checkpoint's tower (one frame, the video token), videos
    through their frames; the lines keep the files' order."""
    model = assets["model"]
    rng = np.random.default_rng(0)
    cloud = rng.normal(size=(POINTS, 3)).astype(np.float32)
    np.save(tmp_path / "c.npy", cloud)
    torch.manual_seed(1)
    lens_model, config = build_lens_model("pointcloud", BlipVisionTrunk(model.vision_model), CLOUD_TOKENIZER,
                                          SMALL_HEADS, f"instructblip:{assets['model_dir']}")
    with torch.no_grad():
        for param in lens_model.lens.parameters():
            param.normal_(0, 0.5)
    config.update(backbone={"name": f"instructblip:{assets['model_dir']}", "pretrained": None}, trunk={})
    lens_model.save_lens(tmp_path / "lens", config)
    v0, v1 = assets["videos"]["v0.mp4"], assets["videos"]["v1.mp4"]
    code, out, err = run_main([str(v0), str(tmp_path / "c.npy"), str(v1),
                               *command(assets, "--lens", str(tmp_path / "lens"), "--num-points", str(POINTS),
                                        "--max-new-tokens", "6")], capsys)
    assert (code, err) == (0, "")
    got = lines(out)
    assert [g["file"] for g in got] == [str(v0), str(tmp_path / "c.npy"), str(v1)]
    assert [got[0]["answer"], got[2]["answer"]] == reference_answers(assets, [v0, v1], max_new_tokens=6)
    # the cloud: the lens's tower features, Q video tokens + the question, the head with one frame
    with torch.no_grad():
        features = lens_model.eval().trunk.normed_tokens(lens_model.forward_features(unit_sphere(cloud)[None]))
    text = assets["processor"].tokenizer([QUESTION], return_tensors="pt")["input_ids"]
    input_ids = torch.cat([torch.full((1, QUERIES), model.config.video_token_id), text], dim=1)
    qformer_ids = assets["processor"].qformer_tokenizer([QUESTION], return_tensors="pt")["input_ids"]
    generated = InstructBlipHead(model).generate(features, qformer_ids, input_ids, do_sample=False,
                                                 max_new_tokens=6)
    expected = assets["processor"].tokenizer.decode(generated[0, input_ids.shape[1]:], skip_special_tokens=True)
    assert got[1]["answer"] == expected.strip()


# ------------------------------------------------------------------------------------------- errors
def test_an_unreadable_video_is_one_line_naming_it(assets, capsys, tmp_path):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\x00" * 64)
    code, out, err = run_main([str(bad), *command(assets)], capsys)
    assert (code, out) == (2, "")
    assert len(err.splitlines()) == 1
    assert err.startswith(f"omniclip-describe: error: {bad}: ")


def test_a_lens_with_only_videos_is_refused_saying_why(assets, capsys, tmp_path):
    lens = tmp_path / "lens"
    lens.mkdir()
    (lens / "config.json").write_text(json.dumps({"model": {"modality": "pointcloud", "tokenizer": CLOUD_TOKENIZER}}))
    code, out, err = run_main([str(assets["videos"]["v0.mp4"]), *command(assets, "--lens", str(lens))], capsys)
    assert (code, out) == (2, "")
    assert err.splitlines() == ["omniclip-describe: error: --lens: every file is a video, and videos need no lens "
                                "(the InstructBlipVideo checkpoint's own vision tower reads their frames); drop --lens"]


def test_a_cloud_without_a_lens_is_refused(assets, capsys, tmp_path):
    path = tmp_path / "c.npy"
    np.save(path, np.zeros((8, 3), np.float32))
    code, out, err = run_main([str(path), *command(assets)], capsys)
    assert (code, out) == (2, "")
    assert err.startswith(f"omniclip-describe: error: {path}: not a video (") and err.rstrip().endswith("pass --lens")


def test_a_missing_hub_checkpoint_fails_at_once_offline(assets, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    code, out, err = run_main([str(assets["videos"]["v0.mp4"]), "--question", QUESTION, "--instructblip",
                               "nobody/instructblip-video-missing", "--device", "cpu"], capsys)
    assert (code, out) == (2, "")
    assert len(err.splitlines()) == 1
    assert "nobody/instructblip-video-missing" in err and "download" in err
