import json
import logging
import math
import os
import re
import signal

import pytest
import torch

from omniclip.anchors import AnchorStore
from omniclip.errors import ConfigError
from omniclip.losses import LogitScale
from omniclip.model import build_lens_model
from omniclip.objective import ContrastiveObjective
from omniclip.optim import WarmupCosine
from omniclip.trainer import NonFiniteLossError, NonFiniteWeightsError, Trainer, TrainerConfig
from tests.toy_modality import ToyModality


DROPOUT = {"attn_dropout": 0.1, "ff_dropout": 0.1}


def make_trainer(backbone, out_dir, dataset_cfg=None, wrap_objective=None, lens_cfg=None, run_config=None,
                 evaluators=None, **overrides):
    torch.manual_seed(0)
    modality = ToyModality()
    model, model_cfg = build_lens_model(modality, backbone.trunk(unlocked_blocks=1), lens_cfg=lens_cfg)
    objective = ContrastiveObjective(AnchorStore(backbone), LogitScale(backbone.logit_scale, learnable=True))
    if wrap_objective is not None:
        objective = wrap_objective(objective)
    cfg = TrainerConfig(**{"max_steps": 6, "batch_size": 4, "lr": 1e-3, "warmup_steps": 2, "num_workers": 0,
                           "checkpoint_every": 3, "log_every": 1, "progress_bar": False, "tensorboard": False,
                           **overrides})
    dataset = modality.build_dataset(dataset_cfg or {"size": 12}, "train")
    return Trainer(cfg, model, objective, dataset, modality.collate, out_dir,
                   run_config=run_config if run_config is not None else {"model": model_cfg},
                   evaluators=evaluators)


def assert_same_weights(a: Trainer, b: Trainer, atol: float = 1e-6) -> None:
    wa, wb = a.trainable_weights(), b.trainable_weights()
    assert set(wa) == set(wb) and wa
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], rtol=0, atol=atol, msg=key)


def test_training_reduces_loss_and_writes_checkpoints(tmp_path, tiny_backbone):
    trainer = make_trainer(tiny_backbone, tmp_path, max_steps=12, checkpoint_every=4, keep_last=2, tensorboard=True)
    result = trainer.fit()
    assert result.step == 12 and len(result.losses) == 12
    assert sum(result.losses[-3:]) / 3 < sum(result.losses[:3]) / 3
    steps = sorted(p.name for p in (tmp_path / "checkpoints").glob("step_*"))
    assert steps == ["step_00000008", "step_00000012"]
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 13))
    assert {"loss", "lr", "samples_per_s", "contrastive/loss_text", "contrastive/loss_image"} <= set(records[-1])
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


def test_frozen_clip_weights_do_not_change(tmp_path, tiny_backbone):
    before = {k: v.clone() for k, v in tiny_backbone.model.state_dict().items()}
    make_trainer(tiny_backbone, tmp_path, max_steps=3).fit()
    for key, value in tiny_backbone.model.state_dict().items():
        assert torch.equal(value, before[key]), key


@pytest.mark.parametrize("num_workers", [0, 2])
def test_resume_mid_epoch_with_dropout_equals_uninterrupted_run(tmp_path, tiny_backbone, num_workers):
    """Lens dropout draws from the global RNG in every forward; stopping mid-epoch (step 4 of 3-step
    epochs) makes the resumed run call iter(loader) where the uninterrupted one did not."""
    opts = {"lens_cfg": DROPOUT, "num_workers": num_workers, "max_steps": 7, "checkpoint_every": 4}
    full_trainer = make_trainer(tiny_backbone, tmp_path / "full", **opts)
    full = full_trainer.fit()
    first = make_trainer(tiny_backbone, tmp_path / "killed", **opts).fit(stop_at=4)
    assert first.step == 4
    torch.manual_seed(999)  # a fresh process: different global RNG state, new model object
    resumed = make_trainer(tiny_backbone, tmp_path / "killed", **opts)
    second = resumed.fit()
    assert second.step == 7 and len(first.losses) == 4 and len(second.losses) == 3
    assert first.losses + second.losses == pytest.approx(full.losses, abs=1e-6)
    assert_same_weights(resumed, full_trainer)


def test_dropout_really_draws_random_numbers(tiny_backbone):
    """The resume tests above only prove something if the forward is random."""
    trainer = make_trainer(tiny_backbone, "unused", lens_cfg=DROPOUT)
    batch = next(trainer._batches())
    trainer.trainable.train()
    with torch.no_grad():
        a, b = trainer.model(batch), trainer.model(batch)
    assert (a - b).abs().max() > 1e-4


