"""Converters for the published ViT-Lens 3D checkpoints (``omniclip-convert pointcloud.<variant>``).

``pointcloud.vitlens-l``: ``Datacomp_L14_ShapeNet.pt`` / ``Datacomp_L14_Objaverse.pt``, saved by
the ViT-Lens trainer as ``{epoch, name, state_dict, optimizer}`` from a three-tower model: the 3D
tower ``visual.*`` (``visual_adapter`` = Point-BERT tokenizer, ``perceiver`` = lens, then the CLIP
ViT without ``conv1``), the CLIP image tower ``image.*`` and the text tower at the top level.
The trunk is frozen, so only tokenizer and lens are imported; the CLIP keys are ignored by name.
The ShapeNet model ties Perceiver layers 1..3; it is imported untied (identical forward; the
copies are equal), so one converter serves both checkpoints.

``pointcloud.vitlens-bigg``: ``bigG14_sk16_openshape_all.pt``, saved by the OpenShape trainer as
``{state_dict, logit_scale, text_proj, image_proj, optimizer, ...}`` from a DDP-wrapped
``CLIPBindWrap`` whose ``backbone`` is the 3D tower with the first 16 of 48 blocks already removed
(the kept blocks renumbered from 0). Blocks 0-1 and the class token were trained and map to
``trunk.*``; the other trunk keys are the frozen CLIP weights and are ignored.

Both write the `LensModel.trainable_state_dict` layout, so `omniclip.model.load_lens_model`
rebuilds the model on top of the matching CLIP (``backbone`` in the written config).
"""

from __future__ import annotations

import copy
from typing import Any, Mapping

import open_clip
import torch
from torch import nn

from omniclip.convert import Converter, KeyMap, register_converter
from omniclip.errors import ConfigError
from omniclip.lens import build_lens
from omniclip.modalities.pointcloud.lens_configs import PUBLISHED

# The text tower of an open_clip CLIP lives at the top level of the ViT-Lens model.
_TEXT_TOWER_IGNORE = (
    r"transformer\.",
    r"token_embedding\.",
    r"ln_final\.",
    r"(positional_embedding|text_projection|logit_scale)$",
)

VITLENS_L_KEYMAP = KeyMap(
    rules=(
        (r"visual\.visual_adapter\.", "tokenizer."),
        (r"visual\.perceiver\.", "lens."),
    ),
    ignore=(
        r"visual\.(class_embedding|positional_embedding|proj)$",  # frozen trunk = the user's CLIP
        r"visual\.(ln_pre|ln_post|transformer)\.",
        r"image\.",  # the frozen CLIP image tower (image anchors)
        *_TEXT_TOWER_IGNORE,
    ),
)

VITLENS_BIGG_KEYMAP = KeyMap(
    rules=(
        (r"backbone\.visual_adapter\.", "tokenizer."),
        (r"backbone\.perceiver\.", "lens."),
        (r"backbone\.transformer\.resblocks\.([01])\.", r"trunk.blocks.\1."),
        (r"backbone\.class_embedding$", "trunk.class_embedding"),
    ),
    ignore=(
        r"backbone\.transformer\.resblocks\.([2-9]|[1-9]\d+)\.",  # frozen blocks 18..47 of bigG
        r"backbone\.(positional_embedding|proj)$",
        r"backbone\.(ln_pre|ln_post)\.",
    ),
)


class TrunkTrainedParts(nn.Module):
    """The trainable parameters of a `ViTTrunk` under the same names, without the frozen rest.

    Built from the open_clip config of ``backbone``: ``unlocked_blocks`` residual blocks, and the
    class token / positional embedding when unlocked. Lets a converter load and write the
    ``trunk.*`` keys without instantiating (or downloading) the whole CLIP.
    """

    def __init__(self, backbone: str, trunk_cfg: Mapping[str, Any]) -> None:
        super().__init__()
        import omniclip.backbone  # noqa: F401  (registers omniclip's own model configs)

        config = open_clip.get_model_config(backbone)
        if config is None:
            raise ConfigError("backbone.name", f"unknown open_clip model `{backbone}`")
        vision = config["vision_cfg"]
        width = int(vision["width"])
        heads = width // int(vision.get("head_width", 64))
        ratio = float(vision.get("mlp_ratio", 4.0))
        self.blocks = nn.ModuleList(
            open_clip.transformer.ResidualAttentionBlock(width, heads, ratio)
            for _ in range(int(trunk_cfg.get("unlocked_blocks", 0)))
        )
        if trunk_cfg.get("unlock_class_token", False):
            self.class_embedding = nn.Parameter(torch.zeros(width))
        if trunk_cfg.get("unlock_positional_embedding", False):
            grid = int(vision["image_size"]) // int(vision["patch_size"])
            self.positional_embedding = nn.Parameter(torch.zeros(grid * grid + 1, width))


class LensExport(nn.Module):
    """Container whose state dict has exactly the `LensModel.trainable_state_dict` keys."""

    def __init__(self, tokenizer: nn.Module, lens: nn.Module, trunk: nn.Module | None = None) -> None:
        super().__init__()
        self.tokenizer = tokenizer
        self.lens = lens
        if trunk is not None and any(True for _ in trunk.parameters()):
            self.trunk = trunk


def build_export(config: Mapping[str, Any]) -> LensExport:
    """The `LensExport` for a lens-model config (``tokenizer``, ``lens``, ``trunk``, ``backbone``)."""
    from omniclip.modalities.pointcloud import build_tokenizer

    lens_cfg = dict(config["lens"])
    auto = sorted(k for k, v in lens_cfg.items() if v in ("auto", None))
    if auto:
        raise ConfigError(f"lens.{auto[0]}", "a converter needs explicit lens sizes, not `auto`")
    trunk = TrunkTrainedParts(config["backbone"]["name"], config.get("trunk", {}))
    return LensExport(build_tokenizer(config["tokenizer"]), build_lens(lens_cfg), trunk)


register_converter(Converter(
    name="pointcloud.vitlens-l",
    description="ViT-Lens ViT-L/14 3D (ULIP ShapeNet or ULIP-2 Objaverse): Point-BERT tokenizer + Perceiver",
    keymap=VITLENS_L_KEYMAP,
    build=build_export,
    default_config=copy.deepcopy(PUBLISHED["vitlens-l"]),
))

register_converter(Converter(
    name="pointcloud.vitlens-bigg",
    description="ViT-Lens ViT-bigG/14 3D (OpenShape triplets): PointNet++ tokenizer + Perceiver + blocks 16-17",
    keymap=VITLENS_BIGG_KEYMAP,
    build=build_export,
    default_config=copy.deepcopy(PUBLISHED["vitlens-bigg"]),
))
