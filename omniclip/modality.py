"""The modality plugin contract.

A modality is everything the trainer and the zero-shot code must *not* know about a kind of
data: how to read it, how to batch it, how to turn it into tokens, which lens suits it, which
prompts describe it. The core only ever talks to a `Modality` through these methods.

Samples are dicts with singular keys (``inputs``, ``label``, ``text``, ``image``, ``image_key``,
``path``, ``group_id`` for several clips or views of one file); `default_collate` turns them into batch dicts. Keys the core reads from a batch:

``inputs``      whatever the modality tokenizer takes (a tensor or a dict of tensors)
``labels``      LongTensor [B] (single-label) or FloatTensor [B, C] (multi-label), optional
``texts``       list[str] of captions, optional (text anchors)
``images``      FloatTensor [B, 3, H, W] already preprocessed for CLIP, optional (image anchors)
``image_keys``  list[str] identifying each image's content, required with ``images``
``paths``       list[str] source files, for messages
``skipped``     list[(path, problem)] samples dropped by the skip policy while building the batch
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import torch
from torch import nn
from torch.utils.data import Dataset

from omniclip import registry
from omniclip.errors import ConfigError

if TYPE_CHECKING:  # the model and objective modules import this one
    from omegaconf import DictConfig

    from omniclip.anchors import AnchorStore
    from omniclip.backbone import ClipBackbone
    from omniclip.trainer import BatchTransform


@dataclass(frozen=True)
class TrunkSpec:
    """What a tokenizer or lens needs to know about the ViT it feeds."""

    width: int
    patch_size: int
    num_positions: int  # positional-embedding rows including the class token
    image_size: int
    num_blocks: int
    embed_dim: int


class Modality:
    """Base class of a modality plugin. Subclasses set ``name`` and override what they support."""

    name: str = ""
    #: Default lens hyper-parameters keyed by backbone name; "default" is the fallback.
    default_lens: Mapping[str, Mapping[str, Any]] = {}
    #: Prompt template sets; "default" is used when a recipe names none.
    templates: Mapping[str, Sequence[str]] = {}
    #: Metric names zero-shot evaluation reports for this modality.
    metrics: Sequence[str] = ("top1", "top5", "mean_per_class_recall")
    #: Class-name files shipped in the modality package's ``classnames/`` folder, by dataset name
    #: (one name per line, in label order). Datasets that carry their own names are not listed.
    class_name_files: Mapping[str, str] = {}
    #: File name suffixes of this modality's sample files (lower case), for commands that take
    #: files and must tell which modality one belongs to.
    file_suffixes: Sequence[str] = ()
    #: Whether training reads the training data's caption / image anchors (`AnchorStore`): a lens
    #: does; a model trained against class text through its own text side (video) does not, so
    #: ``omniclip-anchors`` caches only its eval class prompts.
    trains_on_anchors: bool = True

    def build_model(self, cfg: "DictConfig", backbone: "ClipBackbone") -> tuple[nn.Module, dict[str, Any]]:
        """The model a training recipe ``cfg`` (the whole composed recipe) describes, on
        ``backbone``, and the config that records it (saved with checkpoints and the export).

        The model follows the trainer's contract: ``forward(batch)`` -> embeddings [B, E] (or
        ``(embeddings, aux_losses)``), ``encode``, ``trainable_state_dict`` and
        ``set_grad_checkpointing``. The default is a lens model: the modality's tokenizer
        (``modality.tokenizer``) and a lens (``lens``, over `lens_defaults`) into the ViT trunk
        ``trunk`` describes, frozen unless it unlocks parts. A modality whose data CLIP's towers
        read themselves (video frames) overrides this.
        """
        from omegaconf import OmegaConf

        from omniclip.model import build_lens_model
        from omniclip.recipe import config_scope, recipe_tokenizer

        trunk_cfg = OmegaConf.to_container(cfg.trunk, resolve=True)
        with config_scope("trunk"):
            trunk = backbone.trunk(**trunk_cfg)
        tokenizer_cfg = recipe_tokenizer(cfg)
        # null = keep the modality's default for that key
        lens_cfg = {k: v for k, v in OmegaConf.to_container(cfg.lens, resolve=True).items() if v is not None}
        with config_scope("modality.tokenizer"):
            model, model_cfg = build_lens_model(self, trunk, tokenizer_cfg, lens_cfg, backbone.name)
        model_cfg.update(trunk=trunk_cfg, backbone={"name": backbone.name, "pretrained": backbone.pretrained})
        return model, model_cfg

    def build_objective(self, cfg: "DictConfig", backbone: "ClipBackbone", anchors: "AnchorStore",
                        dataset: Dataset | None = None, model: nn.Module | None = None) -> nn.Module:
        """The training objective of recipe ``cfg``: ``objective(embeddings, batch) -> (loss, logs)``.

        ``dataset`` is the training dataset (its ``class_names`` for class-level objectives);
        ``model`` the model `build_model` made, for objectives that read part of it (a video
        model's text side gives the class embeddings). The default ignores it.
        The default is the contrastive objective (``loss``) against the frozen towers' features,
        cached in ``anchors``: text, paired images, class prompts.
        """
        from omegaconf import OmegaConf

        from omniclip.losses import LogitScale
        from omniclip.objective import ContrastiveObjective
        from omniclip.recipe import config_scope

        loss = OmegaConf.to_container(cfg.loss, resolve=True)
        scale = loss.get("scale") or anchors.backbone.logit_scale
        with config_scope("loss"):
            return ContrastiveObjective(
                anchors,
                LogitScale(scale, learnable=bool(loss.get("learnable_scale", False))),
                text_weight=float(loss.get("text_weight", 1.0)),
                image_weight=float(loss.get("image_weight", 1.0)),
                class_weight=float(loss.get("class_weight", 0.0)),
                label_smoothing=float(loss.get("label_smoothing", 0.0)),
                same_text_is_positive=bool(loss.get("same_text_is_positive", True)),
            )

    def check_model_data(self, model: nn.Module, dataset_cfg: Mapping[str, Any], key: str) -> None:
        """Raise `ConfigError` (naming ``key``, the dataset's recipe key, plus the option) when the
        dataset ``dataset_cfg`` cannot feed the built ``model``: frames of another size than its
        image tower reads, or another frame count than a model with per-frame positions learned.

        Called for every dataset of a run once the model is built, before any step, so such a
        mismatch is one line naming the key to set, not a shape error mid-run. The base class
        has nothing to check (a tokenizer's fit is checked by `check_data`).
        """

    def build_batch_transform(self, cfg: "DictConfig", dataset: Dataset | None = None) -> "BatchTransform | None":
        """The transform the trainer applies to every training micro-batch on the device, before
        the forward (`omniclip.trainer.BatchTransform`: ``(batch, generator) -> batch``), or None.

        For augmentation that needs the whole batch (mixup, cutmix): it cannot run per sample in
        the dataset, and on the accelerator it costs nothing the loader would feel. Its
        randomness must come from the generator it is handed, which the trainer checkpoints, so
        resume stays exact. ``dataset`` is the training dataset (its ``class_names`` for soft
        targets). The default is None: batches train as the loader made them.
        """
        return None

    def export_model(self, model: nn.Module, objective: nn.Module, model_cfg: Mapping[str, Any],
                     output_dir: str | Path) -> Path:
        """Write what a finished run hands on (its trained weights and config) under
        ``output_dir``; returns the folder written.

        The default is the lens export ``<output_dir>/lens`` (``lens.safetensors`` +
        ``config.json``, `omniclip.model.LensModel.save_lens`), which `load_lens_model` and the
        zero-shot command read. The objective is not part of it: its only weights are a
        temperature. Modalities whose objective holds trained weights (a text side) override this.
        """
        directory = Path(output_dir) / "lens"
        model.save_lens(directory, model_cfg)
        return directory

    def build_tokenizer(self, cfg: Mapping[str, Any], trunk: TrunkSpec) -> nn.Module:
        """Module mapping ``batch['inputs']`` to tokens [B, N, d] (positions already added)."""
        raise NotImplementedError(f"modality `{self.name}` has no tokenizer")

    def build_dataset(
        self, cfg: Mapping[str, Any], split: str, image_transform: Callable[[Any], torch.Tensor] | None = None
    ) -> Dataset:
        """Dataset of sample dicts for ``split`` ("train", "val", "test").

        ``image_transform`` is the backbone's CLIP preprocessing, for datasets with paired images.
        Raise `ConfigError` with keys relative to ``cfg`` (``"root"``) for bad settings, and
        `SampleError` from ``__getitem__`` for bad files.
        """
        raise NotImplementedError(f"modality `{self.name}` has no dataset `{cfg.get('name')}`")

    def shard_codec(self, cfg: Mapping[str, Any], split: str,
                    image_transform: Callable[[Any], torch.Tensor] | None = None) -> Any:
        """The codec between this modality's dataset records and WebDataset shard samples
        (`omniclip.shards.ShardCodec`), with the dataset options of ``cfg`` (the source
        dataset's config overridden by the recipe's; layout keys such as ``root`` are ignored).

        The default asks the modality package's ``datasets`` module for ``shard_codec``; a
        modality without one cannot be sharded (`ConfigError` naming ``shards``).
        """
        import importlib

        try:
            module = importlib.import_module(f"{type(self).__module__}.datasets")
        except ModuleNotFoundError:
            module = None
        build = getattr(module, "shard_codec", None)
        if build is None:
            raise ConfigError("shards", f"modality `{self.name}` has no shard codec: its datasets cannot be "
                                        "written to or read from shards")
        return build(cfg, split, image_transform)

    def check_data(self, tokenizer_cfg: Mapping[str, Any], dataset_cfg: Mapping[str, Any]) -> None:
        """Raise `ConfigError` (keys relative to ``dataset_cfg``) when a dataset cannot feed the
        tokenizer ``tokenizer_cfg`` (the recipe's ``modality.tokenizer``), e.g. clouds too small
        for its groups.

        Must be cheap and build nothing: every dataset of a recipe is checked before the backbone
        loads. The base class has nothing to check.
        """

    def collate(self, samples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """Stack samples into a batch dict (see module docstring)."""
        return default_collate(samples)

    def class_names(self, dataset: str) -> list[str]:
        """Class names of a labelled dataset, in label order, from `class_name_files`."""
        if dataset not in self.class_name_files:
            shipped = ", ".join(self.class_name_files) or "none"
            raise ConfigError(
                "name", f"modality `{self.name}` ships no class names for `{dataset}` (shipped: {shipped}); "
                        "datasets with their own class list expose `class_names`"
            )
        folder = resources.files(type(self).__module__).joinpath("classnames")
        text = folder.joinpath(self.class_name_files[dataset]).read_text()
        return [line.strip() for line in text.splitlines() if line.strip()]

    def template_set(self, name: str | None = None) -> list[str]:
        key = name or "default"
        if key not in self.templates:
            known = ", ".join(sorted(self.templates)) or "none"
            raise KeyError(f"modality `{self.name}` has no template set `{key}` (known: {known})")
        return list(self.templates[key])

    def lens_defaults(self, backbone: str) -> dict[str, Any]:
        """Lens config for ``backbone`` (exact name, else "default")."""
        return dict(self.default_lens.get(backbone, self.default_lens.get("default", {})))


# Sample dicts use singular keys; batches use the plural names the core reads.
SAMPLE_TO_BATCH_KEY = {
    "inputs": "inputs",
    "label": "labels",
    "text": "texts",
    "image": "images",
    "image_key": "image_keys",
    "path": "paths",
    "group_id": "group_ids",
}


def default_collate(samples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Stack tensor fields and labels; keep strings and other fields as lists."""
    if not samples:
        return {}
    batch: dict[str, Any] = {}
    for key in samples[0]:
        values = [s[key] for s in samples]
        out_key = SAMPLE_TO_BATCH_KEY.get(key, key)
        if isinstance(values[0], torch.Tensor):
            batch[out_key] = torch.stack(values)
        elif key == "label":
            batch[out_key] = torch.as_tensor(values)
        else:
            batch[out_key] = values
    return batch


def collate_views(samples: Sequence[Mapping[str, Any]], sample_dims: int) -> dict[str, Any]:
    """`default_collate`, except that evaluation samples holding several views of one file
    (``inputs`` with one dimension more than ``sample_dims``: audio clips [n, T], video views
    [V, T, 3, H, W]) are flattened to one row per view, every other field repeated per view
    (``group_ids`` tell evaluation which rows to average)."""
    if samples[0]["inputs"].dim() == sample_dims:
        return default_collate(samples)
    counts = torch.tensor([s["inputs"].shape[0] for s in samples])
    batch = default_collate([{k: v for k, v in s.items() if k != "inputs"} for s in samples])
    for key, value in batch.items():
        if isinstance(value, torch.Tensor):
            batch[key] = value.repeat_interleave(counts, dim=0)
        else:
            batch[key] = [v for v, n in zip(value, counts.tolist()) for _ in range(n)]
    batch["inputs"] = torch.cat([s["inputs"] for s in samples])
    return batch


def write_export(directory: str | Path, tensors: Mapping[str, torch.Tensor], config: Mapping[str, Any],
                 weights_name: str = "weights.safetensors") -> Path:
    """Write ``tensors`` as safetensors and ``config`` as ``config.json`` into ``directory``, each
    through a temporary file, so an interrupted export never leaves a half-written file under
    the final name."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    # Independent copies: tied or shared tensors share storage, which safetensors refuses.
    copies = {k: v.detach().cpu().clone().contiguous() for k, v in tensors.items()}
    tmp = directory / f".{weights_name}.tmp"
    save_file(copies, str(tmp))
    tmp.replace(directory / weights_name)
    tmp_cfg = directory / ".config.json.tmp"
    tmp_cfg.write_text(json.dumps(dict(config), indent=2, default=str))
    tmp_cfg.replace(directory / "config.json")
    return directory


def get_modality(name: str) -> Modality:
    """The registered modality ``name`` (imports ``omniclip.modalities.<name>`` on first use)."""
    entry = registry.get("modality", name)
    return entry() if isinstance(entry, type) else entry
