"""omniclip: extend a frozen CLIP ViT to 3D point clouds, audio and video.

The public API::

    from omniclip import load_backbone, build_lens_model, load_lens_model
    backbone = load_backbone("ViT-L-14", "datacomp_xl_s13b_b90k")
    model, config = build_lens_model("pointcloud", backbone.trunk(), backbone_name="ViT-L-14")
    embedding = model.encode(points)            # [B, 768], in CLIP space
"""

from omniclip.anchors import AnchorStore
from omniclip.backbone import ClipBackbone, load_backbone
from omniclip.evaluation import build_classifier
from omniclip.lens import IdentityLens, Perceiver, build_lens
from omniclip.modality import Modality, TrunkSpec, get_modality
from omniclip.model import LensModel, build_lens_model, load_lens_model
from omniclip.trainer import Trainer, TrainerConfig
from omniclip.trunk import ViTTrunk

__version__ = "0.1.0"

__all__ = [
    "AnchorStore",
    "ClipBackbone",
    "IdentityLens",
    "LensModel",
    "Modality",
    "Perceiver",
    "Trainer",
    "TrainerConfig",
    "TrunkSpec",
    "ViTTrunk",
    "build_classifier",
    "build_lens",
    "build_lens_model",
    "get_modality",
    "load_backbone",
    "load_lens_model",
]
