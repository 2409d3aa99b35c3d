"""Video models train through the one trainer: class-level loss against the model's own text side,
which may train; each trained tensor is the model's and is checkpointed once."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from omniclip.backbone import load_backbone
from omniclip.losses import LogitScale
from omniclip.modality import default_collate
from omniclip.prompts import TextPrompts, add_vision_prompts
from omniclip.text_trunk import TextTrunk
from omniclip.trainer import Trainer, TrainerConfig
from omniclip.video_model import VideoClipModel
from omniclip.video_objective import ClassObjective, ClassText

CLASSES = ["archery", "bowling", "juggling balls"]


class Clips(Dataset):
    """Clips whose colour says the class: frames [T, 3, 32, 32] with noise drawn per sample."""

    def __len__(self):
        return 12

    def __getitem__(self, index):
        label = index % len(CLASSES)
        frames = 0.3 * torch.randn(3, 3, 32, 32)
        frames[:, label] += 1.0
        return {"inputs": frames, "label": label, "path": f"clip_{index}.mp4"}


def bridge_and_prompt(backbone):
    trunk = backbone.trunk()
    add_vision_prompts(trunk, num_tokens=2, depth=2)
    text = TextTrunk(backbone.model)
    prompts = TextPrompts(text, backbone.tokenizer, init="a photo of a", depth=2)
    model = VideoClipModel(trunk, text, text_prompts=prompts)
    return model, ClassObjective(ClassText(CLASSES, model), LogitScale(backbone.logit_scale))


def make_trainer(backbone, out, model_and_objective, **overrides):
    model, objective = model_and_objective
    cfg = TrainerConfig(**{"max_steps": 6, "batch_size": 4, "lr": 1e-2, "warmup_steps": 1, "num_workers": 0,
                           "checkpoint_every": 3, "log_every": 1, "progress_bar": False, "tensorboard": False,
                           **overrides})
    return Trainer(cfg, model, objective, Clips(), default_collate, out)


def test_class_objective_equals_hand_computed_cross_entropy(tiny_backbone):
    text = TextTrunk(tiny_backbone.model)
    model = VideoClipModel(tiny_backbone.trunk(), text, tokenizer=tiny_backbone.tokenizer)
    objective = ClassObjective(ClassText(CLASSES, model), LogitScale(50.0), label_smoothing=0.1)
    video = F.normalize(torch.randn(4, text.text_projection.shape[1]), dim=-1)
    with torch.no_grad():
        classes = F.normalize(tiny_backbone.model.encode_text(tiny_backbone.tokenizer(CLASSES)), dim=-1)
        logits = 50.0 * video @ classes.T
        labels = torch.tensor([0, 2, 1, 2])
        smooth = torch.full((4, 3), 0.1 / 3) + 0.9 * F.one_hot(labels, 3)
        expected = -(smooth * logits.log_softmax(-1)).sum(-1).mean()
        loss, logs = objective(video, {"labels": labels})
        torch.testing.assert_close(loss, expected, rtol=0, atol=1e-5)
        soft = torch.tensor([[0.7, 0.3, 0.0], [0.0, 0.2, 0.8], [0.5, 0.5, 0.0], [0.0, 0.0, 1.0]])
        loss, _ = objective(video, {"labels": soft})  # mixup / cutmix targets (then smoothed)
        smoothed = 0.9 * soft + 0.1 / 3
        torch.testing.assert_close(loss, -(smoothed * logits.log_softmax(-1)).sum(-1).mean(), rtol=0, atol=1e-5)
    assert set(logs) == {"class/loss", "class/acc"}


def test_bridge_and_prompt_trains_only_the_prompts_and_resumes_exactly(tmp_path):
    backbone = load_backbone("omniclip-tiny")
    frozen = {k: v.clone() for k, v in backbone.model.state_dict().items()}
    torch.manual_seed(0)
    full_trainer = make_trainer(backbone, tmp_path / "full", bridge_and_prompt(backbone))
    trainable = set(full_trainer.trainable_weights())
    # the deep text prompt is hooked into the text tower too: it is saved once, under the prompts
    assert trainable == {"model.trunk.block_hooks.0.tokens", "model.trunk.block_hooks.1.tokens",
                         "model.text_prompts.context", "model.text_prompts.deep.1.tokens"}
    assert not list(full_trainer.objective.class_text.parameters())  # the objective refers to the model's
    full = full_trainer.fit()
    assert sum(full.losses[-2:]) < sum(full.losses[:2])
    for key, value in backbone.model.state_dict().items():
        assert torch.equal(value, frozen[key]), key  # the towers never change
    torch.manual_seed(0)
    first = make_trainer(backbone, tmp_path / "part", bridge_and_prompt(backbone)).fit(stop_at=4)
    torch.manual_seed(0)
    resumed = make_trainer(backbone, tmp_path / "part", bridge_and_prompt(backbone))
    second = resumed.fit()
    assert first.losses + second.losses == pytest.approx(full.losses, abs=1e-6)
    for key, value in full_trainer.trainable_weights().items():
        torch.testing.assert_close(resumed.trainable_weights()[key], value, rtol=0, atol=1e-6)


def test_full_finetune_trains_both_towers_as_copies(tmp_path):
    backbone = load_backbone("omniclip-tiny")
    trunk = backbone.trunk(unlocked_blocks=2, unlock_class_token=True, unlock_positional_embedding=True)
    text = TextTrunk(backbone.model, unlocked_blocks=-1)
    model = VideoClipModel(trunk, text, tokenizer=backbone.tokenizer)
    objective = ClassObjective(ClassText(CLASSES, model, template="a photo of a {}."),
                               LogitScale(backbone.logit_scale))
    trainer = make_trainer(backbone, tmp_path, (model, objective), lr=1e-3, max_steps=3)
    before = {k: v.clone() for k, v in trainer.trainable_weights().items()}
    assert any(k.startswith("model.text.blocks.") for k in before)
    assert "model.text.token_embedding.weight" in before
    assert not any(k.startswith("objective.") for k in before)  # the text side is saved once, as the model's
    trainer.fit()
    after = trainer.trainable_weights()
    changed = [k for k in before if "blocks.0.attn" in k]
    assert {k.split(".")[1] for k in changed} == {"trunk", "text"}
    assert all(not torch.equal(after[k], before[k]) for k in changed)
    # the class embeddings the objective trains against are the model's own, after training too
    with torch.no_grad():
        torch.testing.assert_close(objective.class_text(), model.class_embeddings(CLASSES, "a photo of a {}."))
        frozen = F.normalize(backbone.model.encode_text(backbone.tokenizer(
            [f"a photo of a {n}." for n in CLASSES])), dim=-1)
    assert (objective.class_text() - frozen).abs().max() > 1e-3


class _WithAux(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.inner = model

    def forward(self, batch):
        embeddings = self.inner(batch)
        return embeddings, {"align": 0.25 * embeddings.pow(2).sum(-1).mean()}  # = 0.25 for unit vectors


def test_auxiliary_losses_a_model_returns_are_added_and_logged(tmp_path):
    import json

    backbone = load_backbone("omniclip-tiny")
    model, objective = bridge_and_prompt(backbone)
    trainer = make_trainer(backbone, tmp_path, (_WithAux(model), objective), max_steps=1, warmup_steps=0)
    trainer.fit()
    record = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])
    assert record["aux/align"] == pytest.approx(0.25, abs=1e-6)
    assert record["loss"] == pytest.approx(record["class/loss"] + 0.25, abs=1e-5)