def test_resume_with_accumulation_and_workers(tmp_path, tiny_backbone):
    opts = {"grad_accum_steps": 2, "num_workers": 2, "max_steps": 5, "checkpoint_every": 3, "lens_cfg": DROPOUT}
    full_trainer = make_trainer(tiny_backbone, tmp_path / "full", **opts)
    full = full_trainer.fit()
    first = make_trainer(tiny_backbone, tmp_path / "part", **opts).fit(stop_at=3)
    resumed = make_trainer(tiny_backbone, tmp_path / "part", **opts)
    second = resumed.fit()
    assert first.losses + second.losses == pytest.approx(full.losses, abs=1e-6)
    assert_same_weights(resumed, full_trainer)


def test_evaluation_does_not_shift_training_randomness(tmp_path, tiny_backbone):
    """A checkpoint is written before the evaluation of the same step; the resumed run skips that
    evaluation, so an evaluation that draws random numbers must not change later training."""
    def noisy_eval(model):
        return {"noise": float(torch.rand(()))}

    opts = {"lens_cfg": DROPOUT, "max_steps": 6, "checkpoint_every": 2, "eval_every": 2,
            "evaluators": {"noisy": noisy_eval}}
    full = make_trainer(tiny_backbone, tmp_path / "full", **opts).fit()
    first = make_trainer(tiny_backbone, tmp_path / "part", **opts).fit(stop_at=2)
    second = make_trainer(tiny_backbone, tmp_path / "part", **opts).fit()
    assert first.losses + second.losses == pytest.approx(full.losses, abs=1e-6)


def test_metrics_log_holds_each_step_once_after_resume(tmp_path, tiny_backbone):
    make_trainer(tiny_backbone, tmp_path, max_steps=6, checkpoint_every=2).fit(stop_at=5)  # checkpoint at 4
    with open(tmp_path / "metrics.jsonl", "a") as handle:
        handle.write('{"step": 6, "loss"')  # the torn last line of a killed process
    make_trainer(tiny_backbone, tmp_path, max_steps=6, checkpoint_every=2).fit()
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]


def test_gradient_accumulation_divides_the_loss(tmp_path, tiny_backbone):
    """2 micro-batches of 2 = 1 batch of 4 for a per-sample loss: same loss and gradient norm."""
    class PerSampleLoss(torch.nn.Module):
        def forward(self, embeddings, batch):
            return (embeddings[:, 0] * 3.0).mean(), {}

    opts = {"max_steps": 1, "warmup_steps": 0, "wrap_objective": lambda o: PerSampleLoss(), "grad_clip": 1e9}
    whole = make_trainer(tiny_backbone, tmp_path / "whole", batch_size=4, **opts)
    split = make_trainer(tiny_backbone, tmp_path / "split", batch_size=2, grad_accum_steps=2, **opts)
    logs = {}
    for name, trainer in (("whole", whole), ("split", split)):
        trainer.fit()
        logs[name] = json.loads((tmp_path / name / "metrics.jsonl").read_text().splitlines()[0])
    assert logs["split"]["loss"] == pytest.approx(logs["whole"]["loss"], abs=1e-6)
    assert logs["split"]["grad_norm"] == pytest.approx(logs["whole"]["grad_norm"], rel=1e-5)


def test_resume_extends_schedule_with_new_max_steps(tmp_path, tiny_backbone):
    """Raising max_steps on a finished run follows the new cosine from the checkpoint's step."""
    make_trainer(tiny_backbone, tmp_path, max_steps=6).fit()
    extended = make_trainer(tiny_backbone, tmp_path, max_steps=12, lr=2e-3)
    result = extended.fit()
    assert result.step == 12 and len(result.losses) == 6
    lrs = {r["step"]: r["lr"] for r in map(json.loads, (tmp_path / "metrics.jsonl").read_text().splitlines())}
    schedule = WarmupCosine(warmup_steps=2, total_steps=12, min_lr_ratio=0.0)  # step s trains at lr(s - 1)
    assert [lrs[s] for s in range(7, 13)] == pytest.approx([2e-3 * schedule(s - 1) for s in range(7, 13)], rel=1e-9)
    assert min(lrs[s] for s in range(7, 13)) > 0
    for group in extended.optimizer.param_groups:
        assert group["initial_lr"] == 2e-3


