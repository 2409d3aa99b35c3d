"""Optimiser and learning-rate schedule for lens training (ViT-Lens defaults).

AdamW with betas (0.9, 0.98), eps 1e-6 and weight decay 0.2, where decay is applied to weight
matrices only: norms, biases, scalars (ndim <= 1) and learned embeddings/latents/temperature are
exempt. The schedule is a linear warm-up followed by a cosine decay.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

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


def param_groups(
    model: nn.Module,
    weight_decay: float,
    no_decay_names: Sequence[str] = NO_DECAY_NAMES,
) -> list[dict[str, Any]]:
    """Split the trainable parameters of ``model`` into a decayed and an undecayed group.

    A parameter is exempt from decay when it has ndim <= 1 (norms, biases, scalars), when its
    own name (the last component of its qualified name) is one of ``no_decay_names`` (learned
    latents, positional tables, temperature), or when it belongs to an ``nn.Embedding``. Matching
    the own name, not a substring, keeps e.g. the Linear weights of Point-BERT's ``pos_embed``
    MLP decayed, as in ViT-Lens. Frozen parameters are left out; a parameter shared by several
    modules (weight tying) appears once, under its first name. Each group carries its names
    under ``"param_names"``, the key torch's optimisers keep in their state dict. Empty groups
    are omitted.
    """
    embedding_params = {
        id(p) for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters(recurse=False)
    }
    exempt_names = set(no_decay_names)
    decay: tuple[list[nn.Parameter], list[str]] = ([], [])
    no_decay: tuple[list[nn.Parameter], list[str]] = ([], [])
    # named_parameters() yields each Parameter object once, so tied weights are not duplicated.
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        exempt = param.ndim <= 1 or name.rsplit(".", 1)[-1] in exempt_names or id(param) in embedding_params
        params, names = no_decay if exempt else decay
        params.append(param)
        names.append(name)
    groups = []
    for (params, names), wd in ((decay, weight_decay), (no_decay, 0.0)):
        if params:
            groups.append({"params": params, "param_names": names, "weight_decay": wd})
    return groups


def build_optimizer(
    model: nn.Module,
    lr: float,
    weight_decay: float = 0.2,
    betas: tuple[float, float] = (0.9, 0.98),
    eps: float = 1e-6,
    fused: bool | None = None,
) -> torch.optim.AdamW:
    """AdamW over ``param_groups(model, weight_decay)``.

    ``fused=None`` lets torch pick its implementation (foreach on CUDA); ``True`` asks for the
    fused kernel (CUDA and CPU float tensors).
    """
    if lr <= 0:
        raise ConfigError("lr", f"must be positive, got {lr}")
    if weight_decay < 0:
        raise ConfigError("weight_decay", f"must be >= 0, got {weight_decay}")
    groups = param_groups(model, weight_decay)
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
