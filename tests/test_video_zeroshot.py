"""`omniclip-zeroshot` on video models (tiny backbone, generated PyAV videos): a trained run's export
(`<run>/video`, rebuilt from its config and loaded strictly), a published ViFi-CLIP file and a
published ILA file (state dicts in the published layouts, built as tests/test_vificlip.py and
tests/test_ila.py build them). Each JSON result must equal a hand computation from the model's
own embeddings; a broken export or a missing file fails at once, naming it."""

from __future__ import annotations

import json
import time

import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf
from safetensors.torch import load_file, save_file

from omniclip import train, zeroshot
from omniclip.backbone import load_backbone
from omniclip.errors import CheckpointMismatchError, ConfigError
from omniclip.evaluation import score_metrics
from omniclip.modality import get_modality
from tests import test_ila, test_vificlip
from tests.modalities.video import layouts

CLASSES = ["abseiling", "air drumming", "answering questions", "applauding"]  # K400 labels 0..3
#: Unequal classes: when the tiny random CLIP puts every video in one class (it nearly does), top-1
#: still says which class that is, so results from two classifiers can be told apart.
LABELS = torch.tensor([0, 0, 0, 0, 1, 1, 2, 3])
#: Seeds the noise that moves a trained text side (below): one where its classifier and the frozen
#: tower's rank the classes differently for every experiment tested.
NOISE_SEED = 1


@pytest.fixture(scope="module")
def k400(tmp_path_factory):
    """A Kinetics-400 `path label` list of 8 tiny videos with labels `LABELS`."""
    root = tmp_path_factory.mktemp("k400")
    lines = []
    for index in range(8):
        layouts.video(root / "videos" / f"clip_{index}.mp4", frames=6 + 3 * index)  # unequal: different frames
        lines.append(f"clip_{index}.mp4 {int(LABELS[index])}")
    (root / "train.txt").write_text("\n".join(lines) + "\n")
    return root


def eval_overrides(k400, frames: int, clips: int) -> list[str]:
    task = "eval.tasks.kinetics400"
    return ["eval=kinetics400", f"{task}.dataset.root={k400}", f"{task}.dataset.list_file=train.txt",
            f"{task}.dataset.num_frames={frames}", f"{task}.dataset.size=32", f"{task}.dataset.num_clips={clips}",
            f"{task}.dataset.num_crops=1", f"+{task}.dataset.class_subset=[{','.join(CLASSES)}]"]


def zeroshot_cfg(tmp_path, checkpoint, k400, *overrides: str, frames: int = 4, clips: int = 2):
    with initialize_config_module("omniclip.recipes", version_base="1.3"):
        return compose("zeroshot", [f"checkpoint={checkpoint}", "device=cpu", "num_workers=0",
                                    f"anchors.cache_dir={tmp_path / 'anchors'}", f"output={tmp_path / 'zs.json'}",
                                    *eval_overrides(k400, frames, clips), *overrides])


def eval_views(cfg):
    """The evaluation dataset's videos, each [V, T, 3, H, W], as the command reads them."""
    task = OmegaConf.to_container(cfg.eval.tasks.kinetics400, resolve=True)
    dataset = zeroshot.task_dataset(get_modality("video"), task, "eval.tasks.kinetics400")
    return [dataset[i]["inputs"] for i in range(len(dataset))]


def fused(cosines_per_video: list[torch.Tensor], scale: float) -> torch.Tensor:
    """ViFi-CLIP's multi-view test: per video, the mean over views of softmax(scale * cosines)."""
    return torch.stack([(scale * c).softmax(-1).mean(0) for c in cosines_per_video])


def written_metrics(tmp_path) -> dict:
    (record,) = json.loads((tmp_path / "zs.json").read_text())
    assert record["dataset"] == "kinetics400" and record["modality"] == "video"
    return record["metrics"]


