import json

import pytest
import torch

from omniclip.anchors import AnchorStore
from omniclip.losses import LogitScale
from omniclip.model import build_lens_model
from omniclip.objective import ContrastiveObjective
from omniclip.trainer import NonFiniteLossError, Trainer, TrainerConfig
from tests.toy_modality import ToyModality


def make_trainer(backbone, out_dir, dataset_cfg=None, wrap_objective=None, **overrides):
    torch.manual_seed(0)
    modality = ToyModality()
    model, _ = build_lens_model(modality, backbone.trunk(unlocked_blocks=1))
    objective = ContrastiveObjective(AnchorStore(backbone), LogitScale(backbone.logit_scale, learnable=True))
    if wrap_objective is not None:
        objective = wrap_objective(objective)
    cfg = TrainerConfig(**{"max_steps": 6, "batch_size": 4, "lr": 1e-3, "warmup_steps": 2, "num_workers": 0,
                           "checkpoint_every": 3, "log_every": 1, "progress_bar": False, "tensorboard": False,
                           **overrides})
    dataset = modality.build_dataset(dataset_cfg or {"size": 12}, "train")
    return Trainer(cfg, model, objective, dataset, modality.collate, out_dir)


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


def test_resume_reproduces_uninterrupted_run(tmp_path, tiny_backbone):
    """A run stopped at step 3 and resumed gives the same losses as one that never stopped."""
    full = make_trainer(tiny_backbone, tmp_path / "full").fit()
    first = make_trainer(tiny_backbone, tmp_path / "killed").fit(stop_at=3)
    assert first.step == 3
    # a fresh process: different global RNG state, new model object
    torch.manual_seed(999)
    resumed = make_trainer(tiny_backbone, tmp_path / "killed")
    second = resumed.fit()
    assert second.step == 6
    assert first.losses + second.losses == pytest.approx(full.losses, abs=1e-6)
    a = make_trainer(tiny_backbone, tmp_path / "full").trainable_weights()
    assert set(a) == set(resumed.trainable_weights())


def test_resume_reproduces_with_accumulation_and_workers(tmp_path, tiny_backbone):
    opts = {"grad_accum_steps": 2, "num_workers": 2, "max_steps": 4, "checkpoint_every": 2}
    full = make_trainer(tiny_backbone, tmp_path / "full", **opts).fit()
    first = make_trainer(tiny_backbone, tmp_path / "part", **opts).fit(stop_at=2)
    second = make_trainer(tiny_backbone, tmp_path / "part", **opts).fit()
    assert first.losses + second.losses == pytest.approx(full.losses, abs=1e-6)


def test_bad_samples_stop_or_skip(tmp_path, tiny_backbone):
    dataset_cfg = {"size": 12, "bad": (1, 5)}
    with pytest.raises(Exception, match=r"toy/(1|5)\.bin: corrupt on purpose"):
        make_trainer(tiny_backbone, tmp_path / "stop", dataset_cfg, max_steps=3).fit()
    result = make_trainer(tiny_backbone, tmp_path / "skip", dataset_cfg, max_steps=3, bad_samples="skip",
                          max_skip_fraction=0.5).fit()
    assert result.step == 3 and result.skipped_samples == 2


class _NaNAfter(torch.nn.Module):
    def __init__(self, objective, bad_steps):
        super().__init__()
        self.inner, self.calls, self.bad_steps = objective, 0, bad_steps

    def forward(self, embeddings, batch):
        self.calls += 1
        loss, logs = self.inner(embeddings, batch)
        return (loss * float("nan") if self.calls in self.bad_steps else loss), logs


def test_nonfinite_loss_policy(tmp_path, tiny_backbone):
    trainer = make_trainer(tiny_backbone, tmp_path / "stop", wrap_objective=lambda o: _NaNAfter(o, {2}))
    with pytest.raises(NonFiniteLossError, match="non-finite loss at step 2"):
        trainer.fit()
    trainer = make_trainer(tiny_backbone, tmp_path / "skip", nonfinite="skip",
                           wrap_objective=lambda o: _NaNAfter(o, {1}))
    weights_before = {k: v.clone() for k, v in trainer.trainable_weights().items()}
    result = trainer.fit(stop_at=1)
    assert result.skipped_steps == 1 and result.losses == []
    for key, value in trainer.trainable_weights().items():
        assert torch.equal(value, weights_before[key]), key
