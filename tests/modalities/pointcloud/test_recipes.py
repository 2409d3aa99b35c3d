"""Every point-cloud experiment in debug mode on CPU: train a few steps, then zero-shot evaluation.

Data paths point at mini datasets in the published layouts; sizes are scaled down by overrides
(points, groups) and the tiny CLIP of ``debug=default`` replaces the published backbone, so the
lens config must size itself from the trunk.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from omniclip import train, zeroshot
from tests.zeroshot_reference import assert_matches_reference, designed_labels, reference_scores
from tests.modalities.pointcloud.test_datasets import (
    make_modelnet40,
    make_objaverse_lvis,
    make_objaverse_triplets,
    make_scanobjectnn,
    make_ulip_shapenet,
)

SMALL_CLOUD = ["num_points=48", "min_points=8"]
EVAL_SIZE = 12  # enough samples that top-1/top-5/recall of a broken evaluation would differ


def eval_overrides(task: str, root, extra=()) -> list[str]:
    prefix = f"eval.tasks.{task}.dataset"
    return [f"{prefix}.root={root}", f"+{prefix}.limit={EVAL_SIZE}",
            *(f"{prefix}.{o}" for o in SMALL_CLOUD + list(extra))]


def run_experiment(tmp_path, experiment: str, overrides: list[str], eval_name: str, eval_extra: list[str],
                   train_eval_extra: list[str] | None = None):
    """Train ``experiment`` for 2 steps (its own eval tasks at the end), then run ``eval=<eval_name>``."""
    common = [f"anchors.cache_dir={tmp_path / 'anchors'}"]
    with initialize_config_module("omniclip.recipes", version_base="1.3"):
        cfg = compose("train", [f"experiment=pointcloud/{experiment}", "debug=default",
                                f"output_dir={tmp_path / 'run'}", "modality.tokenizer.num_groups=8",
                                "modality.tokenizer.group_size=8", "trainer.max_steps=2",
                                *(f"data.train.{o}" for o in SMALL_CLOUD), *common, *overrides,
                                *(eval_extra if train_eval_extra is None else train_eval_extra)])
    result = train.run(cfg)
    assert result.step == 2 and len(result.losses) == 2 and all(loss == loss for loss in result.losses)
    lens_dir = tmp_path / "run" / "lens"
    config = json.loads((lens_dir / "config.json").read_text())
    assert config["modality"] == "pointcloud" and config["backbone"]["name"] == "omniclip-tiny"
    assert config["lens"]["latent_dim"] == 64 and config["lens"]["num_latents"] == 16  # sized from the trunk
    results, tasks = evaluate(tmp_path, eval_name, eval_extra)
    return config, results, tasks


def evaluate(tmp_path, eval_name: str, eval_extra: list[str]):
    """``omniclip-zeroshot`` on the exported lens; every reported metric must equal an
    independent computation from the lens's own embeddings. Returns the results and the tasks."""
    lens_dir = tmp_path / "run" / "lens"
    with initialize_config_module("omniclip.recipes", version_base="1.3"):
        zcfg = compose("zeroshot", [f"eval={eval_name}", f"checkpoint={lens_dir}", "num_workers=0",
                                    f"anchors.cache_dir={tmp_path / 'anchors'}", *eval_extra])
    results = zeroshot.run(zcfg)
    tasks = OmegaConf.to_container(zcfg.eval, resolve=True)["tasks"]
    for r in results:
        assert_matches_reference(r, lens_dir, tasks[r.dataset])
    return results, tasks


def relabel_modelnet40(src: Path, dst: Path, labels: list[int]) -> Path:
    """A copy of a ModelNet40 root whose test shapes (same order, same points) carry ``labels``."""
    shutil.copytree(src, dst)
    names = (src / "modelnet40_shape_names.txt").read_text().split()
    ids = (src / "modelnet40_test.txt").read_text().split()
    assert len(ids) == len(labels)
    new_ids = []
    for shape_id, label in zip(ids, labels):
        shape, number = shape_id.rsplit("_", 1)
        (dst / shape / f"{shape_id}.txt").unlink()
        new_id = f"{names[label]}_{number}"
        (dst / names[label]).mkdir(exist_ok=True)
        shutil.copy(src / shape / f"{shape_id}.txt", dst / names[label] / f"{new_id}.txt")
        new_ids.append(new_id)
    (dst / "modelnet40_test.txt").write_text("\n".join(new_ids) + "\n")
    return dst


