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

``pointcloud.vitlens-evag``: ``eva_g14_objaverse.pt`` (TencentARC/ViT-Lens on the Hugging Face
hub), the 3D lens ViT-Lens trained into the EVA ViT-g tower that InstructBLIP reads, saved by the
ViT-Lens trainer like the ViT-L model: ``visual.visual_adapter`` (Point-BERT tokenizer),
``visual.perceiver`` (Perceiver 256 latents x 1408, depth 6, heads of 88), then the frozen tower
``visual.eva_vit.*`` and ``visual.eva_vit_proj``, the projection from the tower's 1408-wide class
token into the contrastive space the lens was aligned to during training. InstructBLIP's Q-Former
reads the tower's tokens, not that embedding, so the projection is not imported (ignored by
name, like the frozen tower and the CLIP towers); the export names an ``instructblip:`` backbone.

All write the `LensModel.trainable_state_dict` layout, so `omniclip.model.load_lens_model`
rebuilds the model on top of the matching tower (``backbone`` in the written config).
"""

from __future__ import annotations

import copy
from typing import Any

from omniclip.blip_backbone import is_instructblip
from omniclip.convert import (
    OPEN_CLIP_TEXT_TOWER,
    Converter,
    KeyMap,
    LensExport,
    build_lens_export,
    register_converter,
)
from omniclip.errors import ConfigError
from omniclip.modalities.pointcloud.lens_configs import PUBLISHED, TOKENIZERS, TRUNKS

VITLENS_L_KEYMAP = KeyMap(
    rules=(
        (r"visual\.visual_adapter\.", "tokenizer."),
        (r"visual\.perceiver\.", "lens."),
    ),
    ignore=(
        r"visual\.(class_embedding|positional_embedding|proj)$",  # frozen trunk = the user's CLIP
        r"visual\.(ln_pre|ln_post|transformer)\.",
        r"image\.",  # the frozen CLIP image tower (image anchors)
        *OPEN_CLIP_TEXT_TOWER,
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


register_converter(Converter(
    name="pointcloud.vitlens-l",
    description="ViT-Lens ViT-L/14 3D (ULIP ShapeNet or ULIP-2 Objaverse): Point-BERT tokenizer + Perceiver",
    keymap=VITLENS_L_KEYMAP,
    build=build_lens_export,
    default_config=copy.deepcopy(PUBLISHED["vitlens-l"]),
))

register_converter(Converter(
    name="pointcloud.vitlens-bigg",
    description="ViT-Lens ViT-bigG/14 3D (OpenShape triplets): PointNet++ tokenizer + Perceiver + blocks 16-17",
    keymap=VITLENS_BIGG_KEYMAP,
    build=build_lens_export,
    default_config=copy.deepcopy(PUBLISHED["vitlens-bigg"]),
))

VITLENS_EVAG_KEYMAP = KeyMap(
    rules=(
        (r"visual\.visual_adapter\.", "tokenizer."),
        (r"visual\.perceiver\.", "lens."),
    ),
    ignore=(
        r"visual\.eva_vit\.",  # the frozen EVA ViT-g: InstructBLIP's own tower
        r"visual\.eva_vit_proj$",  # tower -> training anchor space; the Q-Former never reads it
        r"image\.",  # the frozen CLIP image tower (image anchors)
        *OPEN_CLIP_TEXT_TOWER,
    ),
)

#: The EVA-g 3D lens as published (ViT-Lens-Integration's ``pc_blip2_instruct_vicuna7b.yaml``):
#: Point-BERT 512 x 32 -> 384-d tokens; Perceiver 256 latents x 1408, depth 6, one cross head and
#: 16 latent heads of 88, one self-attention per cross-attention, no tied layers; frozen tower.
#: The backbone is the InstructBLIP (Vicuna-7B) whose EVA ViT-g the lens feeds; override
#: ``backbone.name`` with ``instructblip:<folder>`` for a local copy.
VITLENS_EVAG: dict[str, Any] = {
    "modality": "pointcloud",
    "backbone": {"name": "instructblip:Salesforce/instructblip-vicuna-7b", "pretrained": None},
    "tokenizer": {"name": "pointbert", **TOKENIZERS["pointbert"]},
    "lens": {
        "name": "perceiver",
        "input_dim": 384,
        "latent_dim": 1408,
        "num_latents": 256,
        "depth": 6,
        "cross_heads": 1,
        "cross_dim_head": 88,
        "latent_heads": 16,
        "latent_dim_head": 88,
        "self_per_cross_attn": 1,
        "weight_tie_layers": False,
    },
    "trunk": dict(TRUNKS["frozen"]),
}


def build_evag_export(config: dict) -> LensExport:
    """Tokenizer and lens of the EVA-g lens: a frozen tower has nothing to import, and the tower
    is InstructBLIP's (no open_clip config to size trunk parts from, unlike `build_lens_export`).

    Refuses a non-``instructblip:`` backbone: the lens was trained on EVA ViT-g and the export's
    ``backbone`` is what `load_lens_model` (and ``omniclip-describe --lens``) rebuild it on.
    """
    from omniclip.lens import build_lens
    from omniclip.modalities.pointcloud import build_tokenizer

    name = str(config["backbone"]["name"])
    if not is_instructblip(name):
        raise ConfigError("backbone.name", f"`{name}`: the EVA-g lens feeds InstructBLIP's EVA ViT-g tower; "
                          "name it as instructblip:<folder or hub id>")
    trunk = config.get("trunk", {})
    if trunk.get("unlocked_blocks", 0) or trunk.get("unlock_class_token") or trunk.get("unlock_positional_embedding"):
        raise ConfigError("trunk", "the published EVA-g lens trained no part of the tower (frozen trunk only)")
    lens_cfg = dict(config["lens"])
    auto = sorted(k for k, v in lens_cfg.items() if v in ("auto", None))
    if auto:
        raise ConfigError(f"lens.{auto[0]}", "a converter needs explicit lens sizes, not `auto`")
    return LensExport(build_tokenizer(config.get("tokenizer", {})), build_lens(lens_cfg))


register_converter(Converter(
    name="pointcloud.vitlens-evag",
    description="ViT-Lens EVA ViT-g 3D lens for InstructBLIP (Objaverse): Point-BERT tokenizer + Perceiver",
    keymap=VITLENS_EVAG_KEYMAP,
    build=build_evag_export,
    default_config=copy.deepcopy(VITLENS_EVAG),
))
