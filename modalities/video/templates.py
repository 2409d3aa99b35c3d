"""Zero-shot prompt sets for video classes.

``default`` is the bare class name: ViFi-CLIP evaluates zero-shot with it (its authors found
templates hurt). ``photo`` is CLIP's "a photo of a {}." (ViFi-CLIP's training prompt);
``video`` is a set of action prompts in the style of ActionCLIP / X-CLIP, for frozen-CLIP
baselines.
"""

from __future__ import annotations

TEMPLATES: dict[str, tuple[str, ...]] = {
    "default": ("{}",),
    "photo": ("a photo of a {}.",),
    "video": (
        "a video of a person {}.",
        "a video of {}.",
        "a photo of a person {}.",
        "a photo of action {}.",
        "a picture of action {}.",
        "human action of {}.",
        "{}, an action.",
        "{}, a video of action.",
        "playing action of {}.",
        "doing a kind of action, {}.",
        "look, the human is {}.",
        "can you recognize the action of {}?",
        "video classification of {}.",
        "a clip of someone {}.",
        "the man is {}.",
        "the woman is {}.",
    ),
}
