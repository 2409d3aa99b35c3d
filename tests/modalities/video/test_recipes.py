"""The video recipes compose and their dataset sections build on mini copies of the layouts."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from omniclip.modalities.video.datasets import build_dataset
from tests.modalities.video import layouts

SMALL = {"num_frames": 4, "size": 32, "short_side": 40}


def composed(config: str, overrides: list[str]):
    with initialize_config_module("omniclip.recipes", version_base="1.3"):
        return compose(config, overrides)


def test_kinetics400_training_data(tmp_path):
    cfg = composed("train", ["modality=video", "data=kinetics400"])
    assert cfg.modality.name == "video"
    train = OmegaConf.to_container(cfg.data.train, resolve=True)
    assert (train["num_frames"], train["sampling"], train["normalize"], train["train_crop"]) == (8, "tsn", "imagenet",
                                                                                               "multiscale")
    assert (train["color_jitter"], train["grayscale"], train["short_side"], train["size"]) == (0.8, 0.2, 256, 224)
    root = tmp_path / "k400"
    layouts.video(root / "videos" / "clip.mp4")
    (root / "train.txt").write_text("clip.mp4 399\n")
    data = build_dataset({**train, "root": str(root), **SMALL}, "train")
    sample = data[0]
    assert sample["inputs"].shape == (4, 3, 32, 32) and sample["label"] == 399 and sample["text"] == "a photo of a zumba."


@pytest.mark.parametrize("eval_name, make, tasks", [
    ("ucf101", layouts.make_ucf101, ["ucf101_split1", "ucf101_split2", "ucf101_split3"]),
    ("hmdb51", layouts.make_hmdb51, ["hmdb51_split1", "hmdb51_split2", "hmdb51_split3"]),
    ("ssv2", layouts.make_ssv2, ["ssv2"]),
])
def test_zero_shot_sets(tmp_path, eval_name, make, tasks):
    cfg = composed("zeroshot", [f"eval={eval_name}", "checkpoint=x"])
    assert list(cfg.eval.tasks) == tasks
    root = make(tmp_path / eval_name)
    for name in tasks:
        task = OmegaConf.to_container(cfg.eval.tasks[name], resolve=True)
        assert task["templates"] == "default" and task["dataset"]["num_frames"] == 32
        assert task["dataset"]["normalize"] == "imagenet"
        data = build_dataset({**task["dataset"], "root": str(root), **SMALL}, task["dataset"]["split"])
        assert data[0]["inputs"].shape == (1, 4, 3, 32, 32) and "group_id" in data[0]


def test_kinetics400_multi_view_evaluation(tmp_path):
    cfg = composed("zeroshot", ["eval=kinetics400", "checkpoint=x"])
    dataset = OmegaConf.to_container(cfg.eval.tasks.kinetics400.dataset, resolve=True)
    assert (dataset["num_clips"], dataset["num_crops"], dataset["num_frames"]) == (4, 3, 8)
    root = tmp_path / "k400"
    layouts.video(root / "videos" / "clip.mp4")
    (root / "val.txt").write_text("clip.mp4 3\n")
    data = build_dataset({**dataset, "root": str(root), "num_frames": 4, "size": 32}, "test")
    assert data[0]["inputs"].shape == (12, 4, 3, 32, 32)
