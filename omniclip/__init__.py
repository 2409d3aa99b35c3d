"""omniclip: extend a frozen CLIP ViT to new modalities."""

__version__ = "0.1.0"
