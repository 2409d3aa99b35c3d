"""One training loop for every modality.

The trainer sees ``model(batch) -> embeddings`` and ``objective(embeddings, batch) -> (loss,
logs)``; it knows no modality. It owns the mechanics: AdamW + cosine schedule, autocast and
grad scaling, accumulation, clipping, DDP, atomic checkpoints with exact resume, logging and
periodic evaluation.

Exact resume: the checkpoint holds the trainable weights, optimizer, scheduler, grad scaler,
RNG states, the sampler position and the skip counter. Samples draw their augmentation
randomness from (seed, epoch, index) alone (`omniclip.data.SeededDataset`), so a run stopped
at step k and resumed produces the same batches and losses as one that never stopped.

Batch transforms (mixup / cutmix: `omniclip.modality.Modality.build_batch_transform`) act on
whole batches, on the device, after the loader: per-sample seeding cannot cover them, so they
draw from a generator the trainer owns, seeded from ``seed`` and the rank and checkpointed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import signal
import threading
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from omniclip import parallel
from omniclip.acceleration import COMPILE_MODES, FROZEN_DTYPES, cast_frozen, compile_model, frozen_nbytes
from omniclip.data import (
    ResumableSampler,
    SkipCounter,
    TooManySkippedError,
    batch_size_of,
    build_loader,
    concat_batches,
    slice_batch,
)
from omniclip.distributed import DistEnv, all_gather_object, all_reduce_mean, barrier
from omniclip.errors import ConfigError, OmniclipError
from omniclip.optim import apply_train_only, build_optimizer, cosine_schedule, parse_lr_groups
from omniclip.resume_rules import ResumeCheck
from omniclip.shards import ShardDataset, ShardLoader
from omniclip.state import (
    atomic_save,
    capture_rng_state,
    latest_checkpoint,
    load_checkpoint,
    preserved_rng_state,
    restore_rng_state,
    save_checkpoint,
)

log = logging.getLogger(__name__)

Evaluator = Callable[[nn.Module], Mapping[str, float]]
#: ``transform(batch, generator) -> batch``, applied to every training micro-batch on the device
#: before the forward; all its randomness must come from ``generator`` (a CPU generator the
#: trainer seeds and checkpoints), or resume is no longer exact.
BatchTransform = Callable[[dict[str, Any], torch.Generator], dict[str, Any]]


class NonFiniteLossError(OmniclipError, RuntimeError):
    """The loss or the gradients became NaN or infinite and the policy (or its cap) says stop."""


class NonFiniteWeightsError(NonFiniteLossError):
    """Trainable weights or statistics are not finite: they are never checkpointed or exported."""


@dataclass
class TrainerConfig:
    """Trainer settings; the hydra group ``trainer/`` mirrors these fields.

    On resume the checkpoint's values are compared with these (see `omniclip.resume_rules`):
    schedule keys are applied from the checkpoint's step, bookkeeping keys are free, and a
    change of ``batch_size``, ``grad_accum_steps`` or ``seed`` is refused.
    """

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
    #: ``[{match, lr_scale, weight_decay}]``: parameters whose name fully matches the regex train at
    #: lr * lr_scale, with the group's weight decay when it names one (`omniclip.optim.LrGroup`)
    lr_groups: list[dict[str, Any]] = field(default_factory=list)
    #: regexes; when set, only trainable parameters whose name matches one of them train
    train_only: list[str] | None = None
    precision: str = "fp32"  # fp32 | bf16 | fp16: autocast (and a GradScaler for fp16), on CUDA and CPU
    #: fp32 | bf16: how the frozen weights (trunk, and the image tower it shares) are stored; the
    #: trainable ones stay fp32 master weights (`omniclip.acceleration.cast_frozen`)
    frozen_dtype: str = "fp32"
    #: torch.compile the model's forward (`omniclip.acceleration.compile_model`); the objective stays eager
    compile: bool = False
    compile_backend: str = "inductor"  # any torch.compile backend; aot_eager / eager need no C++ compiler
    compile_mode: str | None = None  # inductor's mode: null (default) | reduce-overhead | max-autotune | ...
    grad_checkpointing: bool = False
    #: ddp | fsdp2: how a run under torchrun spreads over ranks (`omniclip.parallel`); one process ignores it
    parallel: str = "ddp"
    num_workers: int = 2
    prefetch_factor: int | None = None  # batches each worker prepares ahead (torch's default: 2)
    seed: int = 0
    bad_samples: str = "stop"  # stop | skip
    max_skip_fraction: float = 0.1
    nonfinite: str = "stop"  # stop | skip
    max_consecutive_nonfinite: int = 20  # stop when more steps than this in a row cannot update (skip, fp16 overflow)
    max_nonfinite_steps: int = 100  # with nonfinite=skip: stop when more steps than this were skipped in the run
    checkpoint_every: int = 500
    keep_last: int | None = 3
    eval_every: int | None = None
    log_every: int = 10
    resume: str = "auto"  # auto | never | <checkpoint dir>
    tensorboard: bool = True
    wandb_project: str | None = None
    progress_bar: bool = True
    progress_label: str = "train"  # the progress bar's title (a demo names the lens it trains)

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)  # hydra hands lists
        self.lr_groups = [dict(g) if isinstance(g, Mapping) else g for g in (self.lr_groups or [])]
        self.train_only = [self.train_only] if isinstance(self.train_only, str) else self.train_only
        try:
            parse_lr_groups(self.lr_groups)  # checked before anything is built
        except ConfigError as error:
            raise _trainer_key(error) from None
        checks = {
            "precision": (self.precision, ("fp32", "bf16", "fp16")),
            "frozen_dtype": (self.frozen_dtype, tuple(FROZEN_DTYPES)),
            "compile_mode": (self.compile_mode, COMPILE_MODES),
            "nonfinite": (self.nonfinite, ("stop", "skip")),
            "bad_samples": (self.bad_samples, ("stop", "skip")),
            "parallel": (self.parallel, parallel.STRATEGIES),
        }
        for key, (value, allowed) in checks.items():
            if value not in allowed:
                raise ConfigError(f"trainer.{key}", f"`{value}` is not one of {allowed}")
        if self.frozen_dtype == "bf16" and self.precision == "fp16":
            raise ConfigError("trainer.frozen_dtype", "bf16 frozen weights under fp16 autocast would be recast to "
                              "fp16 in every op (bf16's range does not fit fp16's): use trainer.precision=bf16 "
                              "or fp32 with frozen_dtype=bf16, or frozen_dtype=fp32 with fp16")
        if self.parallel == "fsdp2" and self.frozen_dtype != "fp32":
            # Untested together: fully_shard would shard blocks already cast to bf16, and the image
            # anchors it needs cached would come from the bf16 tower. Refused rather than guessed.
            raise ConfigError("trainer.frozen_dtype", f"`{self.frozen_dtype}` with trainer.parallel=fsdp2 is not "
                              "supported yet: use frozen_dtype=fp32 with fsdp2, or parallel=ddp with "
                              f"frozen_dtype={self.frozen_dtype}")
        for key in ("max_steps", "batch_size", "grad_accum_steps", "checkpoint_every", "log_every",
                    "max_consecutive_nonfinite", "max_nonfinite_steps"):
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
        dataset, collate_fn: sample source and batching (the modality's); a map-style dataset, or a
            `omniclip.shards.ShardDataset` to stream WebDataset shards (`ShardLoader`).
        output_dir: checkpoints, logs and ``metrics.jsonl`` go here (one directory for all ranks).
        evaluators: name -> callable(model) -> metrics, run every ``eval_every`` steps and at the end.
        run_config: the resolved recipe, saved with each checkpoint and compared on resume.
        batch_transform: applied to each micro-batch after it reaches the device and before the
            forward (`BatchTransform`): batch-level augmentation such as mixup / cutmix, which
            needs the whole batch and is cheapest on the accelerator.
    """

    def __init__(
        self,
        cfg: TrainerConfig,
        model: nn.Module,
        objective: nn.Module,
        dataset: Dataset | ShardDataset,
        collate_fn: Callable[[list[Any]], dict[str, Any]],
        output_dir: str | Path,
        env: DistEnv | None = None,
        evaluators: Mapping[str, Evaluator] | None = None,
        run_config: Mapping[str, Any] | None = None,
        batch_transform: BatchTransform | None = None,
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
        self._setup_frozen_dtype_and_compile()
        # One module so optimizer, checkpoints and DDP see model and objective together; DDP's
        # gradient synchronisation needs the forward to go through it.
        self.trainable = _TrainStep(self.model, self.objective)
        try:  # before DDP, which registers gradient hooks on what trains
            apply_train_only(self.trainable, cfg.train_only)
        except ConfigError as error:
            raise _trainer_key(error) from None
        #: fsdp2 under torchrun: the frozen trunk blocks are sharded over the ranks (`omniclip.parallel`)
        self.sharded = self.env.world_size > 1 and cfg.parallel == "fsdp2"
        anchors = getattr(self.objective, "anchors", None)
        if self.sharded and anchors is not None:  # its image tower's blocks are the trunk's, about to be sharded
            parallel.refuse_image_tower(anchors.backbone)
        self.ddp = parallel.wrap(self.trainable, self.model, cfg.parallel, self.device, self.env.world_size)
        try:  # the optimiser's and the schedule's own names -> the recipe keys
            self.optimizer = build_optimizer(self.trainable, cfg.lr, cfg.weight_decay, cfg.betas, cfg.eps,
                                             lr_groups=cfg.lr_groups)
            self.scheduler = cosine_schedule(self.optimizer, cfg.warmup_steps, cfg.max_steps, cfg.min_lr_ratio)
        except ConfigError as error:
            raise _trainer_key(error) from None
        self.use_autocast = cfg.precision != "fp32"
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.precision, torch.float32)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.precision == "fp16")
        self.sampler, self.loader = self._data_source(dataset, collate_fn)
        self.skips = SkipCounter(cfg.max_skip_fraction)
        self.step = 0
        self.skipped_steps = 0
        self._consecutive_nonfinite = 0
        self._carry: dict[str, Any] | None = None  # samples drawn for the next batch (refill)
        self.batch_transform = batch_transform
        # A CPU generator: the transform draws a few scalars and a permutation per batch, and a
        # CPU state resumes on any device. Seeded per rank so that ranks mix independently.
        seed_words = np.random.SeedSequence([cfg.seed, self.env.rank, 0x6D6978]).generate_state(1, np.uint64)
        self.batch_generator = torch.Generator().manual_seed(int(seed_words[0]))
        self._saved_step: int | None = None
        self._stop_signal: int | None = None
        self._writer = None
        self._wandb = None

    def _setup_frozen_dtype_and_compile(self) -> None:
        """``trainer.frozen_dtype`` and ``trainer.compile``, before the optimizer and DDP see the
        parameters: the optimizer must get the fp32 master weights, DDP the stored dtypes."""
        cfg = self.cfg
        before = frozen_nbytes(self.model)
        cast_frozen(self.model, cfg.frozen_dtype, trainable=(self.objective,))
        if cfg.frozen_dtype != "fp32":
            log.info("frozen weights stored in %s: %.1f MiB (%.1f MiB in fp32)", cfg.frozen_dtype,
                     frozen_nbytes(self.model) / 2**20, before / 2**20)
        if cfg.compile:
            if self.env.world_size > 1:
                raise ConfigError("trainer.compile", f"is not supported with {self.env.world_size} ranks yet "
                                  "(a compiled model under DistributedDataParallel is untested here): set "
                                  "trainer.compile=false for multi-process runs")
            compile_model(self.model, cfg.compile_backend, cfg.compile_mode, self.device)
            log.info("model forward compiled with torch.compile (backend %s, mode %s); the first step compiles",
                     cfg.compile_backend, cfg.compile_mode or "default")

    def _data_source(self, dataset: Dataset | ShardDataset, collate_fn: Callable[[list[Any]], dict[str, Any]]
                     ) -> tuple[ResumableSampler | ShardLoader, DataLoader | ShardLoader]:
        """The position keeper and the batch source: a `ResumableSampler` driving a DataLoader
        over a map-style dataset, or one `ShardLoader` (both roles) over a `ShardDataset`.
        `_batches`, `_data_state`, `resume` and `_rebuild_batch` use the same interface on both."""
        cfg, pin = self.cfg, self.device.type == "cuda"
        if isinstance(dataset, ShardDataset):
            loader = ShardLoader(dataset, collate_fn, cfg.batch_size, seed=cfg.seed, rank=self.env.rank,
                                 world_size=self.env.world_size, num_workers=cfg.num_workers,
                                 policy=cfg.bad_samples, pin_memory=pin, prefetch_factor=cfg.prefetch_factor)
            return loader, loader
        sampler = ResumableSampler(
            len(dataset), shuffle=True, seed=cfg.seed, rank=self.env.rank, world_size=self.env.world_size,
            drop_last=True, batch_size=cfg.batch_size,
        )
        loader = build_loader(
            dataset, collate_fn, cfg.batch_size, sampler, cfg.num_workers, cfg.seed,
            pin_memory=pin, policy=cfg.bad_samples, prefetch_factor=cfg.prefetch_factor,
        )
        return sampler, loader

    # ------------------------------------------------------------------ state
    def trainable_weights(self) -> dict[str, torch.Tensor]:
        weights = {f"model.{k}": v for k, v in _trainable_state(self.model).items()}
        weights.update({f"objective.{k}": v for k, v in _trainable_state(self.objective).items()})
        return weights

    def save(self) -> Path | None:
        """Write a checkpoint (main rank). Every rank must call it: RNG and data states are gathered.

        Raises `NonFiniteWeightsError` instead of writing weights that are not finite, so the
        newest checkpoint is always one a run can resume from.
        """
        weights = self.trainable_weights()
        bad = [k for k, v in weights.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
        if bad:
            raise NonFiniteWeightsError(
                f"trainable weights are not finite at step {self.step} ({', '.join(bad[:5])}"
                f"{', ...' if len(bad) > 5 else ''}); not saved. The newest checkpoint "
                f"({latest_checkpoint(self.output_dir) or 'none'}) is the last good state: lower trainer.lr "
                "or check the data, then resume"
            )
        rng_states = all_gather_object(capture_rng_state())  # one per rank, restored per rank
        data_states = all_gather_object(self._data_state())
        transform_rng = all_gather_object(self.batch_generator.get_state())
        if self.env.is_main:
            state = {
                "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict(),
                "rng": rng_states,
                "data": data_states,
                "batch_transform_rng": transform_rng,
                "skipped_steps": self.skipped_steps,
                "consecutive_nonfinite": self._consecutive_nonfinite,
                "trainer_config": _jsonable(asdict(self.cfg)),
            }
            path = save_checkpoint(self.output_dir, self.step, weights, state, _jsonable(self.run_config),
                                   keep_last=self.cfg.keep_last)
            log.info("saved checkpoint %s", path)
        else:
            path = None
        self._saved_step = self.step
        return path

    def _data_state(self) -> dict[str, Any]:
        carry = [list(k) for k in self._carry["sample_keys"]] if self._carry is not None else []
        return {"sampler": self.sampler.state_dict(), "skips": self.skips.state_dict(), "carry": carry}

    def resume(self) -> Path | None:
        """Restore the newest checkpoint (``resume=auto``) or the one named; None when starting fresh.

        The recipe is compared with the checkpoint's first (`omniclip.resume_rules`): a change
        that cannot apply within a run raises `ConfigError` naming every differing key; schedule
        changes apply from the checkpoint's step on.
        """
        if self.cfg.resume == "never":
            return None
        path = latest_checkpoint(self.output_dir) if self.cfg.resume == "auto" else Path(self.cfg.resume)
        if path is None:
            return None
        weights, state, saved_config = load_checkpoint(path)
        check = ResumeCheck(state.get("trainer_config", {}), _jsonable(asdict(self.cfg)),
                            saved_config, _jsonable(self.run_config))
        refusal = check.refusal()
        if refusal:
            raise ConfigError("trainer.resume", f"cannot resume {path}: {refusal}")
        self._load_weights(weights)
        # The optimizer keeps its moments; its hyper-parameters and the schedule are the recipe's.
        recipe_groups = [{k: v for k, v in g.items() if k != "params"} for g in self.optimizer.param_groups]
        self.optimizer.load_state_dict(state["optimizer"])
        for group, recipe in zip(self.optimizer.param_groups, recipe_groups):
            group.update(recipe)
        self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])
        self._set_schedule_step(self.step)
        data = state["data"]
        if len(data) != self.env.world_size:
            raise ConfigError("trainer.resume", f"{path} was written by {len(data)} rank(s) and this run has "
                              f"{self.env.world_size}: the data position cannot be split anew; resume with "
                              f"{len(data)} rank(s) or start a new run")
        mine = data[self.env.rank]
        try:
            self.sampler.load_state_dict(mine["sampler"])
        except ValueError as error:
            raise ConfigError("trainer.resume", f"cannot resume {path}: {error}") from None
        self.skips.load_state_dict(mine["skips"])
        self._carry = self._rebuild_batch([tuple(k) for k in mine["carry"]])
        self.skipped_steps = int(state["skipped_steps"])
        self._consecutive_nonfinite = int(state.get("consecutive_nonfinite", 0))
        restore_rng_state(state["rng"][self.env.rank])
        self._restore_batch_generator(state.get("batch_transform_rng"), path)
        self._saved_step = self.step
        self._truncate_metrics(self.step)
        applied = check.applied()
        if applied and self.env.is_main:
            log.warning(applied)
        log.info("resumed from %s at step %d", path, self.step)
        return path

    def _restore_batch_generator(self, states: list[torch.Tensor] | None, path: Path) -> None:
        """This rank's batch-transform generator as the checkpoint left it (its draws continue
        where the stopped run's would have)."""
        if states is None:  # written before the trainer had the hook
            if self.batch_transform is not None:
                log.warning("%s holds no batch-transform generator state: mixing continues from the seed, so "
                            "this resumed run is not bit-identical to an uninterrupted one", path)
            return
        self.batch_generator.set_state(states[self.env.rank])

    def _set_schedule_step(self, step: int) -> None:
        """Put the scheduler (a pure function of the step) and every group's lr at ``step``."""
        self.scheduler.last_epoch = step
        lrs = [base * factor(step) for base, factor in zip(self.scheduler.base_lrs, self.scheduler.lr_lambdas)]
        for group, lr in zip(self.optimizer.param_groups, lrs):
            group["lr"] = lr
        self.scheduler._last_lr = lrs  # what get_last_lr() reports

    def _rebuild_batch(self, keys: list[tuple[int, int]]) -> dict[str, Any] | None:
        """The partial batch a checkpoint was waiting to fill, rebuilt from its sample keys."""
        if not keys:
            return None
        batch = self.loader.collate_fn([self.loader.dataset[key] for key in keys])
        batch.pop("skipped", None)  # counted when these samples were first drawn
        return batch

    def _load_weights(self, weights: Mapping[str, torch.Tensor]) -> None:
        expected = self.trainable_weights()
        missing = sorted(set(expected) - set(weights))
        unexpected = sorted(set(weights) - set(expected))
        shapes = [f"{k} {tuple(weights[k].shape)} vs {tuple(expected[k].shape)}"
                  for k in sorted(set(expected) & set(weights)) if weights[k].shape != expected[k].shape]
        if missing or unexpected or shapes:
            raise ConfigError("trainer.resume", f"checkpoint does not match the model: missing {missing}, "
                              f"unexpected {unexpected}, shape (checkpoint vs model) {shapes}")
        live = {f"model.{k}": v for k, v in _live_tensors(self.model).items()}
        live.update({f"objective.{k}": v for k, v in _live_tensors(self.objective).items()})
        with torch.no_grad():
            for key, value in weights.items():
                live[key].copy_(value)

    def _truncate_metrics(self, step: int) -> None:
        """Drop records of steps after ``step``: the resumed run logs them again."""
        path = self.output_dir / "metrics.jsonl"
        if not (self.env.is_main and path.is_file()):
            return
        lines = path.read_text().splitlines(keepends=True)
        kept = [line for line in lines if _record_step(line) <= step]
        if len(kept) != len(lines):
            atomic_save(lambda tmp: tmp.write_text("".join(kept)), path)

    # ------------------------------------------------------------------ loop
    def fit(self, stop_at: int | None = None) -> TrainResult:
        """Train until ``max_steps`` (or ``stop_at``, to pause a run early), resuming first.

        SIGINT (Ctrl-C) and SIGTERM finish the current step, save a checkpoint (once) and raise
        `KeyboardInterrupt`; a second signal acts at once.
        """
        self.resume()
        end = min(self.cfg.max_steps, stop_at or self.cfg.max_steps)
        if self.step >= self.cfg.max_steps and self.env.is_main:
            log.warning("nothing to train: %s is at step %d of trainer.max_steps=%d (raise trainer.max_steps to "
                        "train on, or choose another output_dir for a new run)", self.output_dir, self.step,
                        self.cfg.max_steps)
        result = TrainResult(step=self.step)
        batches = self._batches()
        bar = self._progress(end)
        self.trainable.train()
        last_time, samples_since = time.perf_counter(), 0
        throughput = None  # samples/s over the last logging interval, shown on the bar once known
        with self._stop_signals():
            while self.step < end:
                try:
                    loss, logs, num_samples = self._train_step(batches)
                except _StopBeforeStep:
                    self._interrupted(bar)
                samples_since += num_samples
                self.step += 1
                if loss is not None:
                    result.losses.append(loss)
                if self.step % self.cfg.log_every == 0 or self.step == end:
                    now = time.perf_counter()
                    logs["samples_per_s"] = samples_since * self.env.world_size / max(now - last_time, 1e-9)
                    last_time, samples_since = now, 0
                    throughput = logs["samples_per_s"]
                    self._log(logs)
                    if bar is None and self.env.is_main:
                        log.info(_step_line(self.step, end, logs))
                if bar is not None:
                    bar.update(1)
                    shown = {"loss": f"{logs.get('loss', float('nan')):.4f}", "lr": f"{logs['lr']:.2e}"}
                    if throughput is not None:
                        shown["samples/s"] = f"{throughput:.0f}"
                    bar.set_postfix(shown, refresh=False)
                if self.step % self.cfg.checkpoint_every == 0 or self.step == end:
                    self.save()
                    barrier()
                if self.cfg.eval_every and (self.step % self.cfg.eval_every == 0 or self.step == self.cfg.max_steps):
                    result.evals.append(self.evaluate())
                if self._should_stop():
                    self._interrupted(bar)
        if bar is not None:
            bar.close()
        if self.skips.skipped:
            log.warning(self.skips.summary())
        result.step = self.step
        result.skipped_steps = self.skipped_steps
        result.skipped_samples = len(self.skips.skipped)
        self._close_loggers()
        return result

    @contextlib.contextmanager
    def _stop_signals(self) -> Iterator[None]:
        """Turn SIGINT / SIGTERM into a request to stop after the current step."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous: dict[int, Any] = {}

        def request_stop(signum: int, frame: Any) -> None:
            self._stop_signal = signum
            for sig, handler in previous.items():  # a second signal acts at once
                signal.signal(sig, handler)

        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, request_stop)
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _should_stop(self) -> bool:
        requested = self._stop_signal is not None
        if self.env.world_size == 1:
            return requested
        flag = torch.tensor(1.0 if requested else 0.0, device=self.device)  # every rank stops together
        return bool(all_reduce_mean(flag).item() > 0.0)

    def _interrupted(self, bar: Any) -> None:
        if self._saved_step != self.step:
            self.save()
            barrier()
        if bar is not None:
            bar.close()
        self._close_loggers()
        name = signal.Signals(self._stop_signal).name if self._stop_signal else "a stop request"
        if self.env.is_main:
            log.warning("stopped by %s at step %d; checkpoint %s; run the same command again to resume",
                        name, self.step, latest_checkpoint(self.output_dir))
        raise KeyboardInterrupt(f"stopped by {name} at step {self.step}")

    def _train_step(self, batches: Iterator[dict[str, Any]]) -> tuple[float | None, dict[str, float], int]:
        cfg = self.cfg
        module = self.ddp if self.ddp is not None else self.trainable
        self.optimizer.zero_grad(set_to_none=True)
        norm_stats = _snapshot_norm_stats(self.trainable)
        total, logs, num_samples, finite = 0.0, {}, 0, True
        for micro in range(cfg.grad_accum_steps):
            try:
                batch = next(batches)
            except Exception:
                # A SIGTERM sent to the whole job (slurm, torchrun) also ends the loader's workers;
                # before the step's first forward nothing has changed since the last step.
                if self._stop_signal is not None and micro == 0:
                    raise _StopBeforeStep() from None
                raise
            num_samples += batch_size_of(batch)
            if self.batch_transform is not None:  # per micro-batch: each mixes within itself
                batch = self.batch_transform(batch, self.batch_generator)
            sync = micro == cfg.grad_accum_steps - 1
            context = module.no_sync() if (self.ddp is not None and not sync) else contextlib.nullcontext()
            with context:
                with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.use_autocast):
                    loss, logs = module(batch)
                if not torch.isfinite(loss):
                    finite = False
                self.scaler.scale(loss / cfg.grad_accum_steps).backward()
            total += float(loss.detach()) / cfg.grad_accum_steps
        logs["lr"] = self.optimizer.param_groups[0]["lr"]
        self.scaler.unscale_(self.optimizer)  # a no-op without fp16; the norm below is of true gradients
        grads = [p.grad for p in self.trainable.parameters() if p.grad is not None]
        grad_norm = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros(())
        grads_finite = bool(torch.isfinite(grad_norm))
        finite, grads_finite = self._all_finite(finite), self._all_finite(grads_finite)
        if finite and not grads_finite and self.scaler.is_enabled():
            # fp16 overflow: the scaler skips this update and lowers its scale; expected while it calibrates.
            _restore_norm_stats(self.trainable, norm_stats)
            self._count_nonfinite("fp16 gradient overflow", total, counts_in_run=False)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self._step_schedule_without_update()
            logs["fp16_overflow"] = 1.0
            return None, logs, num_samples
        if not (finite and grads_finite):
            problem = "non-finite loss" if not finite else "non-finite gradients"
            _restore_norm_stats(self.trainable, norm_stats)
            self.optimizer.zero_grad(set_to_none=True)
            self._count_nonfinite(problem, total, counts_in_run=True)
            self._step_schedule_without_update()
            return None, logs, num_samples
        self._consecutive_nonfinite = 0
        if cfg.grad_clip:
            torch.nn.utils.clip_grads_with_norm_(grads, cfg.grad_clip, grad_norm)
        logs["grad_norm"] = float(grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        logs["loss"] = total
        return total, logs, num_samples

    def _count_nonfinite(self, problem: str, loss: float, counts_in_run: bool) -> None:
        """Apply the non-finite policy and its caps to a step whose update is being skipped."""
        cfg = self.cfg
        message = f"{problem} at step {self.step + 1} (loss {loss})"
        if counts_in_run and cfg.nonfinite == "stop":
            raise NonFiniteLossError(message + "; set trainer.nonfinite=skip to skip such steps")
        self._consecutive_nonfinite += 1
        if counts_in_run:
            self.skipped_steps += 1
            log.warning(message + "; step skipped")
        if self._consecutive_nonfinite > cfg.max_consecutive_nonfinite:
            raise NonFiniteLossError(
                f"{message}: {self._consecutive_nonfinite} steps in a row could not update the model "
                f"(trainer.max_consecutive_nonfinite={cfg.max_consecutive_nonfinite}); lower trainer.lr or "
                "check the data"
            )
        if self.skipped_steps > cfg.max_nonfinite_steps:
            raise NonFiniteLossError(
                f"{message}: {self.skipped_steps} steps of this run were skipped "
                f"(trainer.max_nonfinite_steps={cfg.max_nonfinite_steps}); lower trainer.lr or check the data"
            )

    def _step_schedule_without_update(self) -> None:
        with warnings.catch_warnings():  # keep the schedule aligned with the step count
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
            self.scheduler.step()

    def _batches(self) -> Iterator[dict[str, Any]]:
        """Endless stream of full batches; advances the sampler and counts skipped samples.

        A batch that lost samples to the skip policy is topped up from the next one (a batch of
        one would give a contrastive loss of 0), and the samples left over start the next
        batch. Between steps those left-over samples are ``self._carry``, checkpointed by key.
        """
        size = self.cfg.batch_size
        while True:
            self.sampler.set_epoch(self.sampler.epoch)
            remaining, produced = len(self.sampler), False
            for batch in self.loader:
                self.sampler.advance()
                skipped = batch.pop("skipped", [])
                self.skips.update(skipped, size)
                if "inputs" not in batch:  # every sample of this batch was skipped
                    continue
                produced = True
                if self._carry is not None:
                    batch = concat_batches(self._carry, batch)
                    self._carry = None
                count = batch_size_of(batch)
                if count < size:
                    self._carry = batch
                    continue
                if count > size:
                    self._carry = slice_batch(batch, size, count)
                    batch = slice_batch(batch, 0, size)
                yield _to_device(batch, self.device)
            if remaining and not produced:
                raise TooManySkippedError("the training data produced no usable batch in a whole epoch: "
                                          + self.skips.summary())
            self.sampler.set_epoch(self.sampler.epoch + 1)

    def _all_finite(self, finite: bool) -> bool:
        if self.env.world_size == 1:
            return finite
        flag = torch.tensor(0.0 if finite else 1.0, device=self.device)
        return bool(all_reduce_mean(flag).item() == 0.0)

    # ------------------------------------------------------------------ eval and logging
    def evaluate(self) -> dict[str, Any]:
        """Run every evaluator on the main rank; returns {"step", name: metrics}.

        Under fsdp2 every rank runs them (each sharded block's forward is a collective) and only
        the main rank logs. The global RNGs are left as they were: a run resumed from the
        checkpoint written just before an evaluation must draw the same training randomness as
        one that evaluated.
        """
        record: dict[str, Any] = {"step": self.step}
        if (self.env.is_main or self.sharded) and self.evaluators:
            self.model.eval()
            with preserved_rng_state():
                for name, evaluator in self.evaluators.items():
                    metrics = dict(evaluator(self.model))
                    record[name] = metrics
                    numbers = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
                    self._log({f"eval/{name}/{k}": v for k, v in numbers.items()})
                    if self.env.is_main:
                        log.info("eval %s at step %d: %s", name, self.step,
                                 "  ".join(f"{k} {v:.4g}" for k, v in numbers.items()))
            self.trainable.train()
        barrier()
        return record

    def _progress(self, end: int):
        if not (self.cfg.progress_bar and self.env.is_main):
            return None
        from tqdm.auto import tqdm

        return tqdm(total=end, initial=self.step, desc=self.cfg.progress_label, dynamic_ncols=True)

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


class _StopBeforeStep(Exception):
    """A stop signal arrived and the data stream ended before the step began."""


class _TrainStep(nn.Module):
    """model + objective as one module: batch -> (loss, logs).

    A model may return ``(embeddings, aux_losses)``: losses it computes itself (ILA's frame
    alignment), already weighted as its config says; they are added to the objective's loss and
    logged under ``aux/<name>``.
    """

    def __init__(self, model: nn.Module, objective: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.objective = objective

    def forward(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        output = self.model(batch)
        embeddings, aux = output if isinstance(output, tuple) else (output, {})
        loss, logs = self.objective(embeddings.float(), batch)
        for name, value in aux.items():
            loss = loss + value.float()
            logs[f"aux/{name}"] = float(value.detach())
        return loss, logs


def _trainer_key(error: ConfigError) -> ConfigError:
    """The same error keyed by its recipe name (``lr`` -> ``trainer.lr``)."""
    key = error.key if error.key.startswith("trainer.") else f"trainer.{error.key}"
    return ConfigError(key, error.problem)


def _trainable_state(module: nn.Module) -> dict[str, torch.Tensor]:
    if hasattr(module, "trainable_state_dict"):
        return module.trainable_state_dict()
    return {name: p.detach() for name, p in module.named_parameters() if p.requires_grad}


def _live_tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    live = dict(module.named_parameters(remove_duplicate=False))  # tied weights under every name
    live.update(dict(module.named_buffers(remove_duplicate=False)))
    return live


def _norm_layers(module: nn.Module) -> list[tuple[str, nn.Module]]:
    """Norm layers whose forward in training mode updates running statistics (BatchNorm & co)."""
    return [(name, m) for name, m in module.named_modules()
            if isinstance(m, nn.modules.batchnorm._NormBase) and m.track_running_stats and m.training]


def _snapshot_norm_stats(module: nn.Module) -> dict[str, torch.Tensor]:
    """Copies of the running statistics a forward is about to update (restored if the step is skipped)."""
    stats = {}
    for name, layer in _norm_layers(module):
        for buffer_name, buffer in layer.named_buffers(recurse=False):
            if buffer is not None:
                stats[f"{name}.{buffer_name}"] = buffer.detach().clone()
    return stats


def _restore_norm_stats(module: nn.Module, stats: Mapping[str, torch.Tensor]) -> None:
    buffers = dict(module.named_buffers())
    with torch.no_grad():
        for name, value in stats.items():
            buffers[name].copy_(value)


def _record_step(line: str) -> float:
    try:
        return float(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return math.inf  # a torn last line of a killed run: dropped with the steps after the checkpoint


def _step_line(step: int, end: int, logs: Mapping[str, float]) -> str:
    parts = [f"step {step}/{end}"]
    if "loss" in logs:
        parts.append(f"loss {logs['loss']:.4f}")
    else:
        parts.append("update skipped")
    parts.append(f"lr {logs['lr']:.3e}")
    if "grad_norm" in logs:
        parts.append(f"grad_norm {logs['grad_norm']:.3g}")
    parts.append(f"{logs.get('samples_per_s', 0.0):.1f} samples/s")
    return "  ".join(parts)


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


__all__ = ["BatchTransform", "Trainer", "TrainerConfig", "TrainResult", "NonFiniteLossError", "trainer_config_from"]
