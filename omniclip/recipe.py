"""Turning the sections of a hydra recipe into objects, with errors that name the recipe key.

Shared by the training, zero-shot and anchor-precompute commands.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import Dataset, Subset

from omniclip.anchors import AnchorStore
from omniclip.backbone import ClipBackbone, load_backbone
from omniclip.errors import ConfigError
from omniclip.modality import Modality, get_modality

#: Top-level keys of a recipe; a ConfigError key starting with one of them is already absolute.
RECIPE_GROUPS = ("backbone", "trunk", "lens", "model", "modality", "data", "loss", "anchors", "trainer", "eval")

#: Kinds of zero-shot task an eval entry may name (``eval.tasks.<name>.type``).
TASK_TYPES = ("classification", "retrieval")


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
    modality: Modality, cfg: Mapping[str, Any], split: str, key: str, image_transform: Any = None,
    tokenizer_cfg: Mapping[str, Any] | None = None,
) -> Dataset:
    """The modality's dataset for ``cfg``; a ``limit`` key keeps only the first samples.

    ``image_transform`` (the backbone's CLIP preprocessing) is handed to datasets that load
    paired images for image anchors. With ``tokenizer_cfg`` the modality first checks that the
    dataset can feed that tokenizer (`Modality.check_data`).
    """
    params = dict(cfg)
    limit = params.pop("limit", None)
    with config_scope(key):
        if tokenizer_cfg is not None:
            modality.check_data(tokenizer_cfg, params)
        dataset = modality.build_dataset(params, split, image_transform=image_transform)
    if limit is not None and limit < len(dataset):
        subset = Subset(dataset, range(int(limit)))
        for attr in ("class_names", "multilabel", "captions"):  # what evaluation reads
            if hasattr(dataset, attr):
                setattr(subset, attr, getattr(dataset, attr))
        return subset
    return dataset


class DeferredTransform:
    """The backbone's image preprocessing, bound once the backbone has loaded.

    Datasets are built (and so checked) before any weights load; a dataset with paired images
    keeps this object and calls it per sample, by which time `bind` has been called.
    """

    def __init__(self) -> None:
        self._transform: Callable[[Any], torch.Tensor] | None = None

    def bind(self, transform: Callable[[Any], torch.Tensor]) -> None:
        self._transform = transform

    def __call__(self, image: Any) -> torch.Tensor:
        if self._transform is None:
            raise RuntimeError("image transform used before the backbone was loaded")
        return self._transform(image)


def recipe_modality(cfg: DictConfig) -> Modality:
    """The modality a training recipe names (``modality.name``)."""
    with config_scope("modality"):
        return get_modality(cfg.modality.name)


def recipe_tokenizer(cfg: DictConfig) -> dict[str, Any]:
    """The tokenizer config of a training recipe (``modality.tokenizer``)."""
    tokenizer = cfg.modality.get("tokenizer")
    return {} if tokenizer is None else OmegaConf.to_container(tokenizer, resolve=True)  # video: none


def train_dataset(cfg: DictConfig, modality: Modality, image_transform: Any = None) -> Dataset:
    """The ``data.train`` dataset of a training recipe, checked against its tokenizer: a map-style
    dataset, or a `ShardDataset` when it names ``shards`` (WebDataset shards written by
    ``omniclip-shard``; see `omniclip.shards`)."""
    if "train" not in cfg.data:
        raise ConfigError("data.train", "the data group must define a `train` dataset")
    options = OmegaConf.to_container(cfg.data.train, resolve=True)
    if options.get("shards") is not None:
        from omniclip.shards import build_shard_dataset

        return build_shard_dataset(modality, options, "train", "data.train", image_transform, recipe_tokenizer(cfg))
    return build_dataset(modality, options, "train", "data.train",
                         image_transform=image_transform, tokenizer_cfg=recipe_tokenizer(cfg))


def task_dataset(modality: Modality, task: Mapping[str, Any], key: str,
                 tokenizer_cfg: Mapping[str, Any] | None = None) -> Dataset:
    """The dataset of one eval task entry ``key`` ({type, dataset, templates})."""
    kind = task.get("type", "classification")
    if kind not in TASK_TYPES:
        raise ConfigError(f"{key}.type", f"`{kind}` is not one of {TASK_TYPES}")
    if "dataset" not in task:
        raise ConfigError(f"{key}.dataset", "missing")
    return build_dataset(modality, task["dataset"], task["dataset"].get("split", "test"), f"{key}.dataset",
                         tokenizer_cfg=tokenizer_cfg)


def eval_datasets(modality: Modality, eval_cfg: Mapping[str, Any],
                  tokenizer_cfg: Mapping[str, Any] | None = None) -> dict[str, Dataset]:
    """name -> dataset of every task in an eval config (recipes/eval/*.yaml), all built now,
    each checked against ``tokenizer_cfg`` when given."""
    tasks = eval_cfg.get("tasks") or {}
    return {name: task_dataset(modality, task, f"eval.tasks.{name}", tokenizer_cfg) for name, task in tasks.items()}


def checkpoint_config(checkpoint: str | Path) -> dict[str, Any]:
    """The model config of a lens export or trainer checkpoint folder, read without loading weights."""
    config_file = Path(checkpoint) / "config.json"
    if not config_file.is_file():
        problem = "folder does not exist" if not Path(checkpoint).is_dir() else "has no config.json"
        raise ConfigError("checkpoint", f"{checkpoint}: {problem} (expected an export such as "
                                        "runs/<run>/lens or runs/<run>/video, or a converted checkpoint folder; a "
                                        "published ViFi-CLIP / ILA file takes checkpoint_format=vificlip|ila)")
    config = json.loads(config_file.read_text())
    return config.get("model", config)


def check_recipe_data(cfg: DictConfig) -> None:
    """Build, and so check, every dataset a recipe names, before any backbone loads.

    A training recipe names ``data.train`` and its eval tasks; a zero-shot recipe names its eval
    tasks, and its checkpoint's config names the modality and tokenizer. Each is also checked
    against the tokenizer (`Modality.check_data`). The datasets are then dropped.
    """
    if "trainer" in cfg:
        modality, tokenizer_cfg = recipe_modality(cfg), recipe_tokenizer(cfg)
        train_dataset(cfg, modality, DeferredTransform())
    else:
        model_cfg = checkpoint_config(cfg.checkpoint)
        modality, tokenizer_cfg = get_modality(model_cfg["modality"]), model_cfg.get("tokenizer") or {}
    eval_datasets(modality, OmegaConf.to_container(cfg.eval, resolve=True), tokenizer_cfg)


@dataclass
class AnchoredBackbone:
    """A vision tower without contrastive towers (InstructBLIP's) paired with the CLIP whose
    space its lenses are aligned to.

    ViT-Lens trained its InstructBLIP lens into EVA ViT-g against another model's text and image
    embeddings, so a recipe names two models: the tower (``backbone.name``) and the anchors
    (``backbone.anchors``). The trunk, the head and the recorded name are the tower's, so the
    exported lens names the ``instructblip:`` backbone `load_lens_model` and ``omniclip-describe``
    rebuild it on; preprocessing, anchor features and temperature are the anchor CLIP's. Anchor
    caches are keyed by the CLIP's tower fingerprints (which hash its own name and weights).
    """

    tower: Any
    anchors: ClipBackbone

    @property
    def name(self) -> str:
        return self.tower.name

    @property
    def pretrained(self) -> str | None:
        return self.tower.pretrained

    @property
    def device(self) -> torch.device:
        return self.tower.device

    @property
    def preprocess(self) -> Callable[[Any], torch.Tensor]:
        return self.anchors.preprocess

    @property
    def logit_scale(self) -> float:
        return self.anchors.logit_scale

    def trunk(self, **options: Any) -> Any:
        return self.tower.trunk(**options)

    def head(self) -> Any:
        return self.tower.head()

    def encode_text(self, texts: list[str], normalize: bool = True) -> torch.Tensor:
        return self.anchors.encode_text(texts, normalize)

    def encode_image(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        return self.anchors.encode_image(images, normalize)

    def fingerprint(self, tower: str) -> str:
        return self.anchors.fingerprint(tower)


def _load(cfg: Mapping[str, Any], device: torch.device) -> Any:
    return load_backbone(cfg["name"], cfg.get("pretrained"), device=device,
                         precision=cfg.get("precision", "fp32"), cache_dir=cfg.get("cache_dir"))


def build_backbone(cfg: Mapping[str, Any], device: torch.device) -> ClipBackbone | AnchoredBackbone:
    """The recipe's backbone; with ``backbone.anchors`` (a second backbone config) an
    `AnchoredBackbone`: the tower of ``backbone`` aligned to the anchors' CLIP.

    A tower whose lens embedding (its class token, or ``projection_dim`` when the trunk trains a
    projection) is not as wide as the anchors' embedding is refused here, before any step.
    """
    anchors_cfg = cfg.get("anchors")
    with config_scope("backbone"):
        tower = _load(cfg, device)
    if not anchors_cfg:
        return tower
    with config_scope("backbone.anchors"):
        anchors = _load(anchors_cfg, device)
        if not isinstance(anchors, ClipBackbone):
            raise ConfigError("name", f"`{anchors.name}` has no contrastive towers to give anchors: name a CLIP")
    width = int(cfg.get("projection_dim") or tower.trunk().width)
    embed = int(anchors.visual.output_dim)
    if width != embed:
        raise ConfigError("backbone.projection_dim", f"the lens embedding of `{tower.name}` is {width} wide but "
                          f"`{anchors.name}` embeds in {embed} dimensions: set backbone.projection_dim={embed} (and "
                          "trunk.projection_dim, as the instructblip experiments do) to train a projection into the "
                          "anchor space")
    return AnchoredBackbone(tower, anchors)


def build_model(cfg: DictConfig, backbone: ClipBackbone) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The recipe's model and its recorded config: the modality decides what a model is
    (`Modality.build_model`; a lens model by default)."""
    return recipe_modality(cfg).build_model(cfg, backbone)


def build_objective(cfg: DictConfig, backbone: ClipBackbone, anchors: AnchorStore,
                    dataset: Dataset | None = None, model: torch.nn.Module | None = None) -> torch.nn.Module:
    """The recipe's training objective (`Modality.build_objective`; contrastive against cached
    anchors by default). ``dataset`` is the training dataset (class names), ``model`` the
    recipe's model (`build_model`)."""
    return recipe_modality(cfg).build_objective(cfg, backbone, anchors, dataset, model)
