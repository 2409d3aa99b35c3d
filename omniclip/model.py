"""The lens model: modality tokenizer -> lens -> frozen ViT trunk -> normalised CLIP embedding."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from omniclip.errors import CheckpointMismatchError, ConfigError
from omniclip.state import load_exactly
from omniclip.trunk import ViTTrunk


class LensModel(nn.Module):
    """``encode(inputs)`` = normalize(trunk(lens(tokenizer(inputs)))).

    Only the tokenizer, the lens and the trunk's unlocked parts train; `trainable_state_dict`
    returns exactly those, so a checkpoint can be shared without the CLIP it sits on.
    """

    def __init__(self, tokenizer: nn.Module, lens: nn.Module, trunk: ViTTrunk) -> None:
        super().__init__()
        self.tokenizer = tokenizer
        self.lens = lens
        self.trunk = trunk
        _check_widths(tokenizer, lens, trunk)

    def forward_features(self, inputs: Any, mask: torch.Tensor | None = None, **hook_kwargs: Any) -> torch.Tensor:
        """Trunk block outputs [B, 1+L, D] (before pooling): what a Q-Former head reads."""
        tokens = self.tokenizer(inputs)
        latents = self.lens(tokens, mask=mask)
        return self.trunk.forward_features(latents, **hook_kwargs)

    def encode(self, inputs: Any, normalize: bool = True, mask: torch.Tensor | None = None) -> torch.Tensor:
        embedding = self.trunk.forward_head(self.forward_features(inputs, mask=mask))
        return F.normalize(embedding, dim=-1) if normalize else embedding

    def forward(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """Batch dict (``inputs``, optional ``mask``) -> normalised embeddings [B, E]."""
        return self.encode(batch["inputs"], mask=batch.get("mask"))

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.trunk.set_grad_checkpointing(enable)

    def cast_frozen(self, dtype: torch.dtype) -> None:
        """Store the frozen trunk (and the image tower it shares) in ``dtype`` (``trainer.frozen_dtype``).

        Tokenizer and lens train whole (their buffers are checkpointed), so they stay fp32; the
        trunk casts its tokens at each module boundary and returns fp32 (`ViTTrunk.cast_frozen`).
        """
        self.trunk.cast_frozen(dtype)

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Tokenizer and lens in full (buffers too), plus the trunk's trainable parameters."""
        state = {f"tokenizer.{k}": v for k, v in self.tokenizer.state_dict().items()}
        state.update({f"lens.{k}": v for k, v in self.lens.state_dict().items()})
        for name, param in self.trunk.named_parameters():
            if param.requires_grad:
                state[f"trunk.{name}"] = param
        return {k: v.detach() for k, v in state.items()}

    def load_trainable_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Load what `trainable_state_dict` wrote; every key must match exactly."""
        load_exactly(self, state, self.trainable_state_dict(), "lens checkpoint")

    def save_lens(self, directory: str | Path, config: Mapping[str, Any]) -> None:
        """Write ``lens.safetensors`` (trainable weights) and ``config.json`` to ``directory``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        # Independent copies: tied layers share storage, which safetensors refuses.
        tensors = {k: v.detach().cpu().clone().contiguous() for k, v in self.trainable_state_dict().items()}
        tmp = directory / ".lens.safetensors.tmp"
        save_file(tensors, str(tmp))
        tmp.replace(directory / "lens.safetensors")
        tmp_cfg = directory / ".config.json.tmp"
        tmp_cfg.write_text(json.dumps(dict(config), indent=2, default=str))
        tmp_cfg.replace(directory / "config.json")

    def load_lens(self, directory: str | Path) -> None:
        self.load_trainable_state_dict(load_file(str(Path(directory) / "lens.safetensors")))


def _check_widths(tokenizer: nn.Module, lens: nn.Module, trunk: ViTTrunk) -> None:
    token_dim = getattr(tokenizer, "out_dim", None)
    lens_in = getattr(lens, "input_dim", None)
    if token_dim is not None and lens_in is not None and token_dim != lens_in:
        raise ConfigError(
            "lens.input_dim", f"the tokenizer gives {token_dim}-wide tokens but the lens reads {lens_in}-wide tokens"
        )
    lens_out = getattr(lens, "out_dim", None)
    if lens_out is not None and lens_out != trunk.width:
        raise ConfigError(
            "lens.latent_dim", f"the lens gives {lens_out}-wide tokens but the trunk is {trunk.width} wide"
        )
    num_tokens = getattr(lens, "num_tokens", None)
    if num_tokens is not None:
        try:
            trunk.check_num_tokens(num_tokens)
        except ConfigError as exc:
            raise ConfigError("lens.num_latents", exc.problem) from None


