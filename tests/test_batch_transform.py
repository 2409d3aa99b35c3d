"""The trainer's batch-transform hook, with the video modality's mixup / cutmix.

The transform runs on every micro-batch after it reaches the device and draws from a generator
the trainer owns and checkpoints: what is asserted is that batches really are transformed (soft
targets, a mixed batch recomputed by hand from the same generator state), once per micro-batch
under accumulation, that a run stopped mid-epoch resumes to the same losses and weights as one
that never stopped (0 and 2 workers), and that the checkpoint holds the generator's state.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf
from torch import nn
from torch.utils.data import Dataset

from omniclip.errors import ConfigError
from omniclip.losses import ClassificationLoss
from omniclip.modalities.video.batch_transforms import build_batch_transform
from omniclip.modalities.video.mixing import MixOptions, MixupCutmix, smooth_one_hot
from omniclip.modality import Modality
from omniclip.state import latest_checkpoint, load_checkpoint
from omniclip.trainer import Trainer, TrainerConfig
from tests.toy_modality import ToyModality

CLASSES = ["run", "jump", "swim", "climb"]
CLIP_SHAPE = (2, 3, 8, 8)  # [T, 3, H, W]
MIXING = MixOptions(num_classes=len(CLASSES))  # ViFi-CLIP's: mixup 0.8, cutmix 1.0, switch 0.5, smoothing 0.1


class ClipDataset(Dataset):
    """Random clips whose mean encodes the class; module level so that workers can unpickle it."""

    class_names = CLASSES

    def __init__(self, size: int = 12) -> None:
        self.size = size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> dict[str, Any]:
        label = index % len(CLASSES)
        clip = torch.randn(CLIP_SHAPE) + label  # random: the loader's per-sample seeding is exercised
        return {"inputs": clip, "label": label, "path": f"clip_{index}.mp4"}


def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    return {"inputs": torch.stack([s["inputs"] for s in samples]),
            "labels": torch.tensor([s["label"] for s in samples]),
            "paths": [s["path"] for s in samples]}


class TinyVideoModel(nn.Module):
    """Clip -> embedding, recording every batch its forward sees."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(int(torch.tensor(CLIP_SHAPE).prod()), 16)
        self.seen: list[dict[str, torch.Tensor]] = []

    def forward(self, batch: dict[str, Any]) -> torch.Tensor:
        self.seen.append({"inputs": batch["inputs"].detach().clone(), "labels": batch["labels"].clone()})
        return self.proj(batch["inputs"].flatten(1))


class ClassHead(nn.Module):
    """Cross-entropy against learned class embeddings; integer labels or soft targets."""

    def __init__(self) -> None:
        super().__init__()
        self.classes = nn.Parameter(torch.randn(len(CLASSES), 16))
        self.loss = ClassificationLoss()

    def forward(self, embeddings: torch.Tensor, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        features = nn.functional.normalize(embeddings, dim=-1)
        return self.loss(features, nn.functional.normalize(self.classes, dim=-1), batch["labels"], 10.0)


class RecordingTransform:
    """Wraps a transform, keeping what went in and what came out of each call."""

    def __init__(self, inner: MixupCutmix) -> None:
        self.inner = inner
        self.calls: list[tuple[dict[str, Any], dict[str, Any]]] = []

    def __call__(self, batch: dict[str, Any], generator: torch.Generator) -> dict[str, Any]:
        out = self.inner(batch, generator)
        self.calls.append(({k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in batch.items()}, out))
        return out


def make_trainer(out_dir: Path, transform: Any = None, **overrides: Any) -> Trainer:
    torch.manual_seed(0)
    cfg = TrainerConfig(**{"max_steps": 7, "batch_size": 4, "lr": 1e-2, "warmup_steps": 1, "num_workers": 0,
                           "checkpoint_every": 100, "log_every": 1, "progress_bar": False, "tensorboard": False,
                           **overrides})
    return Trainer(cfg, TinyVideoModel(), ClassHead(), ClipDataset(), collate, out_dir, batch_transform=transform)


def assert_same_weights(a: Trainer, b: Trainer) -> None:
    wa, wb = a.trainable_weights(), b.trainable_weights()
    assert set(wa) == set(wb) and wa
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], rtol=0, atol=1e-6, msg=key)


# ------------------------------------------------------------------------------- the hook


def test_the_model_sees_mixed_clips_and_soft_targets(tmp_path):
    trainer = make_trainer(tmp_path, MixupCutmix(MIXING), max_steps=2)
    plain = make_trainer(tmp_path / "plain", max_steps=2)
    trainer.fit()
    plain.fit()
    for mixed, raw in zip(trainer.model.seen, plain.model.seen):
        labels = mixed["labels"]
        assert labels.dtype == torch.float32 and labels.shape == (4, len(CLASSES))
        torch.testing.assert_close(labels.sum(1), torch.ones(4))
        assert bool((labels >= MIXING.smoothing / len(CLASSES) - 1e-6).all())
        assert raw["labels"].dtype == torch.int64  # the same batch untransformed
        assert not torch.allclose(mixed["inputs"], raw["inputs"])


