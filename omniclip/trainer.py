"""One training loop for every modality.

The trainer sees ``model(batch) -> embeddings`` and ``objective(embeddings, batch) -> (loss,
logs)``; it knows no modality. It owns the mechanics: AdamW + cosine schedule, autocast and
grad scaling, accumulation, clipping, DDP, atomic checkpoints with exact resume, logging and
periodic evaluation.

Exact resume: the checkpoint holds the trainable weights, optimizer, scheduler, grad scaler,
RNG states, the sampler position and the skip counter. Samples draw their augmentation
randomness from (seed, epoch, index) alone (`omniclip.data.SeededDataset`), so a run stopped
at step k and resumed produces the same batches and losses as one that never stopped.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset

from omniclip.data import ResumableSampler, SkipCounter, build_loader
from omniclip.distributed import DistEnv, all_gather_object, all_reduce_mean, barrier
from omniclip.errors import ConfigError
from omniclip.optim import build_optimizer, cosine_schedule
from omniclip.state import (
    capture_rng_state,
    latest_checkpoint,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)

log = logging.getLogger(__name__)

Evaluator = Callable[[nn.Module], Mapping[str, float]]


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite and the policy is "stop"."""


@dataclass
class TrainerConfig:
    """Trainer settings; the hydra group ``trainer/`` mirrors these fields."""

    max_steps: int = 1000
    batch_size: int = 32  # per rank, per micro-batch
    grad_accum_steps: int = 1
    lr: float = 1e-4
    weight_decay: float = 0.2
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    warmup_steps: int = 100
    min_lr_ratio: float = 0.0
    grad_clip: float | None = 1.0
    precision: str = "fp32"  # fp32 | bf16 | fp16 (autocast on CUDA; CPU always runs fp32)
    grad_checkpointing: bool = False
    num_workers: int = 2
    seed: int = 0
    bad_samples: str = "stop"  # stop | skip
    max_skip_fraction: float = 0.1
    nonfinite: str = "stop"  # stop | skip
    checkpoint_every: int = 500
    keep_last: int | None = 3
    eval_every: int | None = None
    log_every: int = 10
    resume: str = "auto"  # auto | never | <checkpoint dir>
    tensorboard: bool = True
    wandb_project: str | None = None
    progress_bar: bool = True

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)  # hydra hands lists
        checks = {
            "precision": (self.precision, ("fp32", "bf16", "fp16")),
            "nonfinite": (self.nonfinite, ("stop", "skip")),
            "bad_samples": (self.bad_samples, ("stop", "skip")),
        }
        for key, (value, allowed) in checks.items():
            if value not in allowed:
                raise ConfigError(f"trainer.{key}", f"`{value}` is not one of {allowed}")
        for key in ("max_steps", "batch_size", "grad_accum_steps", "checkpoint_every", "log_every"):
            if getattr(self, key) < 1:
                raise ConfigError(f"trainer.{key}", f"must be >= 1, got {getattr(self, key)}")


@dataclass
class TrainResult:
    step: int
    losses: list[float] = field(default_factory=list)  # one per optimizer step run in this call
    skipped_steps: int = 0
    skipped_samples: int = 0
    evals: list[dict[str, Any]] = field(default_factory=list)


