"""The point-cloud modality: ViT-Lens 3D (Point-BERT / PointNet++ tokenizers into a frozen CLIP ViT).

Registers the modality ``pointcloud`` and, through `omniclip.modalities.pointcloud.convert`, the
checkpoint converters ``pointcloud.vitlens-l`` and ``pointcloud.vitlens-bigg``.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn
from torch.utils.data import Dataset

from omniclip import registry
from omniclip.errors import ConfigError
from omniclip.modalities.pointcloud import convert as _converters  # noqa: F401  (registers converters)
from omniclip.modalities.pointcloud.datasets import CloudOptions, build_dataset
from omniclip.modalities.pointcloud.lens_configs import LENSES, TOKENIZERS
from omniclip.modalities.pointcloud.templates import TEMPLATES
from omniclip.modalities.pointcloud.tokenizers import PointBertTokenizer, PointNet2Tokenizer
from omniclip.modality import Modality, TrunkSpec, default_collate

_TOKENIZER_CLASSES: dict[str, type[nn.Module]] = {"pointbert": PointBertTokenizer, "pnsa": PointNet2Tokenizer}
_TOKENIZER_RUNTIME_KEYS = ("fps_start", "eval_fps_start")


def build_tokenizer(cfg: Mapping[str, Any]) -> nn.Module:
    """``cfg['name']`` (``pointbert`` or ``pnsa``) with `TOKENIZERS` defaults overridden by ``cfg``."""
    params = dict(cfg)
    name = params.pop("name", "pointbert")
    if name not in _TOKENIZER_CLASSES:
        raise ConfigError("name", f"unknown point-cloud tokenizer `{name}` (known: {', '.join(_TOKENIZER_CLASSES)})")
    known = set(TOKENIZERS[name]) | set(_TOKENIZER_RUNTIME_KEYS)
    unknown = sorted(set(params) - known)
    if unknown:
        raise ConfigError(unknown[0], f"unknown option for tokenizer `{name}` (known: {', '.join(sorted(known))})")
    merged = {**TOKENIZERS[name], **params}
    if "mlp" in merged:
        merged["mlp"] = tuple(merged["mlp"])
    return _TOKENIZER_CLASSES[name](**merged)


def pad_clouds(clouds: Sequence[torch.Tensor]) -> torch.Tensor:
    """Stack clouds [N_i, C] into [B, max N_i, C], repeating each cloud's points cyclically.

    Repeats leave FPS centres, kNN neighbourhoods (up to ties) and max-pooled features of a
    cloud essentially unchanged, unlike zero padding, which would add a fake point at the origin.
    """
    longest = max(c.shape[0] for c in clouds)
    return torch.stack([c if c.shape[0] == longest else c[torch.arange(longest) % c.shape[0]] for c in clouds])


class PointCloudModality(Modality):
    name = "pointcloud"
    default_lens = LENSES
    templates = {name: list(t) for name, t in TEMPLATES.items()}
    class_name_files = {"modelnet40": "modelnet40.txt", "scanobjectnn": "scanobjectnn.txt"}

    def build_tokenizer(self, cfg: Mapping[str, Any], trunk: TrunkSpec) -> nn.Module:
        return build_tokenizer(cfg)

    def build_dataset(
        self, cfg: Mapping[str, Any], split: str, image_transform: Callable[[Any], torch.Tensor] | None = None
    ) -> Dataset:
        return build_dataset(cfg, split, image_transform)

    def check_data(self, tokenizer_cfg: Mapping[str, Any], dataset_cfg: Mapping[str, Any]) -> None:
        """ConfigError (key ``num_points`` or ``min_points`` of ``dataset_cfg``) when the dataset
        makes clouds too small for the tokenizer ``tokenizer_cfg`` (the recipe's
        ``modality.tokenizer``, defaults filled in as `build_tokenizer` does).

        Cheap (nothing is built), so a recipe can be checked before the backbone loads;
        otherwise the first step fails inside farthest-point sampling. With ``num_points: null``
        each file keeps its count, and then ``min_points`` must cover the tokenizer.
        """
        params = dict(tokenizer_cfg)
        name = params.pop("name", "pointbert")
        if name not in TOKENIZERS:
            return  # building the tokenizer reports it, under the tokenizer's key
        merged = {**TOKENIZERS[name], **params}
        num_groups, group_size = int(merged["num_groups"]), int(merged["group_size"])
        need = max(num_groups, group_size)
        tokenizer_keys = f"modality.tokenizer.num_groups={num_groups}, group_size={group_size}"
        num_points = dataset_cfg.get("num_points", CloudOptions.num_points)
        min_points = dataset_cfg.get("min_points", CloudOptions.min_points)
        if num_points is not None and int(num_points) < need:
            raise ConfigError("num_points", f"{num_points} points per cloud cannot make the tokenizer's groups "
                                            f"({tokenizer_keys}): set num_points >= {need}")
        if num_points is None and int(min_points) < need:
            raise ConfigError("min_points", f"{min_points} with num_points: null lets clouds smaller than the "
                                            f"tokenizer's groups through ({tokenizer_keys}): set min_points >= {need}")

    def collate(self, samples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """`default_collate`, with clouds of different sizes padded by `pad_clouds`."""
        clouds = [s["inputs"] for s in samples]
        if len({c.shape for c in clouds}) <= 1:
            return default_collate(samples)
        rest = default_collate([{k: v for k, v in s.items() if k != "inputs"} for s in samples])
        return {"inputs": pad_clouds(clouds), **rest}



registry.register("modality", "pointcloud", PointCloudModality)