def test_rerunning_a_finished_run_says_there_is_nothing_to_train(tmp_path, tiny_backbone, caplog):
    make_trainer(tiny_backbone, tmp_path, max_steps=3).fit()
    again = make_trainer(tiny_backbone, tmp_path, max_steps=3)
    with caplog.at_level(logging.WARNING, logger="omniclip.trainer"):
        result = again.fit()
    assert result.step == 3 and result.losses == []
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [
        f"nothing to train: {tmp_path} is at step 3 of trainer.max_steps=3 (raise trainer.max_steps to train on, "
        "or choose another output_dir for a new run)"]


@pytest.mark.parametrize("change, keys", [
    ({"batch_size": 2}, ["trainer.batch_size: 4 -> 2"]),
    ({"seed": 3}, ["trainer.seed: 0 -> 3"]),
    ({"lens_cfg": {"depth": 2}}, ["model.lens.depth: 1 -> 2"]),
])
def test_resume_refuses_changes_that_cannot_apply(tmp_path, tiny_backbone, change, keys):
    make_trainer(tiny_backbone, tmp_path, max_steps=3).fit()
    trainer = make_trainer(tiny_backbone, tmp_path, max_steps=6, **change)
    with pytest.raises(ConfigError) as error:
        trainer.fit()
    message = str(error.value)
    assert message.startswith("config `trainer.resume`: cannot resume ") and "start a new run" in message
    for key in keys:
        assert key in message


def test_resume_allows_bookkeeping_changes(tmp_path, tiny_backbone):
    make_trainer(tiny_backbone, tmp_path, max_steps=3).fit()
    result = make_trainer(tiny_backbone, tmp_path, max_steps=4, num_workers=2, log_every=2, checkpoint_every=1,
                          nonfinite="skip").fit()
    assert result.step == 4 and len(result.losses) == 1


def test_checkpoint_shape_mismatch_is_named(tmp_path, tiny_backbone):
    trainer = make_trainer(tiny_backbone, tmp_path, max_steps=1, warmup_steps=0)
    trainer.fit()
    weights = trainer.trainable_weights()
    key = next(k for k, v in weights.items() if v.ndim == 2)
    bad = {**weights, key: torch.zeros(weights[key].shape[0] + 1, weights[key].shape[1])}
    with pytest.raises(ConfigError, match=rf"shape \(checkpoint vs model\) \['{re.escape(key)} "):
        make_trainer(tiny_backbone, tmp_path / "other", max_steps=1, warmup_steps=0)._load_weights(bad)


def test_bad_samples_stop_or_skip(tmp_path, tiny_backbone):
    dataset_cfg = {"size": 12, "bad": (1, 5)}
    with pytest.raises(Exception, match=r"toy/(1|5)\.bin: corrupt on purpose"):
        make_trainer(tiny_backbone, tmp_path / "stop", dataset_cfg, max_steps=3).fit()
    result = make_trainer(tiny_backbone, tmp_path / "skip", dataset_cfg, max_steps=3, bad_samples="skip",
                          max_skip_fraction=0.5).fit()
    assert result.step == 3 and result.skipped_samples == 2


class _NonFiniteGradient(torch.autograd.Function):
    """Identity forward (the loss stays finite), a gradient full of ``fill`` backward."""

    @staticmethod
    def forward(ctx, x, fill):
        ctx.fill = fill
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return torch.full_like(grad, ctx.fill), None


class _Sabotage(torch.nn.Module):
    """Makes the loss (``target="loss"``) or the gradients non-finite at the chosen steps."""

    def __init__(self, objective, bad_steps, target="loss", fill=float("nan")):
        super().__init__()
        self.inner, self.calls, self.bad_steps, self.target, self.fill = objective, 0, bad_steps, target, fill

    def forward(self, embeddings, batch):
        self.calls += 1
        bad = self.calls in self.bad_steps
        if bad and self.target == "gradients":
            embeddings = _NonFiniteGradient.apply(embeddings, self.fill)
        loss, logs = self.inner(embeddings, batch)
        return (loss * self.fill if bad and self.target == "loss" else loss), logs


