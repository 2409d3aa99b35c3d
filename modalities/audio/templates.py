"""Prompt templates for audio zero-shot classification and training captions.

`SOUND_TEMPLATES` are the 12 templates ViT-Lens uses to build audio class embeddings (ESC-50,
AudioSet, VGGSound) and to caption AudioSet labels in training (``SOUND_AS_IMAGE_TEMPLATE`` in
its data files). They are data and kept verbatim: ``"{}."`` appears three times, so the plain
class name weighs three times in the mean of the normalised prompt embeddings. `SOUND_CLS_TEMPLATES`
are the four "sound of" templates the reference also ships (unused by its published numbers).
"""

from __future__ import annotations

SOUND_TEMPLATES: tuple[str, ...] = (
    "{}.",
    "An image depicting {}.",
    "{}.",
    "An image showing {}.",
    "{}.",
    "This is {}.",
    "A photograph shows {}.",
    "An image of {}.",
    "A good image of {}.",
    "A photo of {}.",
    "A picture of {}.",
    "A bright image of {}.",
)

SOUND_CLS_TEMPLATES: tuple[str, ...] = (
    "The sound of {}.",
    "This is the sound of {}.",
    "A sound of {}.",
    "This is a sound of {}.",
)

#: Template sets by name (``templates:`` in an eval task); "default" is the published one.
TEMPLATES: dict[str, tuple[str, ...]] = {"default": SOUND_TEMPLATES, "sound": SOUND_CLS_TEMPLATES}
