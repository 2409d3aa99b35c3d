"""Every video experiment recipe (recipes/experiment/video/*.yaml) trains through `omniclip.train`
under ``debug=default`` on generated clips: its model group, loss, mixing, lr groups and
``train_only`` build and step together on the 2-block tiny CLIP.

The data group is replaced by a Kinetics-style list of tiny PyAV videos (each recipe's own datasets
are checked where they are composed: tests/test_video_protocol_recipes.py, tests/modalities/video/),
and prompt depths are cut to the tiny CLIP's 2 blocks (the full depth is refused, as
tests/test_video_recipes.py checks). Two steps must give finite losses and change trained tensors
(which tensors may train is checked per recipe in tests/test_video_recipes.py).
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module

from tests.modalities.video import layouts

EXPERIMENTS = sorted(p.stem for p in (Path(__file__).parents[1] / "recipes" / "experiment" / "video").glob("*.yaml"))


@pytest.fixture(scope="module")
def k400(tmp_path_factory):
    return layouts.make_training_list(tmp_path_factory.mktemp("k400"))


def test_every_video_experiment_is_listed():
    assert {"vificlip_k400", "vificlip_bridge_prompt_k400", "ila_k400_8f", "ila_k400_16f", "ila_ssv2",
            "vificlip_few_shot", "vificlip_base2novel"} <= set(EXPERIMENTS)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_video_experiment_trains_a_step_in_debug_mode(experiment, k400, tmp_path):
    from omniclip import train

    with initialize_config_module("omniclip.recipes", version_base="1.3"):
        base = compose("train", [f"experiment=video/{experiment}"])
        overrides = [
            f"experiment=video/{experiment}", "debug=default", "data=kinetics400", f"data.train.root={k400}",
            "data.train.num_frames=4", "data.train.size=32", "data.train.short_side=40", "eval=none",
            f"output_dir={tmp_path / 'run'}", f"anchors.cache_dir={tmp_path / 'anchors'}",
            "trainer.max_steps=2", "trainer.warmup_steps=1", "trainer.grad_accum_steps=1", "trainer.batch_size=4",
        ]
        if base.model.get("name") == "ila":
            overrides.append("model.hidden=16")  # the 256 channels of the real recipes, cut for CPU time
        for side in ("vision_prompts", "text_prompts"):
            if base.model.get(side):
                overrides += [f"model.{side}.depth=2", f"model.{side}.num_tokens=2"]
        cfg = compose("train", overrides)
    assert cfg.data.get("mixing") == base.data.get("mixing")  # the experiment's mixing is what trains
    trainer, _, _ = train.build_trainer(cfg)
    before = {k: v.clone() for k, v in trainer.trainable_weights().items()}
    result = trainer.fit()
    assert len(result.losses) == 2 and all(math.isfinite(x) for x in result.losses)
    after = trainer.trainable_weights()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed, "one optimizer step changed no trained tensor"


def test_omniclip_anchors_caches_no_training_anchors_for_a_video_recipe(k400, tmp_path, capsys):
    """Video models train against class text through their own text side: the captions and frames
    of data.train would be embedded for nothing."""
    from omniclip import anchors

    with initialize_config_module("omniclip.recipes", version_base="1.3"):
        cfg = compose("train", ["experiment=video/vificlip_k400", "debug=default", "data=kinetics400",
                                f"data.train.root={k400}", "data.train.num_frames=4", "data.train.size=32",
                                "data.train.short_side=40", "eval=none", f"anchors.cache_dir={tmp_path / 'anchors'}"])
    assert anchors.precompute(cfg) == {"text": 0, "image": 0}
    assert ("video models train against class text through their own text side: no caption or image anchors of "
            "data.train to cache, only the eval tasks' class prompts") in capsys.readouterr().out
