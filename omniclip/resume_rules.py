"""What may change between a run and its resumption, and what happens when it does.

Re-running a training command on an existing run directory resumes it. The recipe given the
second time is compared with the one saved in the checkpoint, key by key:

- **schedule keys** (`SCHEDULE_KEYS`: ``max_steps``, ``lr``, ``warmup_steps``,
  ``min_lr_ratio``, ``weight_decay``, ``betas``, ``eps``, ``grad_clip``, ``precision``) are
  *applied*: the learning-rate schedule is a function of the step and the recipe, so the resumed
  run follows the new recipe's schedule from the checkpoint's step on (raising ``max_steps`` from
  1000 to 2000 continues on the cosine of a 2000-step run at step 1000), and the optimizer's
  hyper-parameters become the new ones. Its moment estimates are kept. The numerics keys are
  applied the same way: ``precision`` (autocast), ``frozen_dtype`` (how the frozen weights are
  stored: they are not in the checkpoint, which holds the fp32 trainable weights and moments
  either way, so the resumed run simply runs its frozen part in the new dtype) and ``compile``,
  ``compile_backend``, ``compile_mode`` (the same computation, rounded differently by fused kernels).
- **bookkeeping keys** (`FREE_KEYS`, and any location: a key ending in ``root`` or
  ``cache_dir``) change nothing that is computed: workers, logging, checkpoint cadence,
  evaluation, output locations, the parallel strategy (``trainer.parallel``: checkpoints hold
  whole trainable tensors under ddp and fsdp2 alike).
- **learning-rate groups** (``trainer.lr_groups``, ``[{match, lr_scale, weight_decay}]``): a
  group's ``lr_scale`` and ``weight_decay`` are schedule keys (``lr_groups[i].lr_scale``,
  ``lr_groups[i].weight_decay``), applied like ``lr`` and ``weight_decay``; its ``match``
  pattern, and the number of groups, are refused (``lr_groups[i].match``): they decide which
  parameters form which optimizer group, and the checkpoint's moment estimates are stored per
  group, by position.
- ``trainer.train_only`` (which parameters train) is refused: the checkpoint's trainable weights
  and moments are those of the parameters it named.
- keys added to the trainer after a checkpoint was written (`ADDED_TRAINER_KEYS`) are read from an
  older checkpoint as the value its run had in effect, so such checkpoints still resume.
- **everything else** (the model: backbone, trunk, tokenizer, lens; the data; the loss; batch
  size, accumulation, seed) is *refused*: the checkpoint's weights or its position in the data
  would no longer mean what they meant. The error names every differing key with both values.
"""

from __future__ import annotations

from typing import Any, Mapping

SCHEDULE_KEYS: tuple[str, ...] = (
    "max_steps", "lr", "warmup_steps", "min_lr_ratio", "weight_decay", "betas", "eps", "grad_clip", "precision",
    "frozen_dtype", "compile", "compile_backend", "compile_mode",
)

#: Trainer fields that change how the run is observed or stored, never what it computes.
FREE_TRAINER_KEYS: tuple[str, ...] = (
    "num_workers", "prefetch_factor", "checkpoint_every", "keep_last", "eval_every", "log_every", "resume",
    "tensorboard", "wandb_project", "progress_bar", "progress_label", "grad_checkpointing", "bad_samples", "max_skip_fraction",
    "nonfinite", "max_nonfinite_steps", "max_consecutive_nonfinite",
    # ddp | fsdp2: checkpoints hold full tensors either way (`omniclip.parallel`); the update differs
    # only in float summation order (reduce-scatter vs all-reduce)
    "parallel",
)

#: Trainer keys newer than some checkpoints, with the value a run that predates them had in effect.
ADDED_TRAINER_KEYS: dict[str, Any] = {"lr_groups": [], "train_only": None, "parallel": "ddp", "frozen_dtype": "fp32",
                                      "compile": False, "compile_backend": "inductor", "compile_mode": None}

#: Run-config prefixes that are bookkeeping (dotted, matched on whole components).
FREE_KEYS: tuple[str, ...] = (
    "recipe.trainer", "recipe.eval", "recipe.anchors", "recipe.output_dir", "recipe.name", "recipe.device",
    "recipe.hydra",
)
_LOCATION_SUFFIXES = ("root", "cache_dir")


