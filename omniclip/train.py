"""``omniclip-train``: the recipe-driven training command (hydra app).

    omniclip-train experiment=pointcloud/vitlens_l_shapenet
    omniclip-train experiment=video/vificlip_k400         # the modality builds model and objective
    torchrun --nproc-per-node 8 -m omniclip.train experiment=...
    omniclip-train experiment=... debug=default        # CPU-fast smoke run

Running the same command again resumes from the newest checkpoint in ``output_dir``. At the end the
modality exports the trained model (`omniclip.modality.Modality.export_model`): ``<output_dir>/lens``
for a lens, ``<output_dir>/video`` (``weights.safetensors`` + ``config.json``) for a video model.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn
from omegaconf import DictConfig, OmegaConf

from omniclip.anchors import AnchorStore
from omniclip.cli import hydra_entry
from omniclip.distributed import DistEnv, cleanup, init_distributed
from omniclip.recipe import (
    DeferredTransform,
    build_backbone,
    build_model,
    build_objective,
    eval_datasets,
    recipe_modality,
    recipe_tokenizer,
    train_dataset,
)
from omniclip.trainer import Trainer, TrainResult, trainer_config_from
from omniclip.zeroshot import make_evaluators

log = logging.getLogger(__name__)


def build_trainer(cfg: DictConfig, env: DistEnv | None = None) -> tuple[Trainer, nn.Module, dict[str, Any]]:
    """Everything a run needs, validated before any training step.

    The modality builds the model and the objective (`Modality.build_model`,
    `Modality.build_objective`): a lens model trained contrastively against cached anchors by
    default, a video model trained against class text for video.

    Every dataset the recipe names (``data.train`` and each eval task) is built before the
    backbone loads, so a missing folder or manifest fails in seconds, not after loading weights
    or at the first evaluation.
    """
    trainer_cfg = trainer_config_from(OmegaConf.to_container(cfg.trainer, resolve=True))
    modality = recipe_modality(cfg)
    image_transform = DeferredTransform()  # the backbone's preprocessing, bound once it has loaded
    dataset = train_dataset(cfg, modality, image_transform)
    batch_transform = modality.build_batch_transform(cfg, dataset)  # a bad mixing key fails here, early
    eval_cfg = OmegaConf.to_container(cfg.eval, resolve=True)
    eval_sets = eval_datasets(modality, eval_cfg, recipe_tokenizer(cfg))
    env = env or init_distributed(cfg.get("device"))
    backbone = build_backbone(cfg.backbone, env.device)
    image_transform.bind(backbone.preprocess)
    torch.manual_seed(trainer_cfg.seed)  # lens initialisation: the same on every rank and every run
    model, model_cfg = build_model(cfg, backbone)
    train_options = getattr(dataset, "options", None) or OmegaConf.to_container(cfg.data.train, resolve=True)
    modality.check_model_data(model, train_options, "data.train")  # shards: the index's options + the recipe's
    for name, task in (eval_cfg.get("tasks") or {}).items():
        modality.check_model_data(model, task.get("dataset") or {}, f"eval.tasks.{name}.dataset")
    anchors = AnchorStore(backbone, cfg.anchors.get("cache_dir"), int(cfg.anchors.get("batch_size", 256)))
    objective = build_objective(cfg, backbone, anchors, dataset, model)
    evaluators = make_evaluators(modality, eval_cfg, anchors, env.device, trainer_cfg.num_workers,
                                 trainer_cfg.bad_samples, eval_sets)
    trainer_cfg.eval_every = eval_cfg.get("every")
    run_config = {"model": model_cfg, "recipe": OmegaConf.to_container(cfg, resolve=True)}
    trainer = Trainer(trainer_cfg, model, objective, dataset, modality.collate, cfg.output_dir, env=env,
                      evaluators=evaluators, run_config=run_config, batch_transform=batch_transform)
    return trainer, model, model_cfg


def run(cfg: DictConfig) -> TrainResult:
    """Train as the recipe says, then export the trained model as its modality does
    (`Modality.export_model`: a lens to ``<output_dir>/lens``; a video model to
    ``<output_dir>/video``)."""
    trainer, model, model_cfg = build_trainer(cfg)
    try:
        result = trainer.fit()
        anchors = getattr(trainer.objective, "anchors", None)  # objectives scoring against cached features
        if anchors is not None:
            anchors.flush()  # every rank: shards have unique names
        if trainer.env.is_main:
            exported = recipe_modality(cfg).export_model(model, trainer.objective, model_cfg, cfg.output_dir)
            log.info("%s exported to %s", exported.name, exported)
    except BaseException:
        cleanup()  # no barrier: the other ranks may be inside another collective
        raise
    cleanup(synchronize=True)  # every rank got here: tear the group down with its workers idle
    return result


# build_trainer checks every dataset before loading the backbone: no separate preflight.
main = hydra_entry("train", run, preflight=None, description=(
    "Train a lens into a frozen CLIP ViT (or a video model) as a recipe says, then export it under "
    "<output_dir> (lens/, or video/). Running the same command again resumes from the newest checkpoint in "
    "output_dir."))


if __name__ == "__main__":
    main()