def test_a_mixed_batch_equals_its_hand_computation_from_the_generator_state(tmp_path):
    """mixup only (cutmix 0): the weight is Beta(0.8, 0.8) from two Gammas, then a permutation."""
    opts = MixOptions(num_classes=len(CLASSES), mixup_alpha=0.8, cutmix_alpha=0.0, smoothing=0.1)
    trainer = make_trainer(tmp_path / "mixed", MixupCutmix(opts), max_steps=2)
    state = trainer.batch_generator.get_state()
    raw = next(make_trainer(tmp_path / "raw")._batches())  # same seed: the same first batch
    trainer.fit()
    generator = torch.Generator()
    generator.set_state(state)
    gammas = torch._standard_gamma(torch.full((2,), 0.8), generator=generator)
    weight = float(gammas[0] / gammas.sum())
    perm = torch.randperm(4, generator=generator)
    assert 0.0 < weight < 1.0 and not torch.equal(perm, torch.arange(4))
    smooth = smooth_one_hot(raw["labels"], len(CLASSES), 0.1)
    seen = trainer.model.seen[0]
    torch.testing.assert_close(seen["inputs"], weight * raw["inputs"] + (1 - weight) * raw["inputs"][perm])
    torch.testing.assert_close(seen["labels"], weight * smooth + (1 - weight) * smooth[perm])


def test_the_generator_is_seeded_from_the_trainer_seed(tmp_path):
    a, b = make_trainer(tmp_path / "a"), make_trainer(tmp_path / "b")
    c = make_trainer(tmp_path / "c", seed=1)
    assert torch.equal(a.batch_generator.get_state(), b.batch_generator.get_state())
    assert not torch.equal(a.batch_generator.get_state(), c.batch_generator.get_state())
    # and not the sampler's stream: the trainer seed alone would replay the epoch permutation
    assert not torch.equal(a.batch_generator.get_state(), torch.Generator().manual_seed(0).get_state())


def test_accumulation_transforms_each_micro_batch_in_turn(tmp_path):
    transform = RecordingTransform(MixupCutmix(MIXING))
    trainer = make_trainer(tmp_path, transform, batch_size=2, grad_accum_steps=3, max_steps=2)
    state = trainer.batch_generator.get_state()
    trainer.fit()
    assert len(transform.calls) == 6  # 2 steps x 3 micro-batches
    generator = torch.Generator()
    generator.set_state(state)
    for (raw, out), seen in zip(transform.calls, trainer.model.seen, strict=True):
        assert raw["inputs"].shape[0] == 2 and out["labels"].shape == (2, len(CLASSES))
        expected = MixupCutmix(MIXING)(raw, generator)  # the draws continue from micro-batch to micro-batch
        torch.testing.assert_close(seen["inputs"], expected["inputs"])
        torch.testing.assert_close(seen["labels"], expected["labels"])


# ------------------------------------------------------------------------------- resume


@pytest.mark.parametrize("num_workers", [0, 2])
def test_resume_mid_epoch_with_mixing_equals_the_uninterrupted_run(tmp_path, num_workers):
    """Epochs of 3 steps; stopped at step 4, so the resumed run starts inside the second epoch.
    Without the generator's state in the checkpoint the resumed run would mix its batches with
    the seed's first draws again, and its losses would differ."""
    opts = {"num_workers": num_workers, "max_steps": 7}
    full_trainer = make_trainer(tmp_path / "full", MixupCutmix(MIXING), **opts)
    full = full_trainer.fit()
    first = make_trainer(tmp_path / "part", MixupCutmix(MIXING), **opts).fit(stop_at=4)
    torch.manual_seed(999)  # as a new process would start
    resumed = make_trainer(tmp_path / "part", MixupCutmix(MIXING), **opts)
    second = resumed.fit()
    assert len(first.losses) == 4 and len(second.losses) == 3
    assert first.losses + second.losses == pytest.approx(full.losses, abs=1e-6)
    assert_same_weights(resumed, full_trainer)
    unmixed = make_trainer(tmp_path / "unmixed", **opts).fit()
    assert unmixed.losses[4:] != pytest.approx(full.losses[4:], abs=1e-3)  # mixing did change the losses


def test_resume_with_mixing_under_accumulation(tmp_path):
    opts = {"batch_size": 2, "grad_accum_steps": 2, "max_steps": 5}
    full = make_trainer(tmp_path / "full", MixupCutmix(MIXING), **opts).fit()
    first = make_trainer(tmp_path / "part", MixupCutmix(MIXING), **opts).fit(stop_at=2)
    second = make_trainer(tmp_path / "part", MixupCutmix(MIXING), **opts).fit()
    assert first.losses + second.losses == pytest.approx(full.losses, abs=1e-6)


