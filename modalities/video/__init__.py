"""The video modality: datasets of clips ``[T, 3, H, W]`` for frame-based CLIP video models.

Registers the modality ``video``: datasets (`omniclip.modalities.video.datasets`: Kinetics,
UCF101, HMDB51, Something-Something v2, folder-per-class and ``path label`` lists), a collate
that flattens evaluation views (``group_ids`` tell evaluation which to average), prompt
templates and shipped class names. Batches hold ``inputs`` ``[B, T, 3, H, W]`` (float,
normalised; or uint8 with ``normalize: none``, normalised on the GPU by
`transforms.Normalize`) and ``labels`` ``[B]``.

A video model reads frames through CLIP's image tower, so the modality has no tokenizer: it
builds its own model and objective from a recipe's ``model`` group (`VideoModality.build_model`,
`VideoModality.build_objective`): `omniclip.video_model.VideoClipModel` over the image tower
(frozen, partly unlocked, or trained whole; with vision prompts), trained with
`omniclip.video_objective.ClassObjective` against class text from the model's own text side,
which may train (the tower, or learned prompts), and which evaluation and the export
(`VideoModality.load_export`) use too; recipes/model/vificlip*.yaml. ``model.name: ila`` builds
ILA instead (`omniclip.ila.ILAVideoModel`, recipes/model/ila.yaml), whose class text is
conditioned on each clip. Decoding is in `io` (PyAV /
torchcodec / decord / frame folders), clip sampling in `sampling`, transforms in `transforms`,
batch mixup / cutmix in `mixing`, a GPU-feeding loader in `loader`.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.utils.data import Dataset

from omniclip import registry
from omniclip.anchors import AnchorStore
from omniclip.backbone import ClipBackbone
from omniclip.errors import ConfigError
from omniclip.ila import ILAVideoModel, JitterSchedule, build_ila_model
from omniclip.losses import LogitScale
from omniclip.modalities.video.batch_transforms import build_batch_transform
from omniclip.modalities.video.datasets import CLASS_NAME_FILES, build_dataset
from omniclip.modalities.video.io import VIDEO_SUFFIXES
from omniclip.modalities.video.sampling import SamplingOptions
from omniclip.modalities.video.templates import TEMPLATES
from omniclip.modalities.video.transforms import TransformOptions
from omniclip.modality import Modality, write_export
from omniclip.modality import collate_views as collate_view_rows  # this module's own name is the public one
from omniclip.prompts import TextPrompts, add_vision_prompts
from omniclip.recipe import config_scope
from omniclip.text_trunk import TextTrunk
from omniclip.trunk import ViTTrunk, maybe_copy
from omniclip.video_model import VideoClipModel
from omniclip.video_objective import ClassObjective, ClassText

#: Keys of a recipe's ``model`` group (recipes/model/vificlip*.yaml) and what each may be.
MODEL_KEYS = {
    "name": "a label for the run's records",
    "image_tower": "`whole` (every image-tower weight trains, copied) or `trunk` (as the trunk group says)",
    "text_tower": "`frozen`, `whole`, or the number of first text blocks that train",
    "train_token_embedding": "whether the word embedding trains with a whole text tower",
    "template": "the class prompt, `{}` filled with the class name (without text prompts)",
    "temporal": "how frame embeddings pool over time: `mean`",
    "vision_prompts": "null or {num_tokens, depth}",
    "text_prompts": "null or {num_tokens, init, depth}",
}

#: Keys of an ILA ``model`` group (recipes/model/ila.yaml), chosen by ``name: ila``.
ILA_KEYS = {
    "name": "`ila`: ILA's aligned image tower (omniclip.ila)",
    "num_frames": "frames per clip (MIT's positions): the data's num_frames",
    "hidden": "channels of the alignment's interactive features (256 published)",
    "mit_layers": "layers of the multi-frame integration transformer (1)",
    "prompts_layers": "layers of X-CLIP's video-specific prompt generator (2)",
    "prompts_alpha": "initial weight of the prompts (0.1)",
    "use_prompts": "condition the class text on each clip (X-CLIP prompts)",
    "align_weight": "weight of the summed per-block alignment losses (1: ILA sums them into the loss)",
    "jitter": "mask jitter step in training (0.2)",
    "jitter_decay": "null or {start_step, every, factor}: the jitter is multiplied by factor every `every` "
                    "steps from start_step on",
    "template": "the class prompt, `{}` filled with the class name (ILA: the bare name)",
}


def collate_views(samples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Training clips [T, 3, H, W] stack; evaluation views [V, T, 3, H, W] flatten, one row each."""
    return collate_view_rows(samples, sample_dims=4)