# ------------------------------------------------------------------ a run's export
def train_and_export(tmp_path, k400, experiment: str):
    with initialize_config_module("omniclip.recipes", version_base="1.3"):
        cfg = compose("train", [
            f"experiment=video/{experiment}", "debug=default", f"data.train.root={k400}", "data.train.num_frames=4",
            "data.train.size=32", "data.train.short_side=40", f"output_dir={tmp_path / 'run'}",
            f"anchors.cache_dir={tmp_path / 'anchors'}", "trainer.max_steps=2", "trainer.grad_accum_steps=1"])
    trainer, model, model_cfg = train.build_trainer(cfg)
    trainer.fit()
    # Two steps barely move the text side; moved far, its classifier ranks classes unlike the frozen
    # tower's, so a zero-shot that scored against the frozen tower could not match by chance.
    generator = torch.Generator().manual_seed(NOISE_SEED)
    with torch.no_grad():
        for name, tensor in model.trainable_state_dict().items():
            if name.startswith(("text.", "text_prompts.")) and tensor.is_floating_point():
                tensor.add_(tensor.std() * torch.randn(tensor.shape, generator=generator))
    export = get_modality("video").export_model(model, trainer.objective, model_cfg, tmp_path / "run")
    return model.eval(), export


@pytest.mark.parametrize("experiment", ["vificlip_bridge_prompt_debug", "vificlip_k400"])
def test_a_trained_runs_export_scores_as_the_trained_model(tmp_path, k400, experiment):
    model, export = train_and_export(tmp_path, k400, experiment)
    cfg = zeroshot_cfg(tmp_path, export, k400)
    zeroshot.run(cfg)
    backbone = load_backbone("omniclip-tiny")
    with torch.no_grad():
        classes = model.class_embeddings(CLASSES)  # the trained text side: prompts, or the trained tower
        cosines = [model.encode(views) @ classes.T for views in eval_views(cfg)]
        frozen = F.normalize(backbone.model.encode_text(backbone.tokenizer(CLASSES)), dim=-1)
    hand = score_metrics(fused(cosines, backbone.logit_scale), LABELS)
    assert written_metrics(tmp_path) == pytest.approx(hand)
    # ... and the frozen tower's classifier gives other results: the check above can tell them apart
    with torch.no_grad():
        wrong = score_metrics(fused([model.encode(v) @ frozen.T for v in eval_views(cfg)], backbone.logit_scale), LABELS)
    assert wrong != pytest.approx(hand)
    assert all(c.shape == (2, 4) for c in cosines)  # two views per video were fused


def test_a_broken_export_is_refused_naming_every_key(tmp_path, k400):
    _, export = train_and_export(tmp_path, k400, "vificlip_bridge_prompt_debug")
    weights = load_file(str(export / "weights.safetensors"))
    del weights["model.text_prompts.context"]
    weights["model.text_prompts.extra"] = torch.zeros(2)
    save_file(weights, str(export / "weights.safetensors"))
    with pytest.raises(CheckpointMismatchError, match=r"weights\.safetensors does not match the model") as error:
        zeroshot.run(zeroshot_cfg(tmp_path, export, k400))
    assert "missing (1):\n  text_prompts.context" in str(error.value)
    assert "unexpected (1):\n  text_prompts.extra" in str(error.value)
    (export / "weights.safetensors").unlink()
    with pytest.raises(ConfigError, match=r"weights\.safetensors: missing") as error:
        zeroshot.run(zeroshot_cfg(tmp_path, export, k400))
    assert error.value.key == "checkpoint" and "\n" not in str(error.value)


# ------------------------------------------------------------------ published checkpoints
def test_a_published_vificlip_file_scores_as_its_towers(tmp_path, k400):
    source = test_vificlip.fresh_backbone(noise=0.05)
    path = tmp_path / "vifi_clip_k400.pth"
    torch.save({"model": test_vificlip.published_state(source), "epoch": 9, "config": test_vificlip.YacsLikeConfig()},
               path)
    cfg = zeroshot_cfg(tmp_path, path, k400, "checkpoint_format=vificlip", "backbone_name=omniclip-tiny",
                       "trust_pickle=true")
    zeroshot.run(cfg)
    base, clip = test_vificlip.fresh_backbone(), source.model
    with torch.no_grad():  # by hand from the source towers; the word embedding is the base CLIP's
        ids = base.tokenizer(CLASSES)
        x = base.model.token_embedding(ids) + clip.positional_embedding
        x = clip.ln_final(clip.transformer(x, attn_mask=clip.attn_mask))
        classes = F.normalize(x[torch.arange(4), ids.argmax(-1)] @ clip.text_projection, dim=-1)
        cosines = []
        for views in eval_views(cfg):
            frames = torch.stack([clip.encode_image(views[:, t]) for t in range(views.shape[1])], dim=1)
            cosines.append(F.normalize(frames.mean(1), dim=-1) @ classes.T)
    hand = score_metrics(fused(cosines, float(clip.logit_scale.exp())), LABELS)
    assert written_metrics(tmp_path) == pytest.approx(hand, abs=1e-4)