def flatten(config: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists stay values (compared whole)."""
    if not isinstance(config, Mapping):
        return {prefix: config}
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, name))
        else:
            flat[name] = value
    return flat


def _under(key: str, prefix: str) -> bool:
    return key == prefix or key.startswith(prefix + ".")


def _is_free(key: str) -> bool:
    return any(_under(key, p) for p in FREE_KEYS) or key.rsplit(".", 1)[-1].endswith(_LOCATION_SUFFIXES)


def _describe(changes: Mapping[str, tuple[Any, Any]]) -> str:
    return "; ".join(f"{key}: {old!r} -> {new!r}" for key, (old, new) in changes.items())


def _normalise(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value  # JSON round trips tuples as lists


def diff(saved: Mapping[str, Any], current: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Keys whose values differ between two flat dicts (a missing key counts as ``<absent>``)."""
    changes = {}
    for key in sorted(set(saved) | set(current)):
        old, new = _normalise(saved.get(key, "<absent>")), _normalise(current.get(key, "<absent>"))
        if old != new:
            changes[key] = (old, new)
    return changes


#: Keys of a ``trainer.lr_groups`` entry that a resumed run applies (optimizer hyper-parameters).
LR_GROUP_SCHEDULE_KEYS: tuple[str, ...] = ("lr_scale", "weight_decay")


def expand_lr_groups(trainer: Mapping[str, Any]) -> dict[str, Any]:
    """``lr_groups: [{match, lr_scale, weight_decay}]`` -> ``lr_groups[i].match`` /
    ``lr_groups[i].lr_scale`` / ``lr_groups[i].weight_decay`` keys, so that a changed scale or
    decay is told from a changed grouping. A group's ``weight_decay`` appears only when it sets one
    (absent means the trainer's), so checkpoints written before the key compare unchanged; any
    other key is carried as written, so it is refused rather than silently ignored."""
    out = {k: v for k, v in trainer.items() if k != "lr_groups"}
    for index, group in enumerate(trainer.get("lr_groups") or []):
        group = dict(group) if isinstance(group, Mapping) else {"match": group}
        out[f"lr_groups[{index}].match"] = group.pop("match", None)
        out[f"lr_groups[{index}].lr_scale"] = float(group.pop("lr_scale", 1.0))
        decay = group.pop("weight_decay", None)
        if decay is not None:
            out[f"lr_groups[{index}].weight_decay"] = float(decay)
        out.update({f"lr_groups[{index}].{key}": value for key, value in group.items()})
    return out


def _is_schedule(key: str) -> bool:
    return key in SCHEDULE_KEYS or (
        key.startswith("lr_groups[") and key.rsplit(".", 1)[-1] in LR_GROUP_SCHEDULE_KEYS)


class ResumeCheck:
    """The outcome of comparing a checkpoint's configuration with the current one."""

    def __init__(self, saved_trainer: Mapping[str, Any], current_trainer: Mapping[str, Any],
                 saved_run: Mapping[str, Any], current_run: Mapping[str, Any]) -> None:
        # both sides: a trainer config written without a newer key meant its default
        saved_trainer = {**ADDED_TRAINER_KEYS, **saved_trainer}
        current_trainer = {**ADDED_TRAINER_KEYS, **current_trainer}
        trainer_changes = diff(expand_lr_groups(saved_trainer), expand_lr_groups(current_trainer))
        if any(k.startswith("lr_groups[") and k.endswith("].match") for k in trainer_changes):
            # another grouping: no scale or decay of it can be applied to the checkpoint's groups
            trainer_changes = {k: v for k, v in trainer_changes.items()
                               if not (k.startswith("lr_groups[") and _is_schedule(k))}
        self.schedule = {k: v for k, v in trainer_changes.items() if _is_schedule(k)}
        self.free = {k: v for k, v in trainer_changes.items() if k in FREE_TRAINER_KEYS}
        refused = {f"trainer.{k}": v for k, v in trainer_changes.items()
                   if not _is_schedule(k) and k not in FREE_TRAINER_KEYS}
        run_changes = diff(flatten(saved_run), flatten(current_run))
        refused.update({k: v for k, v in run_changes.items() if not _is_free(k)})
        self.refused = refused

    def refusal(self) -> str | None:
        """The error text when the run cannot resume with this configuration, else None."""
        if not self.refused:
            return None
        return (
            f"the recipe differs from the checkpoint's in keys that cannot change within a run "
            f"({_describe(self.refused)}); restore them, or start a new run in another output_dir"
        )

    def applied(self) -> str | None:
        """A log line naming the schedule changes the resumed run applies, else None."""
        if not self.schedule:
            return None
        return f"resuming with the recipe's new schedule from this step on: {_describe(self.schedule)}"
