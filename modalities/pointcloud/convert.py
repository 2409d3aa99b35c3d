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

from omniclip.convert import OPEN_CLIP_TEXT_TOWER, Converter, KeyMap, build_lens_export, register_converter
from omniclip.modalities.pointcloud.lens_configs import PUBLISHED

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
