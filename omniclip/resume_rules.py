"""What may change between a run and its resumption, and what happens when it does.

Re-running a training command on an existing run directory resumes it. The recipe given the
second time is compared with the one saved in the checkpoint, key by key:

- **schedule keys** (`SCHEDULE_KEYS`: ``max_steps``, ``lr``, ``warmup_steps``,
  ``min_lr_ratio``, ``weight_decay``, ``betas``, ``eps``, ``grad_clip``, ``precision``) are
  *applied*: the learning-rate schedule is a function of the step and the recipe, so the resumed
  run follows the new recipe's schedule from the checkpoint's step on (raising ``max_steps`` from
  1000 to 2000 continues on the cosine of a 2000-step run at step 1000), and the optimizer's
  hyper-parameters become the new ones. Its moment estimates are kept.
- **bookkeeping keys** (`FREE_KEYS`, and any location: a key ending in ``root`` or
  ``cache_dir``) change nothing that is computed: workers, logging, checkpoint cadence,
  evaluation, output locations.
- **everything else** (the model: backbone, trunk, tokenizer, lens; the data; the loss; batch
  size, accumulation, seed) is *refused*: the checkpoint's weights or its position in the data
  would no longer mean what they meant. The error names every differing key with both values.
"""

from __future__ import annotations

from typing import Any, Mapping

SCHEDULE_KEYS: tuple[str, ...] = (
    "max_steps", "lr", "warmup_steps", "min_lr_ratio", "weight_decay", "betas", "eps", "grad_clip", "precision",
)

#: Trainer fields that change how the run is observed or stored, never what it computes.
FREE_TRAINER_KEYS: tuple[str, ...] = (
    "num_workers", "prefetch_factor", "checkpoint_every", "keep_last", "eval_every", "log_every", "resume",
    "tensorboard", "wandb_project", "progress_bar", "grad_checkpointing", "bad_samples", "max_skip_fraction",
    "nonfinite", "max_nonfinite_steps", "max_consecutive_nonfinite",
)

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


class ResumeCheck:
    """The outcome of comparing a checkpoint's configuration with the current one."""

    def __init__(self, saved_trainer: Mapping[str, Any], current_trainer: Mapping[str, Any],
                 saved_run: Mapping[str, Any], current_run: Mapping[str, Any]) -> None:
        trainer_changes = diff(dict(saved_trainer), dict(current_trainer))
        self.schedule = {k: v for k, v in trainer_changes.items() if k in SCHEDULE_KEYS}
        self.free = {k: v for k, v in trainer_changes.items() if k in FREE_TRAINER_KEYS}
        refused = {f"trainer.{k}": v for k, v in trainer_changes.items()
                   if k not in SCHEDULE_KEYS and k not in FREE_TRAINER_KEYS}
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
