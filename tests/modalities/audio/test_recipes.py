"""Every audio experiment in debug mode on CPU: train a few steps, then zero-shot classification
(ESC-50 top-1, AudioSet mAP) and retrieval (Clotho, AudioCaps) from the exported lens.

Data paths point at mini datasets in the published layouts; clips are shortened to 0.5 s (64 x 64
fbank), and the tiny CLIP of ``debug=default`` replaces ViT-L/14, so the lens sizes itself from
the trunk.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from omniclip import train, zeroshot
from omniclip.modalities.audio.datasets import esc50_class_names
from tests.modalities.audio.test_datasets import make_audiocaps, make_audioset, make_clotho, make_esc50, make_vggsound
from tests.zeroshot_reference import assert_matches_reference, designed_labels, reference_scores

SHORT = "clip_seconds=0.5"


def train_debug(tmp_path, experiment: str, overrides: list[str]):
    with initialize_config_module("omniclip.recipes", version_base="1.3"):
        cfg = compose("train", [f"experiment=audio/{experiment}", "debug=default", f"output_dir={tmp_path / 'run'}",
                                f"anchors.cache_dir={tmp_path / 'anchors'}", "trainer.max_steps=2",
                                "trainer.batch_size=2", "eval=none", "modality.tokenizer.num_mel_bins=64",
                                "modality.tokenizer.target_frames=64", *overrides])
    result = train.run(cfg)
    assert result.step == 2 and len(result.losses) == 2 and all(loss == loss for loss in result.losses)
    lens_dir = tmp_path / "run" / "lens"
    config = json.loads((lens_dir / "config.json").read_text())
    assert config["modality"] == "audio" and config["backbone"]["name"] == "omniclip-tiny"
    assert config["lens"]["latent_dim"] == 64 and config["lens"]["num_latents"] == 16  # sized from the trunk
    assert config["trunk"]["unlock_class_token"] is True
    return lens_dir


def compose_zeroshot(tmp_path, lens_dir, eval_name: str, overrides: list[str]):
    with initialize_config_module("omniclip.recipes", version_base="1.3"):
        return compose("zeroshot", [f"eval={eval_name}", f"checkpoint={lens_dir}", "num_workers=0",
                                    f"anchors.cache_dir={tmp_path / 'anchors'}", *overrides])


def zero_shot(tmp_path, lens_dir, eval_name: str, overrides: list[str]):
    """Run ``omniclip-zeroshot``; every reported metric must equal an independent computation
    from the lens's own embeddings (clips averaged per file, prompts per class)."""
    cfg = compose_zeroshot(tmp_path, lens_dir, eval_name, overrides)
    results = zeroshot.run(cfg)
    tasks = OmegaConf.to_container(cfg.eval, resolve=True)["tasks"]
    for result in results:
        assert_matches_reference(result, lens_dir, tasks[result.dataset])
    return results