def test_vitlens_l_shapenet_debug(tmp_path):
    shapenet = make_ulip_shapenet(tmp_path / "shapenet-55")
    modelnet = make_modelnet40(tmp_path / "mn40", per_split=EVAL_SIZE)
    config, results, tasks = run_experiment(
        tmp_path, "vitlens_l_shapenet", [f"data.train.root={shapenet}"],
        "modelnet40", eval_overrides("modelnet40", modelnet))
    assert config["tokenizer"]["name"] == "pointbert"
    assert results[0].dataset == "modelnet40" and results[0].num_samples == EVAL_SIZE
    # Relabelled from the lens's own scores so that the answer is known exactly.
    scores = reference_scores(tmp_path / "run" / "lens", tasks["modelnet40"])["scores"]
    known = relabel_modelnet40(modelnet, tmp_path / "mn40_known", designed_labels(scores))
    (designed,), _ = evaluate(tmp_path, "modelnet40", eval_overrides("modelnet40", known))
    assert designed.metrics["top1"] == pytest.approx(50.0) and designed.metrics["top5"] == pytest.approx(100.0)


def test_vitlens_l_objaverse_debug(tmp_path):
    objaverse = make_objaverse_triplets(tmp_path / "objaverse")
    scan = make_scanobjectnn(tmp_path / "h5_files", count=EVAL_SIZE)
    modelnet = make_modelnet40(tmp_path / "mn40", per_split=EVAL_SIZE)
    config, results, _ = run_experiment(
        tmp_path, "vitlens_l_objaverse", [f"data.train.root={objaverse}"], "scanobjectnn",
        eval_overrides("scanobjectnn", scan), train_eval_extra=eval_overrides("modelnet40", modelnet))
    assert config["lens"]["weight_tie_layers"] is False
    assert results[0].dataset == "scanobjectnn" and results[0].num_samples == EVAL_SIZE


def test_vitlens_bigg_openshape_debug(tmp_path):
    objaverse = make_objaverse_triplets(tmp_path / "objaverse")
    lvis = make_objaverse_lvis(tmp_path / "lvis", count=EVAL_SIZE)
    modelnet = make_modelnet40(tmp_path / "mn40", per_split=EVAL_SIZE)
    scan = make_scanobjectnn(tmp_path / "h5_files", count=EVAL_SIZE)
    # The tiny CLIP has 2 blocks: skip 1 (instead of 16) and train the one left.
    config, results, _ = run_experiment(
        tmp_path, "vitlens_bigg_openshape",
        [f"data.train.root={objaverse}", "trunk.skip_blocks=1", "trunk.unlocked_blocks=1",
         "modality.tokenizer.radius=0.5"],
        "pointcloud_openshape",
        [*eval_overrides("modelnet40", modelnet), *eval_overrides("scanobjectnn", scan),
         *eval_overrides("objaverse_lvis", lvis, ["annotation=lvis.json"])])
    assert config["tokenizer"]["name"] == "pnsa" and config["trunk"]["unlock_class_token"] is True
    assert sorted(r.dataset for r in results) == ["modelnet40", "objaverse_lvis", "scanobjectnn"]
    assert all(r.num_samples == EVAL_SIZE for r in results)


def test_published_settings_without_debug_compose():
    with initialize_config_module("omniclip.recipes", version_base="1.3"):
        cfg = compose("train", ["experiment=pointcloud/vitlens_bigg_openshape"])
    assert cfg.backbone.name == "ViT-bigG-14" and cfg.trunk.skip_blocks == 16 and cfg.trunk.unlocked_blocks == 2
    assert cfg.data.train.num_points == 10000 and cfg.data.train.with_color and cfg.data.train.swap_yz
    assert cfg.data.train.augment.up_axis == 2 and cfg.data.train.augment.dropout == pytest.approx(0.875)
    assert set(cfg.eval.tasks) == {"modelnet40", "scanobjectnn", "objaverse_lvis"}
    assert cfg.eval.tasks.modelnet40.dataset.with_color and cfg.eval.tasks.modelnet40.dataset.num_points == 10000
    with initialize_config_module("omniclip.recipes", version_base="1.3"):
        cfg = compose("train", ["experiment=pointcloud/vitlens_l_shapenet"])
    assert cfg.backbone.name == "ViT-L-14" and cfg.modality.tokenizer.name == "pointbert"
    assert cfg.data.train.name == "ulip_shapenet" and cfg.eval.tasks.modelnet40.dataset.sampling == "fps"


def test_tied_lens_exports(tmp_path, tiny_backbone):
    from omniclip.model import build_lens_model, load_lens_model

    trunk = tiny_backbone.trunk()
    tokenizer = {"name": "pointbert", "num_groups": 8, "group_size": 8}
    model, model_cfg = build_lens_model("pointcloud", trunk, tokenizer, {"weight_tie_layers": True}, "omniclip-tiny")
    model_cfg.update(trunk={}, backbone={"name": "omniclip-tiny", "pretrained": None})
    model.save_lens(tmp_path / "lens", model_cfg)
    loaded, _, _ = load_lens_model(tmp_path / "lens", backbone=tiny_backbone)
    assert loaded.lens.layers[1] is loaded.lens.layers[3]