@pytest.mark.parametrize("target", ["loss", "gradients"])
def test_nonfinite_policy(tmp_path, tiny_backbone, target):
    """A NaN loss, or NaN gradients under a finite loss, stop the run or skip the update."""
    trainer = make_trainer(tiny_backbone, tmp_path / "stop", wrap_objective=lambda o: _Sabotage(o, {2}, target))
    with pytest.raises(NonFiniteLossError, match=f"non-finite {target} at step 2"):
        trainer.fit()
    trainer = make_trainer(tiny_backbone, tmp_path / "skip", nonfinite="skip",
                           wrap_objective=lambda o: _Sabotage(o, {1}, target))
    weights_before = {k: v.clone() for k, v in trainer.trainable_weights().items()}
    result = trainer.fit(stop_at=1)
    assert result.skipped_steps == 1 and result.losses == []
    for key, value in trainer.trainable_weights().items():
        assert torch.equal(value, weights_before[key]), key


class _NormedModel(torch.nn.Module):
    """A lens model followed by BatchNorm, with NaN inputs to the norm at chosen calls."""

    def __init__(self, model, nan_calls):
        super().__init__()
        self.inner, self.nan_calls, self.calls = model, nan_calls, 0
        self.norm = torch.nn.BatchNorm1d(model.trunk.spec().embed_dim)

    def forward(self, batch):
        self.calls += 1
        embeddings = self.inner(batch)
        if self.calls in self.nan_calls:
            embeddings = embeddings * float("nan")
        return self.norm(embeddings)

    def trainable_state_dict(self):
        state = {f"inner.{k}": v for k, v in self.inner.trainable_state_dict().items()}
        state.update({f"norm.{k}": v.detach() for k, v in self.norm.state_dict().items()})
        return state


def test_skipped_step_leaves_norm_statistics_untouched(tmp_path, tiny_backbone):
    trainer = make_trainer(tiny_backbone, tmp_path, nonfinite="skip", max_steps=3)
    trainer.model = _NormedModel(trainer.model, nan_calls={2})
    trainer.trainable = type(trainer.trainable)(trainer.model, trainer.objective)
    trainer.optimizer = torch.optim.AdamW(trainer.trainable.parameters(), lr=1e-3)
    trainer.scheduler = torch.optim.lr_scheduler.LambdaLR(trainer.optimizer, lambda s: 1.0)
    trainer.fit(stop_at=1)
    after_one = {k: v.clone() for k, v in trainer.model.norm.state_dict().items()}
    result = trainer.fit(stop_at=2)
    assert result.skipped_steps == 1
    for key, value in trainer.model.norm.state_dict().items():
        assert torch.equal(value, after_one[key]), key  # the NaN forward left no trace
    trainer.fit()
    assert torch.isfinite(trainer.model.norm.running_var).all()
    assert not torch.equal(trainer.model.norm.running_mean, after_one["running_mean"])  # step 3 updated it


def test_consecutive_and_total_skip_caps(tmp_path, tiny_backbone):
    every = set(range(1, 50))
    trainer = make_trainer(tiny_backbone, tmp_path / "consecutive", nonfinite="skip", max_consecutive_nonfinite=3,
                           max_steps=10, wrap_objective=lambda o: _Sabotage(o, every))
    with pytest.raises(NonFiniteLossError, match=r"4 steps in a row .*trainer.max_consecutive_nonfinite=3"):
        trainer.fit()
    trainer = make_trainer(tiny_backbone, tmp_path / "total", nonfinite="skip", max_nonfinite_steps=2,
                           max_steps=10, wrap_objective=lambda o: _Sabotage(o, {1, 3, 5, 7}))
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss at step 5 \(loss nan\): 3 steps .*max_nonfinite_steps=2"):
        trainer.fit()


def test_absurd_lr_stops_and_never_checkpoints_non_finite_weights(tmp_path, tiny_backbone):
    trainer = make_trainer(tiny_backbone, tmp_path, nonfinite="skip", lr=1e10, max_steps=40, checkpoint_every=1,
                           max_consecutive_nonfinite=5)
    with pytest.raises(NonFiniteLossError):
        trainer.fit()
    from omniclip.state import latest_checkpoint, load_checkpoint

    latest = latest_checkpoint(tmp_path)
    if latest is not None:
        weights, _, _ = load_checkpoint(latest)
        assert all(torch.isfinite(v).all() for v in weights.values())