def resolve_lens_config(cfg: Mapping[str, Any], tokenizer: nn.Module, trunk: ViTTrunk) -> dict[str, Any]:
    """Fill ``"auto"`` / missing sizes from the trunk and tokenizer.

    ``input_dim`` <- tokenizer.out_dim, ``latent_dim`` <- trunk width, ``num_latents`` <- the
    trunk's patch positions (so pretrained positional embeddings apply unchanged), and
    ``latent_heads`` <- latent_dim // latent_dim_head.
    """
    resolved = dict(cfg)
    name = resolved.get("name", "perceiver")
    resolved["name"] = name
    auto = {"input_dim": getattr(tokenizer, "out_dim", None)}
    if name == "perceiver":
        auto["latent_dim"] = trunk.width
        auto["num_latents"] = trunk.num_positions - 1
    for key, value in auto.items():
        if resolved.get(key, "auto") in ("auto", None):
            if value is None:
                raise ConfigError(f"lens.{key}", "is `auto` but the tokenizer does not declare `out_dim`")
            resolved[key] = value
    if name == "perceiver" and resolved.get("latent_heads", "auto") in ("auto", None):
        head = int(resolved.get("latent_dim_head", 64))
        if resolved["latent_dim"] < head:
            raise ConfigError("lens.latent_dim_head", f"{head} exceeds latent_dim {resolved['latent_dim']}, so "
                              f"`auto` latent_heads would be 0: set lens.latent_dim_head to at most "
                              f"{resolved['latent_dim']} (or lens.latent_heads)")
        resolved["latent_heads"] = resolved["latent_dim"] // head
    return resolved


def build_lens_model(
    modality: Any,
    trunk: ViTTrunk,
    tokenizer_cfg: Mapping[str, Any] | None = None,
    lens_cfg: Mapping[str, Any] | None = None,
    backbone_name: str = "default",
) -> tuple[LensModel, dict[str, Any]]:
    """Assemble a `LensModel` for ``modality`` (a `Modality` or its registered name).

    The lens config is the modality's defaults for ``backbone_name`` overridden by ``lens_cfg``.
    Returns the model and the fully resolved config (what `save_lens` should record).
    """
    from omniclip.lens import build_lens
    from omniclip.modality import get_modality

    if isinstance(modality, str):
        modality = get_modality(modality)
    tokenizer = modality.build_tokenizer(dict(tokenizer_cfg or {}), trunk.spec())
    merged = modality.lens_defaults(backbone_name)
    merged.update(dict(lens_cfg or {}))
    resolved = resolve_lens_config(merged, tokenizer, trunk)
    lens = build_lens(resolved)
    model = LensModel(tokenizer, lens, trunk)
    config = {"modality": modality.name, "tokenizer": dict(tokenizer_cfg or {}), "lens": resolved}
    return model, config


def load_lens_model(
    path: str | Path,
    backbone: Any = None,
    backbone_pretrained: str | None = None,
    device: str | torch.device = "cpu",
) -> tuple[LensModel, Any, dict[str, Any]]:
    """Rebuild a trained lens model from a lens export or a trainer checkpoint directory.

    ``path`` holds ``lens.safetensors`` + ``config.json`` (what training exports to
    ``<run>/lens``) or ``weights.safetensors`` + ``config.json`` (a ``checkpoints/step_*``
    directory). The config names the backbone (any name `omniclip.backbone.load_backbone` takes,
    ``instructblip:<folder or hub id>`` included); pass ``backbone`` to reuse a loaded one (the
    same model from another place: a lens recorded on a hub id, loaded on its downloaded
    folder), or ``backbone_pretrained`` to take its weights from elsewhere (e.g. a local file).
    A lens whose width is not the trunk's is refused, naming both. Returns (model, backbone,
    model config).
    """
    from omniclip.backbone import load_backbone

    path = Path(path)
    config_file = path / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{path}: no config.json (expected a lens export or a checkpoint directory)")
    config = json.loads(config_file.read_text())
    model_cfg = config.get("model", config)
    spec = model_cfg.get("backbone") or {}
    if backbone is None:
        if "name" not in spec:
            raise ConfigError("backbone", f"{config_file} names no backbone (save_lens's config needs "
                              "backbone.name, e.g. ViT-L-14 or instructblip:<folder>): pass backbone=")
        backbone = load_backbone(spec["name"], backbone_pretrained or spec.get("pretrained"), device=device)
    trunk = backbone.trunk(**model_cfg.get("trunk", {}))
    _check_tower(path, model_cfg, backbone.name, trunk)
    model, _ = build_lens_model(model_cfg["modality"], trunk, model_cfg.get("tokenizer"), model_cfg["lens"],
                                spec.get("name", backbone.name))
    if (path / "lens.safetensors").is_file():
        state = load_file(str(path / "lens.safetensors"))
    elif (path / "weights.safetensors").is_file():
        raw = load_file(str(path / "weights.safetensors"))
        state = {k[len("model."):]: v for k, v in raw.items() if k.startswith("model.")}
    else:
        raise FileNotFoundError(f"{path}: neither lens.safetensors nor weights.safetensors")
    model.load_trainable_state_dict(state)
    return model.to(device).eval(), backbone, model_cfg


def _check_tower(path: Path, model_cfg: Mapping[str, Any], backbone_name: str, trunk: ViTTrunk) -> None:
    """A lens feeds only the tower it was trained on: say so, naming both widths, before the
    width mismatch surfaces as some tokenizer or lens key (the audio tokenizer sizes itself
    from the trunk, so its tokens would match the trunk and not the lens)."""
    width = model_cfg["lens"].get("latent_dim")
    if isinstance(width, int) and width != trunk.width:
        trained_on = (model_cfg.get("backbone") or {}).get("name", "unrecorded")
        raise CheckpointMismatchError(
            f"the lens {path} was trained on a {width}-wide vision tower (backbone {trained_on}) but "
            f"{backbone_name}'s tower is {trunk.width} wide: a lens feeds only the tower it was trained on; "
            "use a lens trained on this tower")
