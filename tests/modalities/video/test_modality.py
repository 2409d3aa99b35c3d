"""The video modality plugin: registry, templates, shipped class names, collate, no tokenizer yet,
and the core never importing it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from omniclip.errors import ConfigError
from omniclip.modalities.video import collate_views
from omniclip.modality import TrunkSpec, get_modality

ROOT = Path(__file__).parents[3]


def test_registered_with_templates_and_class_names():
    video = get_modality("video")
    assert video.template_set() == ["{}"] and video.template_set("photo") == ["a photo of a {}."]
    assert len(video.template_set("video")) == 16 and video.template_set("video")[0] == "a video of a person {}."
    counts = {name: len(video.class_names(name)) for name in ("k400", "k600", "ucf101", "hmdb51", "ssv2")}
    assert counts == {"k400": 400, "k600": 600, "ucf101": 101, "hmdb51": 51, "ssv2": 174}
    k400 = video.class_names("k400")
    assert k400[:2] == ["abseiling", "air drumming"] and k400[-1] == "zumba" and k400 == sorted(k400)
    assert video.class_names("ucf101")[0] == "ApplyEyeMakeup" and video.class_names("ucf101")[-1] == "YoYo"
    assert video.class_names("hmdb51")[:2] == ["brush hair", "cartwheel"]
    assert video.class_names("ssv2")[0] == "Approaching something with your camera"
    with pytest.raises(ConfigError, match=r"ships no class names for `k700`"):
        video.class_names("k700")


def test_no_tokenizer_until_the_video_models():
    spec = TrunkSpec(width=64, patch_size=8, num_positions=17, image_size=32, num_blocks=2, embed_dim=64)
    with pytest.raises(NotImplementedError, match=r"modality `video` has no tokenizer"):
        get_modality("video").build_tokenizer({}, spec)


def test_collate_stacks_clips_and_flattens_views():
    train = collate_views([{"inputs": torch.zeros(4, 3, 8, 8), "label": 1, "text": "a"},
                           {"inputs": torch.ones(4, 3, 8, 8), "label": 0, "text": "b"}])
    assert train["inputs"].shape == (2, 4, 3, 8, 8) and train["labels"].tolist() == [1, 0]
    assert train["texts"] == ["a", "b"]
    views = collate_views([{"inputs": torch.full((3, 4, 3, 8, 8), float(i)), "label": i, "group_id": i,
                            "path": f"v{i}"} for i in (5, 9)])
    assert views["inputs"].shape == (6, 4, 3, 8, 8) and views["inputs"][:, 0, 0, 0, 0].tolist() == [5] * 3 + [9] * 3
    assert views["group_ids"] == [5, 5, 5, 9, 9, 9] and views["labels"].tolist() == [5, 5, 5, 9, 9, 9]
    assert views["paths"] == ["v5"] * 3 + ["v9"] * 3


def test_the_core_does_not_import_the_video_modality():
    offenders = [p for p in (ROOT / "omniclip").rglob("*.py") if "modalities.video" in p.read_text()]
    assert offenders == []


def test_zero_shot_through_the_evaluation_path_averages_views(tmp_path, tiny_backbone):
    """UCF101 mini split, 2 clips x 3 crops per video: a stand-in model gives each view its
    video's class embedding plus noise; evaluation averages each video's 6 views and scores them
    against the class-name classifier built from the shipped prompts."""
    from omniclip.anchors import AnchorStore
    from omniclip.zeroshot import evaluate_task, task_classifier
    from tests.modalities.video import layouts

    root = layouts.make_ucf101(tmp_path / "ucf")
    task = {"type": "classification", "templates": "default",
            "dataset": {"name": "ucf101", "root": str(root), "split": "test", "num_frames": 2, "size": 16,
                        "short_side": 16, "num_clips": 2, "num_crops": 3}}
    video = get_modality("video")
    anchors = AnchorStore(tiny_backbone)
    dataset = video.build_dataset(task["dataset"], "test")
    classes = task_classifier(video, dataset, task, anchors)
    assert classes.shape[0] == 3
    truth = torch.tensor([item.label for item in dataset.items])
    noise = torch.randn(64, classes.shape[1], generator=torch.Generator().manual_seed(0))
    seen = []

    def model(batch):
        rows = truth[torch.tensor(batch["group_ids"])]
        seen.append(batch["inputs"].shape)
        return classes[rows] * 4 + noise[: rows.numel()]

    metrics = evaluate_task(model, video, task, anchors, "cpu", batch_size=1)
    assert metrics["num_samples"] == 2 and metrics["top1"] == 100.0
    assert seen == [(6, 2, 3, 16, 16)] * 2  # one video per batch: its 6 views
