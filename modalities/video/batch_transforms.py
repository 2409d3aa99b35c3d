"""The recipe-facing builder of the video modality's batch transform: mixup / cutmix with label
smoothing (`omniclip.modalities.video.mixing`), run by the trainer on each micro-batch on the
device (`omniclip.trainer.BatchTransform`), drawing from the trainer's checkpointed generator.

A recipe turns it on with a ``data.mixing`` section next to ``data.train`` (not inside it: the
dataset builder refuses keys that are not its own, and mixing is not a property of a sample)::

    data:
      mixing:                # null or absent: no mixing; {} : ViFi-CLIP's values below
        mixup: 0.8           # Beta(a, a) weight of a convex combination; 0 turns mixup off
        cutmix: 1.0          # Beta(a, a) area kept by a pasted box; 0 turns cutmix off
        switch_prob: 0.5     # probability that a batch uses cutmix rather than mixup
        label_smoothing: 0.1 # smoothing of the one-hot targets before they mix

The names and values are ViFi-CLIP's (``AUG.MIXUP``, ``AUG.CUTMIX``, ``AUG.MIXUP_SWITCH_PROB``,
``AUG.LABEL_SMOOTH`` in its utils/config.py; X-CLIP and ILA share them). ViFi-CLIP smooths once,
in the mixing, and trains those targets with a plain soft cross-entropy; the video class loss
smooths whatever targets it gets, soft ones included, so both smoothings at once are refused
rather than silently compounding to 0.19.

    omniclip-train experiment=video/vificlip_k400 +data.mixing={} loss.label_smoothing=0
"""

from __future__ import annotations

from typing import Any, Mapping

from omegaconf import DictConfig, OmegaConf
from torch.utils.data import Dataset

from omniclip.errors import ConfigError
from omniclip.modalities.video.mixing import MixOptions, MixupCutmix

#: ``data.mixing`` key -> (`MixOptions` field, ViFi-CLIP's value).
MIXING_KEYS: dict[str, tuple[str, float]] = {
    "mixup": ("mixup_alpha", 0.8),
    "cutmix": ("cutmix_alpha", 1.0),
    "switch_prob": ("switch_prob", 0.5),
    "label_smoothing": ("smoothing", 0.1),
}


def mixing_options(section: Mapping[str, Any], num_classes: int) -> MixOptions:
    """`MixOptions` from a ``data.mixing`` mapping (missing keys take ViFi-CLIP's values); errors
    name the recipe key."""
    unknown = sorted(set(section) - set(MIXING_KEYS))
    if unknown:
        raise ConfigError(f"data.mixing.{unknown[0]}", f"unknown key (known: {', '.join(MIXING_KEYS)})")
    values: dict[str, float] = {}
    for key, (field, default) in MIXING_KEYS.items():
        value = section.get(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"data.mixing.{key}", f"must be a number, got `{value}`")
        values[field] = float(value)
    by_field = {field: key for key, (field, _) in MIXING_KEYS.items()}
    try:
        return MixOptions(num_classes=num_classes, **values)
    except ConfigError as error:  # MixOptions names its own fields
        raise ConfigError(f"data.mixing.{by_field.get(error.key, error.key)}", error.problem) from None


def build_batch_transform(cfg: DictConfig, dataset: Dataset | None = None) -> MixupCutmix | None:
    """`MixupCutmix` as the recipe's ``data.mixing`` says, or None when the section is absent or null.

    The number of classes is the training dataset's (its ``class_names``), the one the soft
    targets are laid over; the video class objective scores the same list.
    """
    data = cfg.get("data") if isinstance(cfg, (DictConfig, Mapping)) else None
    section = data.get("mixing") if data is not None else None
    if section is None:
        return None
    section = OmegaConf.to_container(section, resolve=True) if isinstance(section, DictConfig) else section
    if not isinstance(section, Mapping):
        raise ConfigError("data.mixing", f"must be a mapping of {', '.join(MIXING_KEYS)} (or null), got `{section}`")
    names = getattr(dataset, "class_names", None)
    if not names:
        raise ConfigError("data.train.classes", "mixing makes soft targets over the training classes, so the "
                                                "training dataset must name its classes (set `classes`)")
    opts = mixing_options(section, len(names))
    loss = cfg.get("loss") or {}
    loss_smoothing = float(loss.get("label_smoothing", 0.0) or 0.0)
    if opts.smoothing > 0 and loss_smoothing > 0:
        raise ConfigError("data.mixing.label_smoothing",
                          f"is {opts.smoothing} and loss.label_smoothing is {loss_smoothing}: the loss smooths the "
                          "mixed targets again, so both would apply (ViFi-CLIP smooths once, in the mixing). Set "
                          "loss.label_smoothing=0, or data.mixing.label_smoothing=0 to leave it to the loss")
    return MixupCutmix(opts)


__all__ = ["MIXING_KEYS", "build_batch_transform", "mixing_options"]
