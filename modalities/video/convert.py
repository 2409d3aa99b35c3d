"""Convert published ViFi-CLIP and ILA checkpoints once into omniclip's video export.

``omniclip-convert video.vificlip SRC OUT --trust-pickle`` (and ``video.ila``) reads a published
training file with its strict loader (`omniclip.vificlip.load_vificlip`,
`omniclip.ila_checkpoint.load_ila`) into the base CLIP (``--set backbone=NAME pretrained=TAG``;
default OpenAI ViT-B-16-quickgelu, as ``omniclip-zeroshot`` uses for the published formats),
picks the recipe model config that reproduces the published model, builds that model with
`VideoModality.build_model` on a fresh base CLIP, exactly as `VideoModality.load_export` will,
and fills it from the loaded model:

- ViFi-CLIP full fine-tune (no prompt keys): recipes/model/vificlip.yaml (both towers whole);
- ViFi-CLIP bridge-and-prompt: recipes/model/vificlip_bridge_prompt.yaml, its prompt sizes
  (vision tokens and depth, text context length and depth) read from the checkpoint;
- ILA: recipes/model/ila.yaml, ``num_frames`` / ``hidden`` / ``mit_layers`` / ``prompts_layers``
  (and ``use_prompts``) read from the checkpoint.

The loaded and the rebuilt model are both `VideoClipModel` s of one layout, so tensors match by
name: every tensor the rebuilt model owns takes the loaded one's value, and every tensor it shares
with the base CLIP (frozen towers) must already equal the loaded one. A missing, extra,
mis-shaped or differing tensor stops the conversion with one `CheckpointMismatchError` listing
them all, so the export reproduces the published model or is not written. The checkpoint's logit
scale (which the published formats load into the CLIP) travels as ``backbone.logit_scale``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from omegaconf import OmegaConf
from torch import nn

import omniclip.recipes
from omniclip.convert import ExportConverter, LoadReport, register_converter
from omniclip.errors import CheckpointMismatchError

RECIPES = Path(next(iter(omniclip.recipes.__path__))) / "model"

#: The converters' config: the base CLIP the published model was trained from. ``pretrained``
#: null means OpenAI's weights for the default backbone and random (seeded) weights otherwise,
#: as ``omniclip-zeroshot backbone_name=...`` reads published files.
DEFAULT_CONFIG = {"backbone": "ViT-B-16-quickgelu", "pretrained": None}


def recipe_model(name: str, **values: Any) -> dict[str, Any]:
    """recipes/model/<name>.yaml with ``values`` set, unresolved interpolations replaced by them:
    the converters take every other key from the recipe that trains such a model."""
    section = OmegaConf.to_container(OmegaConf.load(RECIPES / f"{name}.yaml"), resolve=False)
    unknown = sorted(set(values) - set(section))
    if unknown:
        raise KeyError(f"recipes/model/{name}.yaml has no key {unknown[0]}")
    section.update(values)
    return section


def _tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer by every name it has (shared towers appear under each name)."""
    named = dict(model.named_parameters(remove_duplicate=False))
    named.update(dict(model.named_buffers(remove_duplicate=False)))
    return named


def transfer(loaded: nn.Module, built: nn.Module, what: str) -> dict[str, torch.Tensor]:
    """The tensors ``built.trainable_state_dict()`` names, valued from ``loaded`` by name.

    Refuses (one `CheckpointMismatchError` naming every problem) when a tensor of ``built`` has no
    counterpart in ``loaded``, when ``loaded`` holds a tensor ``built`` lacks, when shapes
    differ, or when a tensor ``built`` takes from the base CLIP (not exported) differs from the
    loaded value: then the export would not rebuild the published model.
    """
    source, target = _tensors(loaded), _tensors(built)
    owned = built.trainable_state_dict()
    missing = sorted(set(target) - set(source))
    unexpected = sorted(set(source) - set(target))
    shapes = sorted(k for k in set(target) & set(source) if source[k].shape != target[k].shape)
    # A tensor the model owns may appear under a second name too (deep text prompts are also hooks
    # of the text tower): exported under its first, it is the same object under the other.
    exported = {id(target[k]) for k in owned if k in target}
    differing = sorted(k for k in set(target) & set(source)
                       if id(target[k]) not in exported and k not in shapes
                       and not torch.equal(source[k].detach().to(target[k].dtype), target[k].detach()))
    if missing or unexpected or shapes or differing:
        lines = [f"{what} cannot be written as a video export: {len(missing)} tensors of the rebuilt model get no "
                 f"value, {len(unexpected)} loaded tensors have no place, {len(shapes)} shape mismatches, "
                 f"{len(differing)} base-CLIP tensors differ from the checkpoint's (the export would take them "
                 "from the base CLIP: name the base it was trained from with --set backbone=... pretrained=...)"]
        lines += [f"  no value: {k}" for k in missing] + [f"  no place: {k}" for k in unexpected]
        lines += [f"  shape: {k}: checkpoint {tuple(source[k].shape)} vs rebuilt {tuple(target[k].shape)}"
                  for k in shapes]
        lines += [f"  differs from the base CLIP: {k}" for k in differing]
        raise CheckpointMismatchError("\n".join(lines))
    return {k: source[k].detach().to(v.dtype) for k, v in owned.items()}


