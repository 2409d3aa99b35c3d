"""The embedded demo: synthetic 3D shapes and sounds, a tiny CLIP pretrained on their pictures,
and lenses trained into its frozen ViT (``omniclip-demo``; ``--modality audio`` for sounds)."""
