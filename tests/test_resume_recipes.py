"""Resume is exact for real recipes whose forward draws random numbers.

Point clouds: the Point-BERT tokenizer draws its first FPS centre at random in training and the
lens has dropout. Audio: the fbank tokenizer applies SpecAugment in training mode. Each run is
stopped mid-epoch, rebuilt from the recipe as a new process would, and resumed; losses and final
trainable weights must equal those of a run that never stopped.
"""

from __future__ import annotations

import pytest
import torch
from hydra import compose, initialize_config_module

from omniclip.train import build_trainer
from tests.modalities.audio.test_datasets import make_audioset
from tests.modalities.pointcloud.test_datasets import make_ulip_shapenet

DROPOUT = ["lens.attn_dropout=0.1", "lens.ff_dropout=0.1"]


def _trainer(overrides: list[str]):
    with initialize_config_module("omniclip.recipes", version_base="1.3"):
        cfg = compose("train", overrides)
    trainer, _, _ = build_trainer(cfg)
    return trainer


def assert_resume_exact(tmp_path, overrides: list[str], stop_at: int) -> None:
    common = [*overrides, f"anchors.cache_dir={tmp_path / 'anchors'}", "trainer.checkpoint_every=100"]
    full = _trainer([*common, f"output_dir={tmp_path / 'full'}"])
    full_losses = full.fit().losses
    first = _trainer([*common, f"output_dir={tmp_path / 'part'}"]).fit(stop_at=stop_at)
    torch.manual_seed(1234)  # as a new process would start
    resumed = _trainer([*common, f"output_dir={tmp_path / 'part'}"])
    second = resumed.fit()
    assert len(first.losses) == stop_at and len(first.losses) + len(second.losses) == len(full_losses)
    assert first.losses + second.losses == pytest.approx(full_losses, abs=1e-6)
    a, b = full.trainable_weights(), resumed.trainable_weights()
    assert set(a) == set(b)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=key)
    # and the forward really is random: two training-mode forwards of one batch differ
    batch = next(full._batches())
    full.trainable.train()
    with torch.no_grad():
        assert (full.model(batch) - full.model(batch)).abs().max() > 1e-5


@pytest.mark.parametrize("num_workers", [0, 2])
def test_pointcloud_random_fps_and_dropout_resume_exactly(tmp_path, num_workers):
    shapenet = make_ulip_shapenet(tmp_path / "shapenet-55")  # 12 clouds: 3 batches of 4 per epoch
    assert_resume_exact(tmp_path, [
        "experiment=pointcloud/vitlens_l_shapenet", "debug=default", f"data.train.root={shapenet}",
        "data.train.num_points=48", "data.train.min_points=8", "modality.tokenizer.num_groups=16",
        "modality.tokenizer.group_size=8", "trainer.max_steps=5", f"trainer.num_workers={num_workers}",
        "eval=none", *DROPOUT,
    ], stop_at=4)


def test_audio_specaugment_resume_exactly(tmp_path):
    audioset = make_audioset(tmp_path / "audioset")  # 4 clips: 2 batches of 2 per epoch
    assert_resume_exact(tmp_path, [
        "experiment=audio/vitlens_l_audioset", "debug=default", f"data.train.root={audioset}",
        "data.train.segments=[balanced_train_segments.csv]", "data.train.clip_seconds=0.5",
        "modality.tokenizer.num_mel_bins=64", "modality.tokenizer.target_frames=64", "trainer.batch_size=2",
        "trainer.max_steps=5", "eval=none",
    ], stop_at=3)
