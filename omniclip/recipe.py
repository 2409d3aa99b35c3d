"""Turning the sections of a hydra recipe into objects, with errors that name the recipe key.

Shared by the training, zero-shot and anchor-precompute commands.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Mapping

import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import Dataset, Subset

from omniclip.anchors import AnchorStore
from omniclip.backbone import ClipBackbone, load_backbone
from omniclip.errors import ConfigError
from omniclip.losses import LogitScale
from omniclip.modality import Modality, get_modality
from omniclip.model import LensModel, build_lens_model
from omniclip.objective import ContrastiveObjective

#: Top-level keys of a recipe; a ConfigError key starting with one of them is already absolute.
RECIPE_GROUPS = ("backbone", "trunk", "lens", "modality", "data", "loss", "anchors", "trainer", "eval")


@contextlib.contextmanager
def config_scope(prefix: str) -> Iterator[None]:
    """Re-raise a ConfigError from inside with its key made absolute (``root`` -> ``data.train.root``)."""
    try:
        yield
    except ConfigError as exc:
        if exc.key.split(".")[0] in RECIPE_GROUPS:
            raise
        raise ConfigError(f"{prefix}.{exc.key}", exc.problem) from exc


def build_dataset(
    modality: Modality, cfg: Mapping[str, Any], split: str, key: str, image_transform: Any = None
) -> Dataset:
    """The modality's dataset for ``cfg``; a ``limit`` key keeps only the first samples.

    ``image_transform`` (the backbone's CLIP preprocessing) is handed to datasets that load
    paired images for image anchors.
    """
    params = dict(cfg)
    limit = params.pop("limit", None)
    with config_scope(key):
        dataset = modality.build_dataset(params, split, image_transform=image_transform)
    if limit is not None and limit < len(dataset):
        subset = Subset(dataset, range(int(limit)))
        for attr in ("class_names", "multilabel", "captions"):  # what evaluation reads
            if hasattr(dataset, attr):
                setattr(subset, attr, getattr(dataset, attr))
        return subset
    return dataset


def build_backbone(cfg: Mapping[str, Any], device: torch.device) -> ClipBackbone:
    with config_scope("backbone"):
        return load_backbone(cfg["name"], cfg.get("pretrained"), device=device,
                             precision=cfg.get("precision", "fp32"), cache_dir=cfg.get("cache_dir"))


def build_model(cfg: DictConfig, backbone: ClipBackbone) -> tuple[LensModel, dict[str, Any]]:
    with config_scope("modality"):
        modality = get_modality(cfg.modality.name)
    trunk_cfg = OmegaConf.to_container(cfg.trunk, resolve=True)
    with config_scope("trunk"):
        trunk = backbone.trunk(**trunk_cfg)
    tokenizer_cfg = OmegaConf.to_container(cfg.modality.get("tokenizer", {}), resolve=True)
    # null = keep the modality's default for that key
    lens_cfg = {k: v for k, v in OmegaConf.to_container(cfg.lens, resolve=True).items() if v is not None}
    with config_scope("modality.tokenizer"):
        model, model_cfg = build_lens_model(modality, trunk, tokenizer_cfg, lens_cfg, backbone.name)
    model_cfg.update(trunk=trunk_cfg, backbone={"name": backbone.name, "pretrained": backbone.pretrained})
    return model, model_cfg


def build_objective(cfg: Mapping[str, Any], anchors: AnchorStore) -> ContrastiveObjective:
    scale = cfg.get("scale") or anchors.backbone.logit_scale
    with config_scope("loss"):
        return ContrastiveObjective(
            anchors,
            LogitScale(scale, learnable=bool(cfg.get("learnable_scale", False))),
            text_weight=float(cfg.get("text_weight", 1.0)),
            image_weight=float(cfg.get("image_weight", 1.0)),
            class_weight=float(cfg.get("class_weight", 0.0)),
            label_smoothing=float(cfg.get("label_smoothing", 0.0)),
            same_text_is_positive=bool(cfg.get("same_text_is_positive", True)),
        )
