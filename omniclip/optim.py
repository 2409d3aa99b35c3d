"""Optimiser and learning-rate schedule for lens training (ViT-Lens defaults).

AdamW with betas (0.9, 0.98), eps 1e-6 and weight decay 0.2, where decay is applied to weight
matrices only: norms, biases, scalars (ndim <= 1) and learned embeddings/latents/temperature are
exempt. The schedule is a linear warm-up followed by a cosine decay.

Two recipe options say what trains and how fast (``trainer.train_only``, ``trainer.lr_groups``):
`apply_train_only` freezes every parameter whose qualified name matches none of a list of
regexes, and `LrGroup` entries give matching parameters a multiple of the lr and, optionally,
their own weight decay (ILA decays its alignment, temporal and MIT groups at 1e-2, 1e-3 and 3e-3).
Names are those the trainer sees: ``model.<...>`` and ``objective.<...>`` (the keys of its
checkpoints).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from omniclip.errors import ConfigError

NO_DECAY_NAMES: tuple[str, ...] = (
    "latents",
    "pos_emb",
    "positional_embedding",
    "class_embedding",
    "log_scale",
    "logit_scale",
)


LR_GROUP_KEYS: tuple[str, ...] = ("match", "lr_scale", "weight_decay")


@dataclass(frozen=True)
class LrGroup:
    """Parameters whose qualified name matches ``match`` (a regex, `re.fullmatch`) train at
    ``lr_scale`` times the recipe's lr; the schedule multiplies every group alike (X-CLIP / ILA
    train their new modules at 10x the CLIP lr).

    ``weight_decay`` (None: the trainer's) is the decay of the group's *decayed* parameters only:
    the parameters that `param_groups` exempts (ndim <= 1, `NO_DECAY_NAMES`, embeddings) stay at
    0 in every group, as in ILA's reference, whose per-group decay also skips 1-D tensors and
    biases. There is no per-group switch for that rule, as no reference recipe needs one.
    """

    match: str
    lr_scale: float = 1.0
    weight_decay: float | None = None

    @property
    def name(self) -> str:
        """The group's label in the optimizer (``"group"``). The match alone makes it unique (a
        second group with the same match would take nothing, which is refused), so the decay is
        left out: labels stay those of the recipes and logs written before it existed."""
        return f"lr_scale={self.lr_scale:g}:{self.match}"


def _number(value: Any, key: str, positive: bool) -> float:
    """``value`` as a finite float, > 0 (``positive``) or >= 0; otherwise a `ConfigError` naming ``key``."""
    number = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    if not number or not (value > 0 if positive else value >= 0):
        raise ConfigError(key, f"must be a {'positive' if positive else 'non-negative'} number, got {value!r}")
    return float(value)


def parse_lr_groups(spec: Sequence[Mapping[str, Any]] | None) -> list[LrGroup]:
    """``[{match, lr_scale, weight_decay}, ...]`` from a recipe -> `LrGroup` list; errors name
    ``lr_groups[i].<key>`` (the trainer prefixes ``trainer.``)."""
    groups = []
    for index, entry in enumerate(spec or ()):
        key = f"lr_groups[{index}]"
        if isinstance(entry, LrGroup):
            entry = {"match": entry.match, "lr_scale": entry.lr_scale, "weight_decay": entry.weight_decay}
        if not isinstance(entry, Mapping):
            raise ConfigError(key, f"must be a mapping {{match, lr_scale, weight_decay}}, got {entry!r}")
        unknown = sorted(set(map(str, entry)) - set(LR_GROUP_KEYS))
        if unknown:
            raise ConfigError(f"{key}.{unknown[0]}", f"unknown key (known: {', '.join(LR_GROUP_KEYS)})")
        if not isinstance(entry.get("match"), str) or not entry["match"]:
            raise ConfigError(f"{key}.match", f"must be a non-empty regular expression, got {entry.get('match')!r}")
        _compile(entry["match"], f"{key}.match")
        scale = _number(entry.get("lr_scale", 1.0), f"{key}.lr_scale", positive=True)
        decay = entry.get("weight_decay")
        decay = None if decay is None else _number(decay, f"{key}.weight_decay", positive=False)
        groups.append(LrGroup(entry["match"], scale, decay))
    return groups


def _compile(pattern: str, key: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern)
    except re.error as error:
        raise ConfigError(key, f"`{pattern}` is not a regular expression: {error}") from None


def _examples(names: Sequence[str], count: int = 6) -> str:
    shown = ", ".join(names[:count])
    return shown + (f", ... ({len(names)} in all)" if len(names) > count else "")


def apply_train_only(model: nn.Module, patterns: Sequence[str] | None) -> list[str]:
    """Freeze every trainable parameter of ``model`` whose qualified name matches none of
    ``patterns`` (regexes, `re.fullmatch`); returns the names left trainable.

    Name-match training is how ViFi-CLIP's bridge-and-prompt says what trains (only parameters
    named ``prompt_learner`` / ``VPT``). A pattern that matches no trainable parameter is a
    `ConfigError` naming it (``train_only[i]``): a misspelt pattern must not silently freeze
    what it meant to train. ``None`` leaves the model as it is; an empty list is refused, as it
    would train nothing. Call it before the optimiser (and DDP) are built.
    """
    if patterns is None:
        return [n for n, p in model.named_parameters() if p.requires_grad]
    if isinstance(patterns, str):
        patterns = [patterns]
    if not patterns:
        raise ConfigError("train_only", "is empty, so nothing would train; use null to train every "
                                        "trainable parameter")
    compiled = [_compile(p, f"train_only[{i}]") for i, p in enumerate(patterns)]
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    names = [n for n, _ in trainable]
    for index, (pattern, regex) in enumerate(zip(patterns, compiled)):
        if not any(regex.fullmatch(n) for n in names):
            raise ConfigError(f"train_only[{index}]", f"`{pattern}` matches no trainable parameter "
                                                      f"(trainable: {_examples(names)})")
    kept = []
    for name, param in trainable:
        if any(regex.fullmatch(name) for regex in compiled):
            kept.append(name)
        else:
            param.requires_grad_(False)
    return kept


def param_groups(
    model: nn.Module,
    weight_decay: float,
    no_decay_names: Sequence[str] = NO_DECAY_NAMES,
    lr_groups: Sequence[LrGroup] = (),
    lr: float | None = None,
) -> list[dict[str, Any]]:
    """Split the trainable parameters of ``model`` into a decayed and an undecayed group, per
    learning-rate group.

    A parameter is exempt from decay when it has ndim <= 1 (norms, biases, scalars), when its
    own name (the last component of its qualified name) is one of ``no_decay_names`` (learned
    latents, positional tables, temperature), or when it belongs to an ``nn.Embedding``. Matching
    the own name, not a substring, keeps e.g. the Linear weights of Point-BERT's ``pos_embed``
    MLP decayed, as in ViT-Lens. Frozen parameters are left out; a parameter shared by several
    modules (weight tying) appears once, under its first name. Each group carries its names
    under ``"param_names"``, the key torch's optimisers keep in their state dict. Empty groups
    are omitted.

    With ``lr_groups`` a parameter whose qualified name fully matches a group's regex goes into
    that group (the first group that matches wins) with ``"lr" = lr * lr_scale`` and
    ``"lr_scale"``; its decayed parameters take the group's ``weight_decay`` when it sets one
    (else ``weight_decay``), its exempt ones 0 as everywhere. The others form the default
    groups, which come first. Every group is named
    (``"group"``). An lr group that takes no parameter is a `ConfigError` naming
    ``lr_groups[i].match``.
    """
    if lr_groups and lr is None:
        raise ValueError("lr_groups need the base `lr` they scale")
    embedding_params = {
        id(p) for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters(recurse=False)
    }
    exempt_names = set(no_decay_names)
    compiled = [_compile(g.match, f"lr_groups[{i}].match") for i, g in enumerate(lr_groups)]
    # bucket 0 is the default group; bucket i + 1 is lr_groups[i]; each holds (decay, no_decay)
    buckets = [(([], []), ([], [])) for _ in range(len(lr_groups) + 1)]
    trainable_names = []
    # named_parameters() yields each Parameter object once, so tied weights are not duplicated.
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        trainable_names.append(name)
        bucket = next((i + 1 for i, regex in enumerate(compiled) if regex.fullmatch(name)), 0)
        exempt = param.ndim <= 1 or name.rsplit(".", 1)[-1] in exempt_names or id(param) in embedding_params
        params, names = buckets[bucket][1 if exempt else 0]
        params.append(param)
        names.append(name)
    groups = []
    for index, (decay, no_decay) in enumerate(buckets):
        if index and not (decay[0] or no_decay[0]):
            spec = lr_groups[index - 1]
            raise ConfigError(f"lr_groups[{index - 1}].match",
                              f"`{spec.match}` matches no trainable parameter that an earlier lr group has not "
                              f"taken (trainable: {_examples(trainable_names)})")
        extra: dict[str, Any] = {"group": "default"}
        group_decay = weight_decay
        if index:
            spec = lr_groups[index - 1]
            extra = {"group": spec.name, "lr": lr * spec.lr_scale, "lr_scale": spec.lr_scale}
            group_decay = weight_decay if spec.weight_decay is None else spec.weight_decay
        for (params, names), wd in ((decay, group_decay), (no_decay, 0.0)):
            if params:
                groups.append({"params": params, "param_names": names, "weight_decay": wd, **extra})
    return groups


def build_optimizer(
    model: nn.Module,
    lr: float,
    weight_decay: float = 0.2,
    betas: tuple[float, float] = (0.9, 0.98),
    eps: float = 1e-6,
    fused: bool | None = None,
    lr_groups: Sequence[LrGroup | Mapping[str, Any]] | None = None,
) -> torch.optim.AdamW:
    """AdamW over ``param_groups(model, weight_decay, lr_groups=...)``.

    ``lr_groups`` (`LrGroup` or recipe mappings ``{match, lr_scale, weight_decay}``) give
    parameters matching a regex a multiple of ``lr`` and, optionally, their own weight decay. ``fused=None`` lets torch pick its implementation (foreach on
    CUDA); ``True`` asks for the fused kernel (CUDA and CPU float tensors).
    """
    if lr <= 0:
        raise ConfigError("lr", f"must be positive, got {lr}")
    if weight_decay < 0:
        raise ConfigError("weight_decay", f"must be >= 0, got {weight_decay}")
    groups = param_groups(model, weight_decay, lr_groups=parse_lr_groups(lr_groups), lr=lr)
    if not groups:
        raise ValueError(
            f"{type(model).__name__} has no trainable parameter (every parameter has "
            "requires_grad=False): nothing to optimise; check which parts the recipe unlocks"
        )
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=fused)


class WarmupCosine:
    """LR multiplier at scheduler step ``s`` (number of ``scheduler.step()`` calls so far).

    - warm-up, ``s < warmup_steps``: ``(s + 1) / warmup_steps``, so the very first optimizer
      step already uses ``lr / warmup_steps`` (never 0) and step ``warmup_steps - 1`` uses
      the full lr;
    - decay, ``warmup_steps <= s <= total_steps``: ``m + (1 - m) * (1 + cos(pi * p)) / 2``
      with ``p = (s - warmup_steps) / (total_steps - warmup_steps)`` and ``m = min_lr_ratio``;
    - ``s > total_steps``: ``min_lr_ratio``.

    A callable object rather than a closure, so `LambdaLR.state_dict` saves its fields and
    `load_state_dict` restores them exactly.
    """

    def __init__(self, warmup_steps: int, total_steps: int, min_lr_ratio: float):
        self.warmup_steps = warmup_steps
        self.total_steps = total_steps
        self.min_lr_ratio = min_lr_ratio

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        progress = min(1.0, (step - self.warmup_steps) / (self.total_steps - self.warmup_steps))
        cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.min_lr_ratio + (1.0 - self.min_lr_ratio) * cosine


def cosine_schedule(
    optimizer: torch.optim.Optimizer,
    warmup_steps: int,
    total_steps: int,
    min_lr_ratio: float = 0.0,
    total_key: str = "max_steps",
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up then cosine decay to ``min_lr_ratio * lr`` at ``total_steps`` (see
    `WarmupCosine`). Call ``scheduler.step()`` once after every ``optimizer.step()``.

    ``total_key`` is the config key that set ``total_steps``, named by a `ConfigError`."""
    if warmup_steps < 0:
        raise ConfigError("warmup_steps", f"must be >= 0, got {warmup_steps}")
    if total_steps <= warmup_steps:
        # Keyed by the recipe's name for the total (the trainer's `max_steps`), not the argument's.
        raise ConfigError(
            total_key, f"must exceed `warmup_steps` ({warmup_steps}), got {total_steps}: raise "
                       f"`{total_key}` or lower `warmup_steps`"
        )
    if not 0.0 <= min_lr_ratio <= 1.0:
        raise ConfigError("min_lr_ratio", f"must be in [0, 1], got {min_lr_ratio}")
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, WarmupCosine(warmup_steps, total_steps, min_lr_ratio)
    )