class Trainer:
    """Train the trainable parameters of ``model`` and ``objective`` on ``dataset``.

    Args:
        model: maps a batch dict to embeddings [B, E].
        objective: maps (embeddings, batch) to (loss, logs); its own trainable parameters (a
            learnable temperature) train too.
        dataset, collate_fn: sample source and batching (the modality's).
        output_dir: checkpoints, logs and ``metrics.jsonl`` go here (one directory for all ranks).
        evaluators: name -> callable(model) -> metrics, run every ``eval_every`` steps and at the end.
        run_config: the resolved recipe, saved with each checkpoint.
    """

    def __init__(
        self,
        cfg: TrainerConfig,
        model: nn.Module,
        objective: nn.Module,
        dataset: Dataset,
        collate_fn: Callable[[list[Any]], dict[str, Any]],
        output_dir: str | Path,
        env: DistEnv | None = None,
        evaluators: Mapping[str, Evaluator] | None = None,
        run_config: Mapping[str, Any] | None = None,
    ) -> None:
        self.cfg = cfg
        self.env = env or DistEnv(rank=0, local_rank=0, world_size=1, backend=None, device=torch.device("cpu"))
        self.device = self.env.device
        self.output_dir = Path(output_dir)
        self.evaluators = dict(evaluators or {})
        self.run_config = dict(run_config or {})
        self.model = model.to(self.device)
        self.objective = objective.to(self.device)
        if cfg.grad_checkpointing and hasattr(model, "set_grad_checkpointing"):
            model.set_grad_checkpointing(True)
        # One module so optimizer, checkpoints and DDP see model and objective together; DDP's
        # gradient synchronisation needs the forward to go through it.
        self.trainable = _TrainStep(self.model, self.objective)
        self.ddp = (
            DistributedDataParallel(self.trainable, device_ids=[self.device.index] if self.device.type == "cuda" else None)
            if self.env.world_size > 1
            else None
        )
        self.optimizer = build_optimizer(self.trainable, cfg.lr, cfg.weight_decay, cfg.betas, cfg.eps)
        self.scheduler = cosine_schedule(self.optimizer, cfg.warmup_steps, cfg.max_steps, cfg.min_lr_ratio)
        self.use_autocast = self.device.type == "cuda" and cfg.precision != "fp32"
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.precision, torch.float32)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_autocast and cfg.precision == "fp16")
        self.sampler = ResumableSampler(
            len(dataset), shuffle=True, seed=cfg.seed, rank=self.env.rank, world_size=self.env.world_size,
            drop_last=True, batch_size=cfg.batch_size,
        )
        self.loader = build_loader(
            dataset, collate_fn, cfg.batch_size, self.sampler, cfg.num_workers, cfg.seed,
            pin_memory=self.device.type == "cuda", policy=cfg.bad_samples,
        )
        self.skips = SkipCounter(cfg.max_skip_fraction)
        self.step = 0
        self.skipped_steps = 0
        self._writer = None
        self._wandb = None

    # ------------------------------------------------------------------ state
    def trainable_weights(self) -> dict[str, torch.Tensor]:
        weights = {f"model.{k}": v for k, v in _trainable_state(self.model).items()}
        weights.update({f"objective.{k}": v for k, v in _trainable_state(self.objective).items()})
        return weights

    def save(self) -> Path | None:
        """Write a checkpoint (main rank). Every rank must call it: RNG states are gathered."""
        rng_states = all_gather_object(capture_rng_state())  # one per rank, restored per rank
        if not self.env.is_main:
            return None
        state = {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": rng_states,
            "sampler": self.sampler.state_dict(),
            "skips": self.skips.state_dict(),
            "skipped_steps": self.skipped_steps,
        }
        path = save_checkpoint(self.output_dir, self.step, self.trainable_weights(), state,
                               _jsonable(self.run_config), keep_last=self.cfg.keep_last)
        log.info("saved checkpoint %s", path)
        return path

    def resume(self) -> Path | None:
        """Restore the newest checkpoint (``resume=auto``) or the one named; None when starting fresh."""
        if self.cfg.resume == "never":
            return None
        path = latest_checkpoint(self.output_dir) if self.cfg.resume == "auto" else Path(self.cfg.resume)
        if path is None:
            return None
        weights, state, _ = load_checkpoint(path)
        self._load_weights(weights)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.sampler.load_state_dict(state["sampler"])
        self.skips.load_state_dict(state["skips"])
        self.skipped_steps = int(state["skipped_steps"])
        self.step = int(state["step"])
        rng_states = state["rng"]
        if len(rng_states) != self.env.world_size:
            log.warning("checkpoint has RNG states of %d ranks, this run has %d: ranks reuse them cyclically",
                        len(rng_states), self.env.world_size)
        restore_rng_state(rng_states[self.env.rank % len(rng_states)])
        log.info("resumed from %s at step %d", path, self.step)
        return path

    def _load_weights(self, weights: Mapping[str, torch.Tensor]) -> None:
        expected = self.trainable_weights()
        if set(weights) != set(expected):
            missing = sorted(set(expected) - set(weights))
            unexpected = sorted(set(weights) - set(expected))
            raise ConfigError("trainer.resume", f"checkpoint does not match the model: missing {missing}, unexpected {unexpected}")
        live = {f"model.{k}": v for k, v in _live_tensors(self.model).items()}
        live.update({f"objective.{k}": v for k, v in _live_tensors(self.objective).items()})
        with torch.no_grad():
            for key, value in weights.items():
                live[key].copy_(value)

    # ------------------------------------------------------------------ loop
    def fit(self, stop_at: int | None = None) -> TrainResult:
        """Train until ``max_steps`` (or ``stop_at``, to pause a run early), resuming first."""
        self.resume()
        end = min(self.cfg.max_steps, stop_at or self.cfg.max_steps)
        result = TrainResult(step=self.step)
        batches = self._batches()
        bar = self._progress(end)
        self.trainable.train()
        last_time, samples_since = time.perf_counter(), 0
        while self.step < end:
            loss, logs, num_samples = self._train_step(batches)
            samples_since += num_samples
            self.step += 1
            if loss is not None:
                result.losses.append(loss)
            if self.step % self.cfg.log_every == 0 or self.step == end:
                now = time.perf_counter()
                logs["samples_per_s"] = samples_since * self.env.world_size / max(now - last_time, 1e-9)
                last_time, samples_since = now, 0
                self._log(logs)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{logs.get('loss', float('nan')):.4f}", lr=f"{logs['lr']:.2e}",
                                sps=f"{logs.get('samples_per_s', 0):.0f}", refresh=False)
            if self.step % self.cfg.checkpoint_every == 0 or self.step == end:
                self.save()
                barrier()
            if self.cfg.eval_every and (self.step % self.cfg.eval_every == 0 or self.step == self.cfg.max_steps):
                result.evals.append(self.evaluate())
        if bar is not None:
            bar.close()
        if self.skips.skipped:
            log.warning(self.skips.summary())
        result.step = self.step
        result.skipped_steps = self.skipped_steps
        result.skipped_samples = len(self.skips.skipped)
        self._close_loggers()
        return result

    def _train_step(self, batches: Iterator[dict[str, Any]]) -> tuple[float | None, dict[str, float], int]:
        cfg = self.cfg
        module = self.ddp if self.ddp is not None else self.trainable
        self.optimizer.zero_grad(set_to_none=True)
        total, logs, num_samples, finite = 0.0, {}, 0, True
        for micro in range(cfg.grad_accum_steps):
            batch = next(batches)
            num_samples += len(batch["inputs"]) if hasattr(batch["inputs"], "__len__") else cfg.batch_size
            sync = micro == cfg.grad_accum_steps - 1
            context = module.no_sync() if (self.ddp is not None and not sync) else contextlib.nullcontext()
            with context:
                with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.use_autocast):
                    loss, logs = module(batch)
                if not torch.isfinite(loss):
                    finite = False
                self.scaler.scale(loss / cfg.grad_accum_steps).backward()
            total += float(loss.detach()) / cfg.grad_accum_steps
        finite = self._all_finite(finite)
        logs["lr"] = self.optimizer.param_groups[0]["lr"]
        if not finite:
            message = f"non-finite loss at step {self.step + 1} (loss {total})"
            if cfg.nonfinite == "stop":
                raise NonFiniteLossError(message + "; set trainer.nonfinite=skip to skip such steps")
            log.warning(message + "; step skipped")
            self.optimizer.zero_grad(set_to_none=True)
            self.skipped_steps += 1
            with warnings.catch_warnings():  # keep the schedule aligned with the step count
                warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
                self.scheduler.step()
            return None, logs, num_samples
        if cfg.grad_clip:
            self.scaler.unscale_(self.optimizer)
            logs["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(self.trainable.parameters(), cfg.grad_clip))
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        logs["loss"] = total
        return total, logs, num_samples

    def _batches(self) -> Iterator[dict[str, Any]]:
        """Endless stream of usable batches; advances the sampler and counts skipped samples."""
        while True:
            self.sampler.set_epoch(self.sampler.epoch)
            remaining, produced = len(self.sampler), False
            for batch in self.loader:
                self.sampler.advance()
                skipped = batch.pop("skipped", [])
                self.skips.update(skipped, self.cfg.batch_size)
                if "inputs" not in batch:  # every sample of this batch was skipped
                    continue
                produced = True
                yield _to_device(batch, self.device)
            if remaining and not produced:
                raise RuntimeError("the training data produced no usable batch in a whole epoch: " + self.skips.summary())
            self.sampler.set_epoch(self.sampler.epoch + 1)

    def _all_finite(self, finite: bool) -> bool:
        if self.env.world_size == 1:
            return finite
        flag = torch.tensor(0.0 if finite else 1.0, device=self.device)
        return bool(all_reduce_mean(flag).item() == 0.0)

    # ------------------------------------------------------------------ eval and logging
    def evaluate(self) -> dict[str, Any]:
        """Run every evaluator on the main rank; returns {"step", name: metrics}."""
        record: dict[str, Any] = {"step": self.step}
        if self.env.is_main and self.evaluators:
            self.model.eval()
            for name, evaluator in self.evaluators.items():
                metrics = dict(evaluator(self.model))
                record[name] = metrics
                self._log({f"eval/{name}/{k}": v for k, v in metrics.items() if isinstance(v, (int, float))})
            self.trainable.train()
        barrier()
        return record

    def _progress(self, end: int):
        if not (self.cfg.progress_bar and self.env.is_main):
            return None
        from tqdm.auto import tqdm

        return tqdm(total=end, initial=self.step, desc="train", dynamic_ncols=True)

    def _log(self, logs: Mapping[str, float]) -> None:
        if not self.env.is_main:
            return
        record = {"step": self.step, **{k: float(v) for k, v in logs.items()}}
        self.output_dir.mkdir(parents=True, exist_ok=True)
        with open(self.output_dir / "metrics.jsonl", "a") as handle:
            handle.write(json.dumps(record) + "\n")
        if self.cfg.tensorboard:
            if self._writer is None:
                from torch.utils.tensorboard import SummaryWriter

                self._writer = SummaryWriter(str(self.output_dir / "tensorboard"))
            for key, value in record.items():
                if key != "step" and math.isfinite(value):
                    self._writer.add_scalar(key, value, self.step)
        if self.cfg.wandb_project:
            if self._wandb is None:
                import wandb  # optional extra: pip install omniclip[wandb]

                self._wandb = wandb.init(project=self.cfg.wandb_project, dir=str(self.output_dir),
                                         config=_jsonable(self.run_config))
            self._wandb.log(record, step=self.step)

    def _close_loggers(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None


class _TrainStep(nn.Module):
    """model + objective as one module: batch -> (loss, logs)."""

    def __init__(self, model: nn.Module, objective: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.objective = objective

    def forward(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        return self.objective(self.model(batch).float(), batch)


def _trainable_state(module: nn.Module) -> dict[str, torch.Tensor]:
    if hasattr(module, "trainable_state_dict"):
        return module.trainable_state_dict()
    return {name: p.detach() for name, p in module.named_parameters() if p.requires_grad}


def _live_tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    live = dict(module.named_parameters(remove_duplicate=False))  # tied weights under every name
    live.update(dict(module.named_buffers(remove_duplicate=False)))
    return live


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    def move(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return value.to(device, non_blocking=True)
        if isinstance(value, dict):
            return {k: move(v) for k, v in value.items()}
        return value

    return {k: move(v) for k, v in batch.items()}


def _jsonable(config: Mapping[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(dict(config), default=str))


def trainer_config_from(cfg: Mapping[str, Any]) -> TrainerConfig:
    """Build a `TrainerConfig` from a mapping; unknown keys are an error naming them."""
    known = set(TrainerConfig.__dataclass_fields__)
    unknown = sorted(set(cfg) - known)
    if unknown:
        raise ConfigError(f"trainer.{unknown[0]}", f"unknown trainer option (known: {', '.join(sorted(known))})")
    return TrainerConfig(**dict(cfg))


__all__ = ["Trainer", "TrainerConfig", "TrainResult", "NonFiniteLossError", "trainer_config_from"]