def test_save_refuses_non_finite_weights(tmp_path, tiny_backbone):
    trainer = make_trainer(tiny_backbone, tmp_path, max_steps=3)
    trainer.fit(stop_at=1)
    with torch.no_grad():
        next(p for p in trainer.model.lens.parameters()).fill_(float("inf"))
    with pytest.raises(NonFiniteWeightsError, match=r"not finite at step 1 \(model\.lens\..*not saved"):
        trainer.save()
    from omniclip.state import latest_checkpoint, load_checkpoint

    weights, _, _ = load_checkpoint(latest_checkpoint(tmp_path))  # the step-1 checkpoint fit() wrote
    assert all(torch.isfinite(v).all() for v in weights.values())


def test_fp16_overflow_is_skipped_by_the_grad_scaler_and_resumes_with_its_scale(tmp_path, tiny_backbone):
    opts = {"precision": "fp16", "max_steps": 4, "checkpoint_every": 2}
    trainer = make_trainer(tiny_backbone, tmp_path, wrap_objective=lambda o: _Sabotage(o, {1}, "gradients", float("inf")),
                           **opts)
    start_scale = trainer.scaler.get_scale()
    before = {k: v.clone() for k, v in trainer.trainable_weights().items()}
    trainer.fit(stop_at=1)
    assert trainer.scaler.get_scale() == start_scale / 2 and trainer.skipped_steps == 0
    for key, value in trainer.trainable_weights().items():
        assert torch.equal(value, before[key]), key
    trainer.fit(stop_at=2)
    assert any(not torch.equal(v, before[k]) for k, v in trainer.trainable_weights().items())
    resumed = make_trainer(tiny_backbone, tmp_path, wrap_objective=lambda o: _Sabotage(o, set()), **opts)
    resumed.resume()
    assert resumed.scaler.get_scale() == trainer.scaler.get_scale()


def test_bf16_autocast_on_cpu(tmp_path, tiny_backbone):
    dtypes = []
    trainer = make_trainer(tiny_backbone, tmp_path / "bf16", precision="bf16", max_steps=3)
    linear = next(m for n, m in trainer.model.trunk.named_modules() if "mlp" in n and isinstance(m, torch.nn.Linear))
    handle = linear.register_forward_hook(lambda m, i, out: dtypes.append(out.dtype))
    bf16 = trainer.fit().losses
    handle.remove()
    fp32 = make_trainer(tiny_backbone, tmp_path / "fp32", max_steps=3).fit().losses
    assert dtypes and set(dtypes) == {torch.bfloat16}
    assert bf16 == pytest.approx(fp32, rel=5e-2) and bf16 != pytest.approx(fp32, rel=1e-7)


