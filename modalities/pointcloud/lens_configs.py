"""Tokenizer, lens and trunk settings of the ViT-Lens 3D models, as data.

Numbers from the ViT-Lens training commands (TRAIN_INFERENCE.md) and argument defaults
(``training/params.py``):

- ViT-L/14 (ULIP ShapeNet / ULIP-2 Objaverse): Point-BERT tokenizer (512 groups x 32, 384-d);
  Perceiver 256 latents x 1024, depth 4, 1 cross head x 64, 16 latent heads x 64,
  1 self-attention per cross-attention. The ShapeNet model ties layers 1..3
  (``--perceiver_weight_tie_layers``), the Objaverse model does not. Trunk frozen.
- ViT-bigG/14 (OpenShape triplets): PointNet++ set abstraction on xyz+rgb (10k points,
  512 groups x 64, radius 0.2, MLP 64-64-256, 256-d tokens); Perceiver 256 latents x 1664,
  depth 4, 1 cross head x 104, 16 latent heads x 104; first 16 of 48 blocks skipped, the next 2
  and the class token trained.
- ViT-B/16: no 3D model was published; the argument defaults (196 latents x 768, 12 heads x 64)
  are the ViT-B/16 geometry and are used as given.

``"auto"`` sizes are filled from the trunk and tokenizer by `omniclip.model.resolve_lens_config`,
which is how the ``default`` entry adapts to any backbone (the tiny debug CLIP included).
"""

from __future__ import annotations

from typing import Any

#: Tokenizer hyper-parameters by tokenizer name (``modality.tokenizer.name`` in a recipe).
TOKENIZERS: dict[str, dict[str, Any]] = {
    "pointbert": {"num_groups": 512, "group_size": 32, "encoder_dim": 256, "token_dim": 384},
    "pnsa": {
        "in_channels": 6,
        "num_groups": 512,
        "group_size": 64,
        "radius": 0.2,
        "mlp": [64, 64, 256],
        "token_dim": 256,
    },
}

_PERCEIVER: dict[str, Any] = {
    "name": "perceiver",
    "input_dim": "auto",
    "latent_dim": "auto",
    "num_latents": "auto",
    "depth": 4,
    "cross_heads": 1,
    "cross_dim_head": 64,
    "latent_heads": "auto",
    "latent_dim_head": 64,
    "self_per_cross_attn": 1,
    "weight_tie_layers": False,
}

#: Lens defaults by backbone name; "default" (all sizes from the trunk) for any other backbone.
LENSES: dict[str, dict[str, Any]] = {
    "default": dict(_PERCEIVER),
    "ViT-B-16": {**_PERCEIVER, "latent_dim": 768, "num_latents": 196, "latent_heads": 12},
    "ViT-L-14": {**_PERCEIVER, "latent_dim": 1024, "num_latents": 256, "latent_heads": 16},
    "ViT-bigG-14": {
        **_PERCEIVER,
        "latent_dim": 1664,
        "num_latents": 256,
        "cross_dim_head": 104,
        "latent_heads": 16,
        "latent_dim_head": 104,
    },
}

#: Trunk settings of the published models (recipes/trunk and the converters use the same values).
TRUNKS: dict[str, dict[str, Any]] = {
    "frozen": {
        "skip_blocks": 0,
        "unlocked_blocks": 0,
        "unlock_class_token": False,
        "unlock_positional_embedding": False,
        "interpolate_positions": False,
    },
    "bigG": {
        "skip_blocks": 16,
        "unlocked_blocks": 2,
        "unlock_class_token": True,
        "unlock_positional_embedding": False,
        "interpolate_positions": False,
    },
}

#: Full model configs of the published checkpoints (what `omniclip.model.load_lens_model` reads).
PUBLISHED: dict[str, dict[str, Any]] = {
    "vitlens-l": {
        "modality": "pointcloud",
        "backbone": {"name": "ViT-L-14", "pretrained": "datacomp_xl_s13b_b90k"},
        "tokenizer": {"name": "pointbert", **TOKENIZERS["pointbert"]},
        "lens": {**LENSES["ViT-L-14"], "input_dim": 384},
        "trunk": dict(TRUNKS["frozen"]),
    },
    "vitlens-bigg": {
        "modality": "pointcloud",
        "backbone": {"name": "ViT-bigG-14", "pretrained": "laion2b_s39b_b160k"},
        "tokenizer": {"name": "pnsa", **TOKENIZERS["pnsa"]},
        "lens": {**LENSES["ViT-bigG-14"], "input_dim": 256},
        "trunk": dict(TRUNKS["bigG"]),
    },
}