def vificlip_model_config(model: nn.Module) -> dict[str, Any]:
    """The recipe model group reproducing an imported ViFi-CLIP (`load_vificlip`'s model)."""
    hooks = getattr(model.trunk, "block_hooks", None) or {}
    prompts = model.text_prompts
    if not hooks and prompts is None:
        return recipe_model("vificlip")
    vision = {"num_tokens": int(hooks["0"].tokens.shape[0]), "depth": len(hooks)} if hooks else None
    text = {"num_tokens": int(prompts.num_tokens), "init": None, "depth": 1 + len(prompts.deep)} if prompts else None
    return recipe_model("vificlip_bridge_prompt", vision_prompts=vision, text_prompts=text,
                        template=None if text else "{}")


def ila_model_config(model: nn.Module) -> dict[str, Any]:
    """The recipe model group reproducing an imported ILA (`load_ila`'s model)."""
    from omniclip.ila import FrameAlignment, MultiframeIntegrationTransformer

    hidden = next(m.hidden for m in model.modules() if isinstance(m, FrameAlignment))
    mit = next(m for m in model.modules() if isinstance(m, MultiframeIntegrationTransformer))
    prompts = model.prompts
    return recipe_model("ila", num_frames=int(model.num_frames), hidden=int(hidden), mit_layers=len(mit.layers),
                        prompts_layers=len(prompts.layers) if prompts is not None else 0,
                        use_prompts=prompts is not None)


def _export(fmt: str, load: Callable[..., Any], model_config: Callable[[nn.Module], dict[str, Any]]
            ) -> Callable[[Path, dict, bool, Path], LoadReport]:
    """The `ExportConverter.export` of one published format: one mechanism for both."""

    def export(src: Path, config: Mapping[str, Any], trust_pickle: bool, out_dir: Path) -> LoadReport:
        from omniclip.backbone import load_backbone
        from omniclip.modalities.video import VideoModality
        from omniclip.modality import write_export

        if not Path(src).is_file():  # before the base CLIP loads (or fails to download)
            raise FileNotFoundError(f"checkpoint file not found: {src}")
        name = str(config["backbone"])
        pretrained = config.get("pretrained")
        if pretrained is None and name == DEFAULT_CONFIG["backbone"]:
            pretrained = "openai"
        # Two copies of the base CLIP: the loader overwrites the towers of the one it is given,
        # the rebuilt model must see the base as load_export will load it.
        source = load_backbone(name, pretrained)
        published = load(src, source, trust_pickle=trust_pickle)
        loaded = published.model
        base = load_backbone(name, pretrained)
        section = model_config(loaded)
        modality = VideoModality()
        built, model_cfg = modality.build_model(OmegaConf.create({"model": section, "trunk": {}}), base)
        state = transfer(loaded, built, f"{fmt} checkpoint {src}")
        built.load_trainable_state_dict(state, source=str(src))
        weights = {f"model.{k}": v for k, v in state.items()}
        # The published loaders put the checkpoint's (log) scale into the CLIP they were given.
        weights["backbone.logit_scale"] = source.model.logit_scale.detach().clone()
        write_export(out_dir, weights, {"model": model_cfg, "class_names": [],
                                        "converted_from": {"converter": f"video.{fmt}", "source": str(src)}})
        return published.report

    return export


def _register() -> None:
    from omniclip.ila_checkpoint import load_ila
    from omniclip.vificlip import load_vificlip

    register_converter(ExportConverter(
        name="video.vificlip",
        description="ViFi-CLIP (full fine-tune or bridge-and-prompt) .pth -> video export (--trust-pickle)",
        export=_export("vificlip", load_vificlip, vificlip_model_config),
        default_config=dict(DEFAULT_CONFIG),
    ))
    register_converter(ExportConverter(
        name="video.ila",
        description="ILA (X-CLIP layout) .pth -> video export (--trust-pickle)",
        export=_export("ila", load_ila, ila_model_config),
        default_config=dict(DEFAULT_CONFIG),
    ))


_register()

__all__ = ["DEFAULT_CONFIG", "ila_model_config", "recipe_model", "transfer", "vificlip_model_config"]