def relabel_esc50(src: Path, dst: Path, targets: list[int]) -> Path:
    """A copy of an ESC-50 root whose rows (same order, same audio) carry ``targets``."""
    names = esc50_class_names()
    with (src / "meta" / "esc50.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(targets)
    (dst / "meta").mkdir(parents=True)
    (dst / "audio").mkdir()
    for row, target in zip(rows, targets):
        fold, clip_id, take = row["filename"].split("-")[:3]
        name = f"{fold}-{clip_id}-{take}-{target}.wav"
        shutil.copy(src / "audio" / row["filename"], dst / "audio" / name)
        row.update(filename=name, target=str(target), category=names[target].replace(" ", "_"))
    with (dst / "meta" / "esc50.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return dst


def task(name: str, root, *extra: str) -> list[str]:
    prefix = f"eval.tasks.{name}.dataset"
    return [f"{prefix}.root={root}", f"{prefix}.{SHORT}", *(f"{prefix}.{e}" for e in extra)]


def test_vitlens_l_audioset_then_esc50_and_audioset(tmp_path):
    audioset = make_audioset(tmp_path / "audioset")
    esc = make_esc50(tmp_path / "esc")
    lens_dir = train_debug(tmp_path, "vitlens_l_audioset", [f"data.train.root={audioset}",
                                                            "data.train.segments=[balanced_train_segments.csv]",
                                                            f"data.train.{SHORT}"])
    (esc50,) = zero_shot(tmp_path, lens_dir, "esc50", task("esc50", esc))
    assert esc50.dataset == "esc50" and esc50.num_samples == 6
    # ESC-50 relabelled so that the answer is known: top-1 exactly 50 %, top-5 exactly 100 %.
    cfg = compose_zeroshot(tmp_path, lens_dir, "esc50", task("esc50", esc))
    scores = reference_scores(lens_dir, OmegaConf.to_container(cfg.eval, resolve=True)["tasks"]["esc50"])["scores"]
    known = relabel_esc50(esc, tmp_path / "esc_known", designed_labels(scores))
    (designed,) = zero_shot(tmp_path, lens_dir, "esc50", task("esc50", known))
    assert designed.metrics["top1"] == pytest.approx(50.0) and designed.metrics["top5"] == pytest.approx(100.0)
    (mean_ap,) = zero_shot(tmp_path, lens_dir, "audioset", task("audioset", audioset))
    assert mean_ap.num_samples == 4 and set(mean_ap.metrics) == {"mAP", "num_samples"}


def test_vitlens_l_audioset_vggsound_then_clotho_and_audiocaps_retrieval(tmp_path):
    audioset = make_audioset(tmp_path / "audioset")
    vgg = make_vggsound(tmp_path / "vgg")
    clotho = make_clotho(tmp_path / "clotho")
    audiocaps = make_audiocaps(tmp_path / "audiocaps")
    parts = "data.train.datasets"
    lens_dir = train_debug(tmp_path, "vitlens_l_audioset_vggsound", [
        f"{parts}.0.root={audioset}", f"{parts}.0.segments=[balanced_train_segments.csv]", f"{parts}.0.{SHORT}",
        f"{parts}.1.root={vgg}", f"{parts}.1.{SHORT}"])
    results = zero_shot(tmp_path, lens_dir, "clotho", task("clotho", clotho))
    results += zero_shot(tmp_path, lens_dir, "audiocaps", task("audiocaps", audiocaps))
    assert [(r.dataset, r.task, r.num_samples) for r in results] == [("clotho", "retrieval", 3),
                                                                      ("audiocaps", "retrieval", 2)]
    for result in results:  # 3 (2) items: R@5 is certain; R@1 matched the reference above
        assert result.metrics["text_to_item_R@5"] == 100


def test_published_settings_without_debug_compose():
    with initialize_config_module("omniclip.recipes", version_base="1.3"):
        cfg = compose("train", ["experiment=audio/vitlens_l_audioset"])
    assert cfg.backbone.name == "ViT-L-14" and cfg.backbone.pretrained == "datacomp_xl_s13b_b90k"
    assert cfg.modality.name == "audio" and cfg.modality.tokenizer.freq_mask == 12
    assert cfg.modality.tokenizer.time_mask == 48 and cfg.modality.tokenizer.target_frames == 512
    assert cfg.trunk.unlock_class_token and cfg.trainer.lr == pytest.approx(2e-4) and cfg.trainer.grad_accum_steps == 2
    assert cfg.data.train.mixup == 0.5 and list(cfg.data.train.segments) == ["balanced_train_segments.csv",
                                                                             "unbalanced_train_segments.csv"]
    assert list(cfg.eval.tasks) == ["esc50", "audioset", "clotho", "audiocaps"]
    assert [cfg.eval.tasks[t].dataset.num_clips for t in cfg.eval.tasks] == [2, 3, 6, 3]
    assert cfg.eval.tasks.audioset.dataset.segments == "eval_segments.csv"
    assert cfg.eval.tasks.clotho.type == "retrieval" and cfg.eval.tasks.audiocaps.type == "retrieval"
    with initialize_config_module("omniclip.recipes", version_base="1.3"):
        cfg = compose("train", ["experiment=audio/vitlens_l_audioset_vggsound"])
    assert cfg.data.train.name == "concat" and [d.name for d in cfg.data.train.datasets] == ["audioset", "vggsound"]
    assert cfg.trunk.unlock_class_token and cfg.name == "audio-vitlens_l_audioset_vggsound"