def test_the_checkpoint_holds_the_generator_state(tmp_path):
    trainer = make_trainer(tmp_path, MixupCutmix(MIXING))
    initial = trainer.batch_generator.get_state()
    trainer.fit(stop_at=2)
    _, state, _ = load_checkpoint(latest_checkpoint(tmp_path))
    saved = state["batch_transform_rng"]
    assert len(saved) == 1  # one per rank
    assert torch.equal(saved[0], trainer.batch_generator.get_state())
    assert not torch.equal(saved[0], initial)  # two batches were mixed since the seed
    resumed = make_trainer(tmp_path, MixupCutmix(MIXING))
    assert torch.equal(resumed.batch_generator.get_state(), initial)
    resumed.resume()
    assert torch.equal(resumed.batch_generator.get_state(), saved[0])


# ------------------------------------------------------------------------------- wiring


def test_build_trainer_hands_the_modality_transform_to_the_trainer(tmp_path, monkeypatch):
    from omniclip.train import build_trainer

    recipes = f"hydra.searchpath=[file://{Path(__file__).parent / 'recipes'}]"
    with initialize_config_module("omniclip.recipes", version_base="1.3"):
        cfg = compose("train", [recipes, "modality=toy", "data=toy", "debug=default",
                                f"output_dir={tmp_path / 'run'}", f"anchors.cache_dir={tmp_path / 'anchors'}"])
    assert Modality().build_batch_transform(cfg) is None
    plain, _, _ = build_trainer(cfg)
    assert plain.batch_transform is None  # the toy modality keeps the default

    asked: list[tuple[Any, Any]] = []
    sentinel = RecordingTransform(MixupCutmix(MIXING))

    def build(self: ToyModality, recipe: Any, dataset: Any = None) -> RecordingTransform:
        asked.append((recipe, dataset))
        return sentinel

    monkeypatch.setattr(ToyModality, "build_batch_transform", build)
    trainer, _, _ = build_trainer(cfg)
    assert trainer.batch_transform is sentinel
    (recipe, dataset), = asked
    assert recipe is cfg and len(dataset) == len(trainer.loader.dataset)


# ------------------------------------------------------------------------------- the video builder


def _recipe(mixing: Any = None, loss_smoothing: float = 0.0, with_mixing: bool = True) -> Any:
    data: dict[str, Any] = {"train": {"name": "list"}}
    if with_mixing:
        data["mixing"] = mixing
    return OmegaConf.create({"data": data, "loss": {"label_smoothing": loss_smoothing}})


def test_video_builder_defaults_are_vificlips_and_null_means_off():
    dataset = ClipDataset()
    assert build_batch_transform(_recipe(with_mixing=False), dataset) is None
    assert build_batch_transform(_recipe(None), dataset) is None
    transform = build_batch_transform(_recipe({}), dataset)
    assert isinstance(transform, MixupCutmix)
    assert transform.opts == MixOptions(num_classes=4, mixup_alpha=0.8, cutmix_alpha=1.0, switch_prob=0.5,
                                        smoothing=0.1)
    partial = build_batch_transform(_recipe({"cutmix": 0, "label_smoothing": 0}, loss_smoothing=0.1), dataset)
    assert partial.opts == MixOptions(num_classes=4, mixup_alpha=0.8, cutmix_alpha=0.0, smoothing=0.0)


@pytest.mark.parametrize("mixing, loss_smoothing, key", [
    ({"mixpu": 0.8}, 0.0, "data.mixing.mixpu"),
    ({"switch_prob": 2}, 0.0, "data.mixing.switch_prob"),
    ({"mixup": -1}, 0.0, "data.mixing.mixup"),
    ({"label_smoothing": 1.0}, 0.0, "data.mixing.label_smoothing"),
    ({"cutmix": "yes"}, 0.0, "data.mixing.cutmix"),
    ({}, 0.1, "data.mixing.label_smoothing"),  # smoothed twice
    ([0.8], 0.0, "data.mixing"),
])
def test_video_builder_errors_name_the_recipe_key(mixing, loss_smoothing, key):
    with pytest.raises(ConfigError) as info:
        build_batch_transform(_recipe(mixing, loss_smoothing), ClipDataset())
    assert info.value.key == key


def test_video_builder_needs_the_training_classes():
    with pytest.raises(ConfigError) as info:
        build_batch_transform(_recipe({}), dataset=None)
    assert info.value.key == "data.train.classes"


def test_the_vificlip_recipe_mixes_as_vificlip_does():
    """The K400 full fine-tune mixes (mixup 0.8 / cutmix 1.0, smoothing in the targets only), through
    the video modality's hook; ``data.mixing=null`` turns it off."""
    from omniclip import get_modality

    with initialize_config_module("omniclip.recipes", version_base="1.3"):
        cfg = compose("train", ["experiment=video/vificlip_k400"])
    transform = get_modality("video").build_batch_transform(cfg, ClipDataset())
    assert transform.opts == MixOptions(num_classes=4, mixup_alpha=0.8, cutmix_alpha=1.0, switch_prob=0.5,
                                        smoothing=0.1)
    assert cfg.loss.label_smoothing == 0.0
    with initialize_config_module("omniclip.recipes", version_base="1.3"):
        cfg = compose("train", ["experiment=video/vificlip_k400", "data.mixing=null", "loss.label_smoothing=0.1"])
    assert get_modality("video").build_batch_transform(cfg, ClipDataset()) is None