def test_ctrl_c_saves_once_and_resumes_exactly(tmp_path, tiny_backbone):
    class InterruptAt(torch.nn.Module):
        def __init__(self, objective, at):
            super().__init__()
            self.inner, self.calls, self.at = objective, 0, at

        def forward(self, embeddings, batch):
            self.calls += 1
            if self.calls == self.at:
                os.kill(os.getpid(), signal.SIGINT)  # arrives mid-step, like a Ctrl-C
            return self.inner(embeddings, batch)

    opts = {"lens_cfg": DROPOUT, "max_steps": 6, "checkpoint_every": 100}
    full = make_trainer(tiny_backbone, tmp_path / "full", wrap_objective=lambda o: InterruptAt(o, 0), **opts).fit()
    trainer = make_trainer(tiny_backbone, tmp_path / "part", wrap_objective=lambda o: InterruptAt(o, 3), **opts)
    # Not always default_int_handler: a shell starting pytest in the background leaves SIGINT ignored.
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt, match="stopped by SIGINT at step 3"):
        trainer.fit()
    assert signal.getsignal(signal.SIGINT) is before  # handlers put back
    assert sorted(p.name for p in (tmp_path / "part" / "checkpoints").glob("step_*")) == ["step_00000003"]
    first = [json.loads(line)["loss"] for line in (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()]
    second = make_trainer(tiny_backbone, tmp_path / "part", wrap_objective=lambda o: InterruptAt(o, 0), **opts).fit()
    assert first + second.losses == pytest.approx(full.losses, abs=1e-6)


class _RecordBatches(torch.nn.Module):
    def __init__(self, objective, seen):
        super().__init__()
        self.inner, self.seen = objective, seen

    def forward(self, embeddings, batch):
        self.seen.append(list(batch["sample_keys"]))
        return self.inner(embeddings, batch)


def test_batches_that_lost_samples_are_refilled_and_resume_exactly(tmp_path, tiny_backbone):
    opts = {"dataset_cfg": {"size": 12, "bad": (1, 2, 3, 5)}, "bad_samples": "skip", "max_skip_fraction": 0.5,
            "max_steps": 6, "checkpoint_every": 100, "lens_cfg": DROPOUT}
    seen: list = []
    full_trainer = make_trainer(tiny_backbone, tmp_path / "full", wrap_objective=lambda o: _RecordBatches(o, seen),
                                **opts)
    full = full_trainer.fit()
    assert all(len(keys) == 4 for keys in seen) and len(seen) == 6
    trained = [index for keys in seen for _, index in keys]
    assert not {1, 2, 3, 5} & set(trained)
    order = [int(i) for e in range(3) for i in full_trainer.sampler.rank_indices(e) if int(i) not in {1, 2, 3, 5}]
    assert trained == order[:24]  # every good sample once per epoch, in the sampler's order, none dropped
    part = make_trainer(tiny_backbone, tmp_path / "part", **opts)
    first = part.fit(stop_at=3)
    part.save()
    assert part._carry is not None  # the checkpoint holds a partial batch
    second = make_trainer(tiny_backbone, tmp_path / "part", **opts).fit()
    assert first.losses + second.losses == pytest.approx(full.losses, abs=1e-6)


def test_progress_lines_and_eval_results_are_logged_without_a_progress_bar(tmp_path, tiny_backbone, caplog):
    trainer = make_trainer(tiny_backbone, tmp_path, max_steps=4, log_every=2, eval_every=4,
                           evaluators={"toyset": lambda model: {"top1": 12.5}})
    with caplog.at_level("INFO", logger="omniclip.trainer"):
        result = trainer.fit()
    lines = [r.getMessage() for r in caplog.records if r.name == "omniclip.trainer"]
    steps = [line for line in lines if line.startswith("step ")]
    assert [line.split("  ")[0] for line in steps] == ["step 2/4", "step 4/4"]
    assert f"loss {result.losses[1]:.4f}" in steps[0] and " samples/s" in steps[0] and "lr " in steps[0]
    assert "eval toyset at step 4: top1 12.5" in lines


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_on_cuda_trains_and_resumes_exactly(tmp_path, precision):
    """The CPU tests above on a GPU: autocast dtype inside the trunk, finite losses close to fp32,
    and (fp16) the GradScaler's scale restored on resume."""
    from omniclip.backbone import load_backbone
    from omniclip.distributed import DistEnv

    env = DistEnv(rank=0, local_rank=0, world_size=1, backend=None, device=torch.device("cuda"))

    def cuda_trainer(out, **overrides):
        backbone = load_backbone("omniclip-tiny", device="cuda")
        torch.manual_seed(0)
        modality = ToyModality()
        model, _ = build_lens_model(modality, backbone.trunk(unlocked_blocks=1), lens_cfg=DROPOUT)
        objective = ContrastiveObjective(AnchorStore(backbone), LogitScale(backbone.logit_scale, learnable=True))
        cfg = TrainerConfig(**{"max_steps": 6, "batch_size": 4, "lr": 1e-3, "warmup_steps": 2, "num_workers": 0,
                               "checkpoint_every": 3, "log_every": 1, "progress_bar": False, "tensorboard": False,
                               **overrides})
        return Trainer(cfg, model, objective, modality.build_dataset({"size": 12}, "train"), modality.collate, out,
                       env=env)

    dtypes = []
    trainer = cuda_trainer(tmp_path / "amp", precision=precision)
    linear = next(m for n, m in trainer.model.trunk.named_modules() if "mlp" in n and isinstance(m, torch.nn.Linear))
    linear.register_forward_hook(lambda m, i, out: dtypes.append(out.dtype))
    amp = trainer.fit().losses
    assert set(dtypes) == {torch.bfloat16 if precision == "bf16" else torch.float16}
    fp32 = cuda_trainer(tmp_path / "fp32").fit().losses
    assert all(math.isfinite(x) for x in amp) and amp == pytest.approx(fp32, rel=5e-2)
    part = cuda_trainer(tmp_path / "part", precision=precision)
    first = part.fit(stop_at=3)
    resumed = cuda_trainer(tmp_path / "part", precision=precision)
    second = resumed.fit()
    assert first.losses + second.losses == pytest.approx(amp, abs=1e-5)
    assert resumed.scaler.get_scale() == trainer.scaler.get_scale()