class VideoModality(Modality):
    name = "video"
    templates = {name: list(t) for name, t in TEMPLATES.items()}
    class_name_files = dict(CLASS_NAME_FILES)
    file_suffixes = VIDEO_SUFFIXES
    trains_on_anchors = False  # ClassObjective: class text through the model's own text side

    def build_dataset(
        self, cfg: Mapping[str, Any], split: str, image_transform: Callable[[Any], torch.Tensor] | None = None
    ) -> Dataset:
        return build_dataset(cfg, split, image_transform)

    def collate(self, samples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        return collate_views(samples)

    def build_model(self, cfg: DictConfig, backbone: ClipBackbone) -> tuple[VideoClipModel, dict[str, Any]]:
        """The video model the recipe's ``model`` group describes, on ``backbone``, with its text side.

        ``image_tower: trunk`` builds the tower as the ``trunk`` group says (frozen by default;
        unlocked blocks and tokens are copies); ``whole`` trains every weight of it, patch
        embedding, norms and projection included (copied, so the backbone and its anchor cache
        never change): ViFi-CLIP's full fine-tune. ``vision_prompts`` adds learned prompt tokens
        to the first ``depth`` blocks (bridge-and-prompt). The text side (`text_side`) is the
        model's too, so training, evaluation and the export all use the same one.
        """
        section = model_section(cfg)
        trunk_cfg = OmegaConf.to_container(cfg.trunk, resolve=True)
        if trunk_cfg.get("skip_blocks", 0):
            raise ConfigError("trunk.skip_blocks", f"is {trunk_cfg['skip_blocks']}, but a video model reads frames "
                                                   "through the whole image tower: set it to 0")
        model_cfg = {"modality": self.name, "model": section, "trunk": trunk_cfg,
                     "backbone": {"name": backbone.name, "pretrained": backbone.pretrained}}
        if section.get("name") == "ila":
            model = ila_model(section, trunk_cfg, backbone, micro_batches=_grad_accum_steps(cfg))
            return model, model_cfg
        image_tower = section.get("image_tower", "trunk")
        if image_tower not in ("trunk", "whole"):
            raise ConfigError("model.image_tower", f"`{image_tower}` is not one of ('trunk', 'whole')")
        if section.get("temporal", "mean") != "mean":
            raise ConfigError("model.temporal", f"`{section['temporal']}` is not one of ('mean',)")
        with config_scope("trunk"):
            if image_tower == "whole":
                trunk = whole_image_tower(backbone, trunk_cfg)
            else:
                trunk = backbone.trunk(**trunk_cfg)
        prompts = section.get("vision_prompts")
        if prompts:
            unknown = sorted(set(prompts) - {"num_tokens", "depth"})
            if unknown:
                raise ConfigError(f"model.vision_prompts.{unknown[0]}", "unknown key (known: num_tokens, depth)")
            with config_scope("model.vision_prompts"):
                add_vision_prompts(trunk, num_tokens=int(prompts["num_tokens"]), depth=int(prompts["depth"]))
        text, class_prompts = text_side(section, backbone)
        model = VideoClipModel(trunk, text, text_prompts=class_prompts, tokenizer=backbone.tokenizer)
        return model, model_cfg

    def build_objective(self, cfg: DictConfig, backbone: ClipBackbone, anchors: AnchorStore,
                        dataset: Dataset | None = None, model: VideoClipModel | None = None) -> ClassObjective:
        """Cosine cross-entropy against the training dataset's classes (`ClassObjective`), whose
        text embeddings come, every step, from the model's own text side (`ClassText`).

        ``model`` is the video model the objective trains (`build_model`'s): its text side gives
        the class embeddings, so the objective holds no text parameters of its own.
        The class prompts are ``model.template`` (without text prompts). ``loss`` gives the scale
        (null: CLIP's), ``learnable_scale`` and ``label_smoothing``.
        """
        section = model_section(cfg)
        names = getattr(dataset, "class_names", None)
        if not names:
            raise ConfigError("data.train.classes", "the video model trains against class text, so the training "
                                                    "dataset must name its classes (set `classes`)")
        if model is None:
            raise ValueError("the video objective reads class text through the video model: pass the model "
                             "VideoModality.build_model built as `model=`")
        template = section.get("template")
        class_text = ClassText(names, model, template="{}" if template is None else str(template))
        loss = OmegaConf.to_container(cfg.loss, resolve=True)
        unknown = sorted(set(loss) - {"scale", "learnable_scale", "label_smoothing"})
        if unknown:
            raise ConfigError(f"loss.{unknown[0]}", "is not an option of the video class loss (known: scale, "
                                                    "learnable_scale, label_smoothing): use loss=video_class")
        scale = loss.get("scale") or backbone.logit_scale
        with config_scope("loss"):
            return ClassObjective(class_text, LogitScale(scale, learnable=bool(loss.get("learnable_scale", False))),
                                  label_smoothing=float(loss.get("label_smoothing", 0.0)),
                                  conditioner=getattr(model, "prompts", None))

    def read_clip(self, path: str | Path, num_frames: int) -> torch.Tensor:
        """``num_frames`` uniformly spaced frames of the video ``path``, uint8 [T, 3, H, W] (a short
        video repeats its last frame), for callers outside the datasets (``omniclip-describe``);
        an unreadable file raises `SampleError`, naming it."""
        from omniclip.modalities.video.io import probe, read_frames
        from omniclip.modalities.video.sampling import sample_indices

        info = probe(path)
        indices = sample_indices(info.num_frames, SamplingOptions(num_frames=num_frames, method="uniform"),
                                 train=False)[0]
        return read_frames(path, indices, info=info, layout="TCHW")

    def check_model_data(self, model: nn.Module, dataset_cfg: Mapping[str, Any], key: str) -> None:
        """Frames as large as the model's image tower reads them (``size``), and, for a model with
        per-frame positions (ILA's MIT), as many as it learned (``num_frames``)."""
        trunk = getattr(model, "trunk", None)
        size = int(dataset_cfg.get("size", TransformOptions.size))
        resamples = trunk is not None and trunk.allow_interpolation and not isinstance(model, ILAVideoModel)
        if trunk is not None and size != trunk.image_size and not resamples:  # ILA's masks are on the patch grid
            raise ConfigError(f"{key}.size", f"is {size}, but the model's image tower reads {trunk.image_size}-px "
                                             f"frames: set {key}.size={trunk.image_size}")
        frames = getattr(model, "num_frames", None)
        given = int(dataset_cfg.get("num_frames", SamplingOptions.num_frames))
        if frames is not None and given != frames:
            raise ConfigError(f"{key}.num_frames", f"is {given}, but this model learned positions for {frames} "
                                                   f"frames: set {key}.num_frames={frames}")

    def build_batch_transform(self, cfg: DictConfig,
                              dataset: Dataset | None = None) -> Callable[[dict[str, Any], torch.Generator], dict[str, Any]] | None:
        """Mixup / cutmix with label smoothing of every training micro-batch, as the recipe's
        ``data.mixing`` says (None without it; `omniclip.modalities.video.batch_transforms`)."""
        return build_batch_transform(cfg, dataset)

    def export_model(self, model: nn.Module, objective: nn.Module, model_cfg: Mapping[str, Any],
                     output_dir: str | Path) -> Path:
        """``<output_dir>/video``: ``weights.safetensors`` with every tensor the model owns
        (``model.*``, `VideoClipModel.trainable_state_dict`: image tower parts, prompts, the text
        side when it trains, ILA's modules and statistics) and the objective's trained ones
        (``objective.*``: a learned scale), under the names the trainer's checkpoints use, and
        ``config.json`` (``model``: the model config; ``class_names``: the training classes).
        Everything else is the backbone's own, named in the config; `load_export` rebuilds it."""
        weights = {f"model.{k}": v for k, v in model.trainable_state_dict().items()}
        weights.update({f"objective.{k}": p.detach() for k, p in objective.named_parameters() if p.requires_grad})
        class_names = list(getattr(getattr(objective, "class_text", None), "class_names", []) or [])
        return write_export(Path(output_dir) / "video", weights, {"model": dict(model_cfg), "class_names": class_names})

    def load_export(self, path: str | Path, device: torch.device | str = "cpu", backbone: ClipBackbone | None = None,
                    backbone_pretrained: str | None = None) -> tuple[VideoClipModel, ClipBackbone, dict[str, Any]]:
        """Rebuild the model `export_model` wrote to ``path`` (``<run>/video``) and load its weights
        strictly; returns (model in eval mode, backbone, model config).

        The model is built from the recorded ``model`` and ``trunk`` groups on the recorded
        backbone (or ``backbone``; or its weights from ``backbone_pretrained``), exactly as in
        training, so every exported ``model.*`` tensor must find its place and every tensor the
        model owns must be in the file.
        """
        from safetensors.torch import load_file

        from omniclip.backbone import load_backbone

        path = Path(path)
        config_file, weights_file = path / "config.json", path / "weights.safetensors"
        for needed in (config_file, weights_file):
            if not needed.is_file():
                raise ConfigError("checkpoint", f"{needed}: missing (a video export holds config.json and "
                                                "weights.safetensors, as omniclip-train writes to <run>/video)")
        config = json.loads(config_file.read_text())
        model_cfg = config.get("model", config)
        if model_cfg.get("modality") != self.name or "model" not in model_cfg:
            raise ConfigError("checkpoint", f"{config_file} is not a video model export (modality "
                                            f"`{model_cfg.get('modality')}`)")
        if backbone is None:
            spec = model_cfg.get("backbone") or {}
            with config_scope("backbone"):
                backbone = load_backbone(spec["name"], backbone_pretrained or spec.get("pretrained"), device=device)
        recipe = OmegaConf.create({"model": model_cfg["model"], "trunk": model_cfg.get("trunk") or {}})
        model, _ = self.build_model(recipe, backbone)
        weights = load_file(str(weights_file))
        state = {k[len("model."):]: v for k, v in weights.items() if k.startswith("model.")}
        model.load_trainable_state_dict(state, source=str(weights_file))
        if "backbone.logit_scale" in weights:  # a converted published model's own scale (omniclip-convert video.*)
            with torch.no_grad():
                backbone.model.logit_scale.copy_(weights["backbone.logit_scale"])
        return model.to(device).eval(), backbone, model_cfg


def model_section(cfg: DictConfig) -> dict[str, Any]:
    """The recipe's ``model`` group, resolved and checked for unknown keys (ILA's when ``name: ila``)."""
    if "model" not in cfg or cfg.model is None:
        raise ConfigError("model", "a video recipe names its model group (model=vificlip, "
                                   "model=vificlip_bridge_prompt or model=ila): the video model is not a lens model")
    section = OmegaConf.to_container(cfg.model, resolve=True)
    keys = ILA_KEYS if section.get("name") == "ila" else MODEL_KEYS
    unknown = sorted(set(section) - set(keys))
    if unknown:
        known = "; ".join(f"{k}: {v}" for k, v in keys.items())
        raise ConfigError(f"model.{unknown[0]}", f"unknown key (known: {known})")
    return section


def _grad_accum_steps(cfg: DictConfig) -> int:
    """Micro-batches per optimizer step (``trainer.grad_accum_steps``; 1 outside training)."""
    trainer = cfg.get("trainer") if isinstance(cfg, DictConfig) else None
    return int(trainer.get("grad_accum_steps", 1)) if trainer is not None else 1


def ila_model(section: Mapping[str, Any], trunk_cfg: Mapping[str, Any], backbone: ClipBackbone,
              micro_batches: int = 1) -> ILAVideoModel:
    """`omniclip.ila.ILAVideoModel` from an ILA ``model`` group (recipes/model/ila.yaml): ILA blocks in
    every block of the tower the ``trunk`` group builds (frozen by default), MIT pooling, X-CLIP's
    prompts when ``use_prompts``, CLIP's frozen text tower, and the jitter decay as a function of
    the optimizer step (``jitter_decay``; `omniclip.ila.JitterSchedule`)."""
    frames = section.get("num_frames")
    if isinstance(frames, bool) or not isinstance(frames, int):
        raise ConfigError("model.num_frames", f"must be the clips' frame count (an integer), got {frames!r}")
    decay = section.get("jitter_decay") or {}
    unknown = sorted(set(decay) - {"start_step", "every", "factor"})
    if unknown:
        raise ConfigError(f"model.jitter_decay.{unknown[0]}", "unknown key (known: start_step, every, factor)")
    jitter = float(section.get("jitter", 0.2))
    schedule = JitterSchedule(jitter, decay.get("start_step"), int(decay.get("every") or 1),
                              float(decay.get("factor", 0.5))) if decay.get("start_step") is not None else None
    template = section.get("template")
    if template is not None and "{}" not in str(template):
        raise ConfigError("model.template", f"`{template}` has no `{{}}` for the class name")
    with config_scope("trunk"):
        return build_ila_model(
            backbone, frames, hidden=int(section.get("hidden", 256)), mit_layers=int(section.get("mit_layers", 1)),
            prompts_layers=int(section.get("prompts_layers", 2)), prompts_alpha=float(section.get("prompts_alpha", 0.1)),
            use_prompts=bool(section.get("use_prompts", True)), align_weight=float(section.get("align_weight", 1.0)),
            jitter=jitter, trunk_options=trunk_cfg, jitter_schedule=schedule, micro_batches=micro_batches)


def whole_image_tower(backbone: ClipBackbone, trunk_cfg: Mapping[str, Any]) -> ViTTrunk:
    """The image tower with every weight trainable, copied from ``backbone`` (whose tower, and
    so the anchor cache, never changes): all blocks, class token and positions unlocked through
    `ViTTrunk`, then the patch embedding, both norms and the projection, which `ViTTrunk` always
    shares frozen, copied and unlocked too."""
    blocks = len(backbone.visual.transformer.resblocks)
    options = {**trunk_cfg, "unlocked_blocks": blocks, "unlock_class_token": True, "unlock_positional_embedding": True}
    trunk = backbone.trunk(**options)
    for name in ("conv1", "ln_pre", "ln_post"):
        setattr(trunk, name, copy.deepcopy(getattr(trunk, name)).requires_grad_(True))
    if trunk.proj is not None:
        trunk.proj = maybe_copy(trunk.proj, True)
        trunk.proj.requires_grad_(True)
    return trunk


def text_side(section: Mapping[str, Any], backbone: ClipBackbone) -> tuple[TextTrunk, TextPrompts | None]:
    """The model's text tower and learned text prompts from the ``model`` group.

    ``text_tower``: ``frozen`` (the backbone's own tower, shared), a number of first blocks that
    train (copies), or ``whole`` (a trained copy; its word embedding stays frozen unless
    ``train_token_embedding``, as ViFi-CLIP embeds its prompts once). ``text_prompts``: learned
    context (`text_prompts`), with ``template`` null.
    """
    text_tower = section.get("text_tower", "frozen")
    if text_tower == "frozen":
        unlocked = 0
    elif text_tower == "whole":
        unlocked = -1
    elif isinstance(text_tower, int) and not isinstance(text_tower, bool):
        unlocked = text_tower
    else:
        raise ConfigError("model.text_tower", f"`{text_tower}` is not `frozen`, `whole` or a number of blocks")
    with config_scope("model"):
        try:
            text = TextTrunk(backbone.model, unlocked_blocks=unlocked)
        except ConfigError as error:
            raise ConfigError("model.text_tower", error.problem) from None
    if unlocked == -1 and not section.get("train_token_embedding", False):
        text.token_embedding.requires_grad_(False)
    prompt_cfg = section.get("text_prompts")
    template = section.get("template")
    if prompt_cfg:
        if template is not None:
            raise ConfigError("model.template", "is not used with model.text_prompts (the prompts read "
                                                "`<context> <name>.`): set it to null")
        return text, text_prompts(text, backbone, prompt_cfg)
    if template is not None and "{}" not in str(template):
        raise ConfigError("model.template", f"`{template}` has no `{{}}` for the class name")
    return text, None


def text_prompts(text: TextTrunk, backbone: ClipBackbone, cfg: Mapping[str, Any]) -> TextPrompts:
    """`TextPrompts` from ``model.text_prompts`` ({num_tokens, init, depth}).

    ``init`` words give the context both its length and its start (``"a photo of a"``: 4
    tokens). ``num_tokens`` other than the words' count gives that many context vectors drawn
    from N(0, 0.02) behind ``X`` placeholders, which is what ViFi-CLIP does whenever its
    N_CTX_TEXT exceeds 4 (its published bridge-and-prompt runs: 16, so CTX_INIT is unused).
    """
    unknown = sorted(set(cfg) - {"num_tokens", "init", "depth"})
    if unknown:
        raise ConfigError(f"model.text_prompts.{unknown[0]}", "unknown key (known: num_tokens, init, depth)")
    init, count, depth = cfg.get("init"), cfg.get("num_tokens"), int(cfg.get("depth", 1))
    if init is None and count is None:
        raise ConfigError("model.text_prompts", "set `init` (words that start the context) or `num_tokens`")
    words = None
    if init is not None:
        ids = backbone.tokenizer([str(init)])[0]
        words = int(ids.argmax()) - 1
    with config_scope("model"):
        if count is None or count == words:
            return TextPrompts(text, backbone.tokenizer, init=str(init), depth=depth)
        if int(count) < 1:
            raise ConfigError("model.text_prompts.num_tokens", f"must be >= 1, got {count}")
        prompts = TextPrompts(text, backbone.tokenizer, init=" ".join(["X"] * int(count)), depth=depth)
    if prompts.num_tokens != int(count):
        raise ConfigError("model.text_prompts.num_tokens", f"{count} placeholders made {prompts.num_tokens} tokens")
    with torch.no_grad():
        prompts.context.normal_(std=0.02)
    return prompts


registry.register("modality", "video", VideoModality)

from omniclip.modalities.video import convert as _converters  # noqa: E402,F401  (registers video.vificlip, video.ila)
