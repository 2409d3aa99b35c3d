"""``omniclip-train``: the recipe-driven training command (hydra app).

    omniclip-train experiment=pointcloud/vitlens_l_shapenet
    torchrun --nproc-per-node 8 -m omniclip.train experiment=...
    omniclip-train experiment=... debug=default        # CPU-fast smoke run

Running the same command again resumes from the newest checkpoint in ``output_dir``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from omniclip.anchors import AnchorStore
from omniclip.cli import hydra_entry
from omniclip.distributed import DistEnv, cleanup, init_distributed
from omniclip.errors import ConfigError
from omniclip.modality import get_modality
from omniclip.model import LensModel
from omniclip.recipe import build_backbone, build_dataset, build_model, build_objective
from omniclip.trainer import Trainer, TrainResult, trainer_config_from
from omniclip.zeroshot import make_evaluators

log = logging.getLogger(__name__)


def build_trainer(cfg: DictConfig, env: DistEnv | None = None) -> tuple[Trainer, LensModel, dict[str, Any]]:
    """Everything a run needs, validated before any training step."""
    env = env or init_distributed(cfg.get("device"))
    trainer_cfg = trainer_config_from(OmegaConf.to_container(cfg.trainer, resolve=True))
    backbone = build_backbone(cfg.backbone, env.device)
    torch.manual_seed(trainer_cfg.seed)  # lens initialisation: the same on every rank and every run
    model, model_cfg = build_model(cfg, backbone)
    modality = get_modality(cfg.modality.name)
    if "train" not in cfg.data:
        raise ConfigError("data.train", "the data group must define a `train` dataset")
    dataset = build_dataset(modality, OmegaConf.to_container(cfg.data.train, resolve=True), "train", "data.train",
                            image_transform=backbone.preprocess)
    anchors = AnchorStore(backbone, cfg.anchors.get("cache_dir"), int(cfg.anchors.get("batch_size", 256)))
    objective = build_objective(OmegaConf.to_container(cfg.loss, resolve=True), anchors)
    eval_cfg = OmegaConf.to_container(cfg.eval, resolve=True)
    evaluators = make_evaluators(modality, eval_cfg, anchors, env.device, trainer_cfg.num_workers,
                                 trainer_cfg.bad_samples)
    trainer_cfg.eval_every = eval_cfg.get("every")
    run_config = {"model": model_cfg, "recipe": OmegaConf.to_container(cfg, resolve=True)}
    trainer = Trainer(trainer_cfg, model, objective, dataset, modality.collate, cfg.output_dir, env=env,
                      evaluators=evaluators, run_config=run_config)
    return trainer, model, model_cfg


def run(cfg: DictConfig) -> TrainResult:
    """Train as the recipe says, then export the lens to ``<output_dir>/lens``."""
    trainer, model, model_cfg = build_trainer(cfg)
    try:
        result = trainer.fit()
        trainer.objective.anchors.flush()  # every rank: shards have unique names
        if trainer.env.is_main:
            model.save_lens(Path(cfg.output_dir) / "lens", model_cfg)
            log.info("lens exported to %s", Path(cfg.output_dir) / "lens")
        return result
    finally:
        cleanup()


main = hydra_entry("train", run)


if __name__ == "__main__":
    main()
