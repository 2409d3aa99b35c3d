"""Converter for the published ViT-Lens audio checkpoint (``omniclip-convert audio.vitlens-l``).

``vitlensL_audio.pt`` (HF TencentARC/ViT-Lens) is saved by the ViT-Lens trainer as
``{epoch, name, state_dict, optimizer}`` (keys possibly ``module.``-prefixed) from a three-tower
model: the audio tower ``visual.*`` (``visual_adapter`` = the AST-style tokenizer with
``conv1.weight`` [1024, 1, 14, 14] and ``pos_emb`` [600, 1024]; ``perceiver`` = the lens; then
the CLIP ViT-L/14 without ``conv1``), the CLIP image tower ``image.*`` and the text tower at the
top level. It was trained with ``--lock-visual --unlock-cls``: besides tokenizer and lens, the
audio tower's class token was trained and maps to ``trunk.class_embedding``. Every other CLIP
key is frozen DataComp-XL weights and is ignored by name.

The output has the `LensModel.trainable_state_dict` layout; `omniclip.model.load_lens_model`
rebuilds the model on top of the matching CLIP (``backbone`` in the written config).
"""

from __future__ import annotations

import copy
from typing import Any

from omniclip.convert import OPEN_CLIP_TEXT_TOWER, Converter, KeyMap, build_lens_export, register_converter

#: Full model config of the published checkpoint (numbers from TRAIN_INFERENCE.md, audio section).
PUBLISHED: dict[str, Any] = {
    "modality": "audio",
    "backbone": {"name": "ViT-L-14", "pretrained": "datacomp_xl_s13b_b90k"},
    "tokenizer": {"stride": 10, "sample_rate": 16000, "num_mel_bins": 128, "target_frames": 512},
    "lens": {
        "name": "perceiver",
        "input_dim": 1024,
        "latent_dim": 1024,
        "num_latents": 256,
        "depth": 2,
        "cross_heads": 1,
        "cross_dim_head": 64,
        "latent_heads": 16,
        "latent_dim_head": 64,
        "self_per_cross_attn": 3,
        "weight_tie_layers": False,
    },
    "trunk": {
        "skip_blocks": 0,
        "unlocked_blocks": 0,
        "unlock_class_token": True,
        "unlock_positional_embedding": False,
        "interpolate_positions": False,
    },
}

VITLENS_AUDIO_KEYMAP = KeyMap(
    rules=(
        (r"visual\.visual_adapter\.", "tokenizer."),
        (r"visual\.perceiver\.", "lens."),
        (r"visual\.class_embedding$", "trunk.class_embedding"),
    ),
    ignore=(
        r"visual\.(positional_embedding|proj)$",  # frozen trunk = the user's CLIP
        r"visual\.(ln_pre|ln_post|transformer)\.",
        r"image\.",  # the frozen CLIP image tower (image anchors)
        *OPEN_CLIP_TEXT_TOWER,  # the frozen text tower, at the top level
    ),
)


register_converter(Converter(
    name="audio.vitlens-l",
    description="ViT-Lens ViT-L/14 audio (AudioSet, 5-s clips): fbank patch tokenizer + Perceiver + class token",
    keymap=VITLENS_AUDIO_KEYMAP,
    build=build_lens_export,
    default_config=copy.deepcopy(PUBLISHED),
))
