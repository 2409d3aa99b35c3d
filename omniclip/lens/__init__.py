"""Lenses: modules that turn a modality's tokens into the token sequence a frozen ViT reads."""

from __future__ import annotations

from typing import Any, Mapping

from torch import nn

from omniclip import registry
from omniclip.errors import ConfigError
from omniclip.lens.perceiver import IdentityLens, Perceiver

registry.register("lens", "perceiver", Perceiver)
registry.register("lens", "identity", IdentityLens)


def build_lens(cfg: Mapping[str, Any]) -> nn.Module:
    """Build the lens named ``cfg['name']`` with the remaining keys as arguments."""
    params = dict(cfg)
    name = params.pop("name", None)
    if name is None:
        raise ConfigError("lens.name", "missing (one of: " + ", ".join(registry.names("lens")) + ")")
    cls = registry.get("lens", name)
    try:
        return cls(**params)
    except TypeError as exc:
        raise ConfigError(f"lens ({name})", str(exc)) from exc


__all__ = ["Perceiver", "IdentityLens", "build_lens"]
