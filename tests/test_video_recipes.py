"""The video recipes train through `omniclip-train` (hydra compose + `omniclip.train`) on generated videos.

Each recipe runs under ``debug=default`` (the 2-block tiny CLIP) on a Kinetics-style ``path label``
list of tiny PyAV videos, with 4-frame 32-px clips and no gradient accumulation. What is asserted is what each recipe promises:
bridge-and-prompt changes only its prompt tensors (every CLIP weight bit-identical after training) and
evaluates during training against its own prompted text side,
the full fine-tune changes both towers (and never the backbone it copied them from), lr groups put
each parameter at the lr the schedule gives its group, and a ``train_only`` pattern that matches
nothing is refused naming it.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf
from safetensors.torch import load_file

from omniclip import train
from omniclip.errors import ConfigError
from omniclip.modality import get_modality
from omniclip.model import LensModel
from omniclip.optim import WarmupCosine
from tests.modalities.video import layouts

PROMPTS = {"model.trunk.block_hooks.0.tokens", "model.trunk.block_hooks.1.tokens",
           "model.text_prompts.context", "model.text_prompts.deep.1.tokens"}


@pytest.fixture(scope="module")
def k400(tmp_path_factory):
    """A Kinetics-400 list of 8 tiny videos with labels 0..3 (the shipped 400 class names)."""
    return layouts.make_training_list(tmp_path_factory.mktemp("k400"))


def recipe(tmp_path, k400, experiment: str, *overrides: str, out: str = "run", steps: int = 2):
    with initialize_config_module("omniclip.recipes", version_base="1.3"):
        return compose("train", [
            f"experiment=video/{experiment}", "debug=default", f"data.train.root={k400}",
            "data.train.num_frames=4", "data.train.size=32", "data.train.short_side=40",
            f"output_dir={tmp_path / out}", f"anchors.cache_dir={tmp_path / 'anchors'}", f"trainer.max_steps={steps}",
            "trainer.grad_accum_steps=1",  # the recipes accumulate 16 / 2 micro-batches: 1 keeps tests quick
            *overrides,
        ])


@pytest.fixture
def backbones(monkeypatch):
    """Every backbone `omniclip.train` loads, with a copy of its weights as loaded."""
    loaded = []
    original = train.build_backbone

    def capture(cfg, device):
        backbone = original(cfg, device)
        loaded.append((backbone, {k: v.clone() for k, v in backbone.model.state_dict().items()}))
        return backbone

    monkeypatch.setattr(train, "build_backbone", capture)
    return loaded


def assert_backbone_unchanged(backbone, before) -> None:
    after = backbone.model.state_dict()
    assert set(after) == set(before)
    for key, value in before.items():
        assert torch.equal(after[key], value), key


def test_bridge_and_prompt_trains_only_the_prompts(tmp_path, k400, backbones):
    # a learnable scale would train too, were it not for train_only: only the prompts may train
    cfg = recipe(tmp_path, k400, "vificlip_bridge_prompt_debug", "loss.learnable_scale=true")
    trainer, model, model_cfg = train.build_trainer(cfg)
    assert set(trainer.trainable_weights()) == PROMPTS
    assert trainer.objective.logit_scale.log_scale.requires_grad is False
    before = {k: v.clone() for k, v in trainer.trainable_weights().items()}
    (backbone, loaded), = backbones
    result = trainer.fit()
    assert len(result.losses) == 2 and all(math.isfinite(x) for x in result.losses)
    after = trainer.trainable_weights()
    for key in PROMPTS:
        assert not torch.equal(after[key], before[key]), key
    assert_backbone_unchanged(backbone, loaded)  # every CLIP weight, both towers, bit-identical
    assert model_cfg["model"]["vision_prompts"] == {"num_tokens": 2, "depth": 2}


def test_bridge_and_prompt_k400_depth_is_checked_against_the_tower(tmp_path, k400):
    cfg = recipe(tmp_path, k400, "vificlip_bridge_prompt_k400")  # depth 9 on the 2-block tiny CLIP
    with pytest.raises(ConfigError, match=r"model\.vision_prompts\.depth.*9 is outside \[1, 2\]"):
        train.build_trainer(cfg)


def test_full_finetune_run_changes_both_towers_and_exports_them(tmp_path, k400, backbones):
    cfg = recipe(tmp_path, k400, "vificlip_k400")
    result = train.run(cfg)
    assert result.step == 2
    (backbone, loaded), = backbones
    assert_backbone_unchanged(backbone, loaded)  # the towers that trained are copies
    export = tmp_path / "run" / "video"
    weights = load_file(str(export / "weights.safetensors"))
    config = json.loads((export / "config.json").read_text())
    assert config["model"]["modality"] == "video" and config["model"]["model"]["image_tower"] == "whole"
    assert len(config["class_names"]) == 400 and config["class_names"][0] == "abseiling"
    # the export holds the newest checkpoint's trained weights, and nothing else
    checkpoint = load_file(str(tmp_path / "run" / "checkpoints" / "step_00000002" / "weights.safetensors"))
    assert set(weights) == set(checkpoint)
    for key in weights:
        assert torch.equal(weights[key], checkpoint[key]), key
    pairs = {  # exported name -> the backbone weight it started from
        "model.trunk.conv1.weight": "visual.conv1.weight",
        "model.trunk.proj": "visual.proj",
        "model.trunk.ln_post.weight": "visual.ln_post.weight",
        "model.trunk.blocks.0.attn.in_proj_weight": "visual.transformer.resblocks.0.attn.in_proj_weight",
        "model.trunk.blocks.1.mlp.c_fc.weight": "visual.transformer.resblocks.1.mlp.c_fc.weight",
        "model.text.blocks.0.attn.in_proj_weight": "transformer.resblocks.0.attn.in_proj_weight",
        "model.text.blocks.1.mlp.c_proj.weight": "transformer.resblocks.1.mlp.c_proj.weight",
        "model.text.text_projection": "text_projection",
    }
    for exported, original in pairs.items():
        assert weights[exported].shape == loaded[original].shape
        assert not torch.equal(weights[exported], loaded[original]), exported
    assert "objective.logit_scale.log_scale" in weights  # ViFi-CLIP trains CLIP's scale too
    assert not any("token_embedding" in k for k in weights)  # ... but never the word embedding


LR_GROUP = "trainer.lr_groups=[{match: 'model[.]text[.].*', lr_scale: 10}]"


def _group_lrs(trainer):
    return {g["group"]: g["lr"] for g in trainer.optimizer.param_groups}


def test_lr_groups_follow_the_schedule_at_their_scale_and_resume(tmp_path, k400):
    overrides = [LR_GROUP, "trainer.warmup_steps=1", "trainer.lr=1e-3"]
    trainer, _, _ = train.build_trainer(recipe(tmp_path, k400, "vificlip_k400", *overrides, out="full", steps=4))
    groups = {g["group"]: g for g in trainer.optimizer.param_groups}
    scaled = "lr_scale=10:model[.]text[.].*"
    assert set(groups) == {"default", scaled}
    for group in trainer.optimizer.param_groups:
        in_text = [n.startswith("model.text.") for n in group["param_names"]]
        assert all(in_text) if group["group"] == scaled else not any(in_text)
    # a tower block and its text counterpart, where the scale puts them
    assert any("model.trunk.blocks.0.attn.in_proj_weight" in g["param_names"] for g in trainer.optimizer.param_groups
               if g["group"] == "default")
    full = trainer.fit(stop_at=2)
    # after 2 steps the third uses lr * (0.01 + 0.99 * (1 + cos(pi * (2 - 1) / (4 - 1))) / 2)
    factor = 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * 1 / 3))
    assert _group_lrs(trainer) == pytest.approx({"default": 1e-3 * factor, scaled: 1e-2 * factor}, rel=1e-12)
    assert factor == pytest.approx(WarmupCosine(1, 4, 0.01)(2), rel=1e-12)
    rest = trainer.fit()
    # resumed with a new scale for the group: applied from the checkpoint's step on
    resumed, _, _ = train.build_trainer(recipe(
        tmp_path, k400, "vificlip_k400", *overrides[1:], "trainer.lr_groups=[{match: 'model[.]text[.].*', "
        "lr_scale: 5}]", "trainer.resume=" + str(tmp_path / "full" / "checkpoints" / "step_00000002"), out="other",
        steps=4))
    resumed.resume()
    assert _group_lrs(resumed) == pytest.approx({"default": 1e-3 * factor, "lr_scale=5:model[.]text[.].*":
                                                 5e-3 * factor}, rel=1e-12)
    assert len(full.losses + rest.losses) == 4
    # ... but another grouping cannot reuse the checkpoint's per-group moments
    moved, _, _ = train.build_trainer(recipe(
        tmp_path, k400, "vificlip_k400", *overrides[1:], "trainer.lr_groups=[{match: 'model[.]trunk[.].*', "
        "lr_scale: 10}]", out="full", steps=4))
    with pytest.raises(ConfigError, match=r"trainer\.lr_groups\[0\]\.match: 'model\[\.\]text"):
        moved.resume()


def test_train_only_pattern_matching_nothing_is_refused_naming_it(tmp_path, k400):
    cfg = recipe(tmp_path, k400, "vificlip_bridge_prompt_debug",
                 "trainer.train_only=['model[.]trunk[.]block_hooks[.].*','objective[.]no_such_prompts[.].*']")
    with pytest.raises(ConfigError, match=r"trainer\.train_only\[1\].*`objective\[\.\]no_such_prompts\[\.\]\.\*` "
                                          r"matches no trainable parameter"):
        train.build_trainer(cfg)
    cfg = recipe(tmp_path, k400, "vificlip_k400", "trainer.lr_groups=[{match: 'mit[.].*', lr_scale: 10}]")
    with pytest.raises(ConfigError, match=r"trainer\.lr_groups\[0\]\.match.*`mit\[\.\]\.\*` matches no trainable"):
        train.build_trainer(cfg)


def test_in_training_evaluation_scores_against_the_models_own_text_side(tmp_path, k400, monkeypatch):
    """Bridge-and-prompt trains its text prompts: the periodic evaluation must use them (the frozen
    tower's cached class features would score a different model)."""
    from omniclip import zeroshot
    from omniclip.evaluation import score_metrics

    classes = ["abseiling", "air drumming", "answering questions", "applauding"]  # K400 labels 0..3
    eval_keys = [f"eval.tasks.kinetics400.dataset.{k}" for k in
                 (f"root={k400}", "list_file=train.txt", "num_frames=4", "size=32", "num_clips=1", "num_crops=1")]
    classifiers = []
    original = zeroshot.task_classifier

    def spy(*args, **kwargs):
        classifiers.append(original(*args, **kwargs))
        return classifiers[-1]

    monkeypatch.setattr(zeroshot, "task_classifier", spy)
    cfg = recipe(tmp_path, k400, "vificlip_bridge_prompt_debug", "eval=kinetics400", "eval.every=2",
                 "eval.batch_size=4", *eval_keys, f"+eval.tasks.kinetics400.dataset.class_subset=[{','.join(classes)}]")
    trainer, model, _ = train.build_trainer(cfg)
    result = trainer.fit()
    (record,) = result.evals
    metrics = record["kinetics400"]
    model.eval()
    task = OmegaConf.to_container(cfg.eval.tasks.kinetics400, resolve=True)
    dataset = zeroshot.task_dataset(get_modality("video"), task, "eval.tasks.kinetics400")
    with torch.no_grad():
        own = model.class_embeddings(classes)
        frozen = torch.nn.functional.normalize(model.text(model.class_ids(classes)), dim=-1)  # no prompts
        videos = torch.cat([model.encode(dataset[i]["inputs"]) for i in range(len(dataset))])
    torch.testing.assert_close(classifiers[-1], own)
    assert (own - frozen).abs().max() > 1e-3
    scale = trainer.objective.logit_scale().item()  # fixed (not learnable here): CLIP's, which scores fusion uses
    hand = score_metrics((scale * videos @ own.T).softmax(-1), torch.tensor([i % 4 for i in range(8)]))
    assert metrics == pytest.approx(hand)


def test_video_recipe_errors_name_their_keys(tmp_path, k400):
    with pytest.raises(ConfigError, match=r"model\.text_tower.*`some` is not"):
        train.build_trainer(recipe(tmp_path, k400, "vificlip_k400", "model.text_tower=some"))
    with pytest.raises(ConfigError, match=r"model\.template.*not used with model\.text_prompts"):
        train.build_trainer(recipe(tmp_path, k400, "vificlip_bridge_prompt_debug", "model.template='{}'"))


def test_lens_recipes_still_build_a_lens_model_and_export_a_lens(tmp_path):
    from tests.modalities.pointcloud.test_datasets import make_ulip_shapenet

    shapenet = make_ulip_shapenet(tmp_path / "shapenet-55")
    with initialize_config_module("omniclip.recipes", version_base="1.3"):
        cfg = compose("train", [
            "experiment=pointcloud/vitlens_l_shapenet", "debug=default", f"data.train.root={shapenet}",
            "data.train.num_points=48", "data.train.min_points=8", "modality.tokenizer.num_groups=16",
            "modality.tokenizer.group_size=8", "trainer.max_steps=2", "eval=none",
            f"output_dir={tmp_path / 'run'}", f"anchors.cache_dir={tmp_path / 'anchors'}"])
    assert "model" not in cfg
    train.run(cfg)
    config = json.loads((tmp_path / "run" / "lens" / "config.json").read_text())
    assert config["modality"] == "pointcloud" and config["lens"]["name"] == "perceiver"
    assert (tmp_path / "run" / "lens" / "lens.safetensors").is_file()
    trainer, model, _ = train.build_trainer(cfg)  # resumes the finished run
    assert isinstance(model, LensModel) and type(trainer.objective).__name__ == "ContrastiveObjective"


ILA_GROUPS = {"lr_scale=62.5:model\\.trunk\\.block_hooks\\.\\d+\\.message_.*": 5e-4,
              "lr_scale=10:model\\.trunk\\.block_hooks\\.\\d+\\.temporal_.*": 8e-5,
              "lr_scale=50:model\\.temporal\\..*": 4e-4}


def test_ila_debug_recipe_trains_its_groups_logs_the_align_loss_and_resumes_exactly(tmp_path, k400, backbones):
    import re

    from omniclip.ila import ILAVideoModel, JitterSchedule

    assert [JitterSchedule(0.2, 300, 10)(s) for s in (299, 300, 309, 310)] == [0.2, 0.1, 0.1, 0.05]
    cfg = recipe(tmp_path, k400, "ila_debug", out="full", steps=4)
    initial, model, _ = train.build_trainer(recipe(tmp_path, k400, "ila_debug", out="fresh", steps=4))
    assert isinstance(model, ILAVideoModel) and model.prompts is not None and model.num_frames == 4
    # the reference's three optimiser groups, at their lrs (ILA's own: 5e-4, 10 x 8e-6, 4e-4)
    assert _group_lrs(initial) == pytest.approx(ILA_GROUPS, rel=1e-12)
    before = {k: v.clone() for k, v in initial.trainable_weights().items()}
    trained = ("model.trunk.block_hooks.0.message_fc.weight", "model.trunk.block_hooks.1.message_attn.point_fc1.weight",
               "model.trunk.block_hooks.0.temporal_skip_align_fc.weight", "model.temporal.positional_embedding",
               "model.trunk.block_hooks.0.message_attn.pair_bn.running_mean")
    assert set(trained) <= set(before) and any(k.startswith("model.prompts.") for k in before)
    result = train.run(cfg)
    assert result.step == 4 and len(result.losses) == 4
    records = [json.loads(line) for line in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "aux/align" in r]
    assert len(steps) == 4
    for record in steps:  # two blocks' 1 - cos, summed at weight 1
        assert 0 < record["aux/align"] <= 4 and record["loss"] == pytest.approx(record["class/loss"] + record["aux/align"],
                                                                                abs=1e-5)
    weights = load_file(str(tmp_path / "full" / "video" / "weights.safetensors"))
    patterns = [re.compile(p) for p in cfg.trainer.train_only]
    for key, value in before.items():
        trains = any(p.fullmatch(key) for p in patterns) or ".message_attn." in key and "running_" in key
        if key in trained:
            assert not torch.equal(weights[key], value), key
        if not trains and key != "model.train_forwards":
            assert torch.equal(weights[key], value), key  # X-CLIP's prompts stay at their initial values
    assert int(weights["model.train_forwards"]) == 4
    for backbone, loaded in backbones:
        assert_backbone_unchanged(backbone, loaded)  # both towers frozen
    # stopped after 2 steps and resumed: the same losses, weights and jitter (0.2, 0.2, 0.1, then 0.05)
    part = recipe(tmp_path, k400, "ila_debug", out="part", steps=4)
    first, _, _ = train.build_trainer(part)
    early = first.fit(stop_at=2)
    rest, resumed, _ = train.build_trainer(part)
    late = rest.fit()
    assert early.losses + late.losses == pytest.approx(result.losses, abs=1e-6)
    assert [b.message_attn.jitter for b in resumed.ila_blocks()] == [0.05, 0.05]
    for key, value in rest.trainable_weights().items():
        torch.testing.assert_close(value, weights[key], rtol=0, atol=1e-6)


def test_every_recipe_can_set_lr_groups_and_train_only_without_plus():
    """recipes/trainer/default.yaml names both keys, so a recipe that does not (a lens recipe) takes
    them as plain overrides; before, hydra refused them as keys not in the struct."""
    from omniclip.trainer import trainer_config_from

    with initialize_config_module("omniclip.recipes", version_base="1.3"):
        plain = compose("train", ["experiment=pointcloud/vitlens_l_shapenet"])
        cfg = compose("train", ["experiment=pointcloud/vitlens_l_shapenet", "trainer.train_only=['model[.]lens[.].*']",
                                "trainer.lr_groups=[{match: 'model[.]lens[.]latents', lr_scale: 2}]"])
    assert plain.trainer.lr_groups == [] and plain.trainer.train_only is None
    options = trainer_config_from(OmegaConf.to_container(cfg.trainer, resolve=True))
    assert options.train_only == ["model[.]lens[.].*"]
    assert options.lr_groups == [{"match": "model[.]lens[.]latents", "lr_scale": 2}]