def test_a_published_ila_file_scores_through_its_per_video_class_text(tmp_path, k400):
    template = load_backbone("omniclip-tiny")
    state = test_ila.published_checkpoint(template.model, test_ila.HIDDEN, test_ila.T, torch.Generator().manual_seed(6))
    path = tmp_path / "ila_b16_3f.pth"
    torch.save({"model": state, "epoch": 29, "config": test_vificlip.YacsLikeConfig()}, path)
    cfg = zeroshot_cfg(tmp_path, path, k400, "checkpoint_format=ila", "backbone_name=omniclip-tiny",
                       "trust_pickle=true", frames=test_ila.T, clips=2)
    zeroshot.run(cfg)
    clip = template.model
    clip.load_state_dict({k: state[k] for k in clip.state_dict()})
    with torch.no_grad():  # the reference computation, from the published tensors
        text = clip.encode_text(template.tokenizer(CLASSES))  # raw features: the prompts read them
        cosines = []
        for views in eval_views(cfg):
            video, context = test_ila.ref_video(state, views, heads=2)
            classes = F.normalize(test_ila.ref_prompts(state, text, context, heads=1), dim=-1)
            cosines.append(torch.einsum("ve,vce->vc", F.normalize(video, dim=-1), classes))
    hand = score_metrics(fused(cosines, 30.0), LABELS)  # the checkpoint's logit scale
    assert written_metrics(tmp_path) == pytest.approx(hand, abs=1e-4)
    # views of one video share no class embeddings to average: only score fusion applies
    with pytest.raises(ConfigError, match="use `view_fusion: scores`"):
        zeroshot.run(zeroshot_cfg(tmp_path, path, k400, "checkpoint_format=ila", "backbone_name=omniclip-tiny",
                                  "trust_pickle=true", "eval.tasks.kinetics400.view_fusion=embeddings",
                                  frames=test_ila.T, clips=2))


def test_a_missing_published_file_fails_at_once_on_one_line(tmp_path, k400, monkeypatch):
    def no_backbone(*args, **kwargs):
        raise AssertionError("nothing may load before the checkpoint is found")

    monkeypatch.setattr("omniclip.backbone.load_backbone", no_backbone)
    start = time.perf_counter()
    for fmt in ("vificlip", "ila"):
        with pytest.raises(ConfigError, match=r"nope\.pth: no such file") as error:
            zeroshot.run(zeroshot_cfg(tmp_path, tmp_path / "nope.pth", k400, f"checkpoint_format={fmt}"))
        assert error.value.key == "checkpoint" and "\n" not in str(error.value)
    with pytest.raises(ConfigError, match=r"`onnx` is not one of export, vificlip, ila"):
        zeroshot.run(zeroshot_cfg(tmp_path, tmp_path / "nope.pth", k400, "checkpoint_format=onnx"))
    assert time.perf_counter() - start < 10


def test_frames_the_model_cannot_read_are_refused_naming_the_key(tmp_path, k400):
    """Training and zero-shot stop before any step, naming the key to set: frames of another size
    than the image tower reads, and (ILA, whose MIT learned a position per frame) another count."""
    from omniclip.errors import ConfigError

    with initialize_config_module("omniclip.recipes", version_base="1.3"):
        cfg = compose("train", [
            "experiment=video/ila_debug", "debug=default", f"data.train.root={k400}", "data.train.num_frames=4",
            f"output_dir={tmp_path / 'run'}", f"anchors.cache_dir={tmp_path / 'anchors'}"])  # size stays 224
    with pytest.raises(ConfigError, match=r"is 224, but the model's image tower reads 32-px frames: "
                                          r"set data.train.size=32") as error:
        train.build_trainer(cfg)
    assert error.value.key == "data.train.size"
    _, export = train_and_export(tmp_path, k400, "ila_debug")  # 4 frames
    with pytest.raises(ConfigError, match=r"is 8, but this model learned positions for 4 frames") as error:
        zeroshot.run(zeroshot_cfg(tmp_path, export, k400, frames=8))
    assert error.value.key == "eval.tasks.kinetics400.dataset.num_frames"
    with pytest.raises(ConfigError) as error:
        zeroshot.run(zeroshot_cfg(tmp_path, export, k400, "eval.tasks.kinetics400.dataset.size=64"))
    assert error.value.key == "eval.tasks.kinetics400.dataset.size"
