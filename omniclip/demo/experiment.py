"""Train a lens on the seen classes with the framework's trainer, then score zero-shot on all classes."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor

from omniclip.anchors import AnchorStore
from omniclip.backbone import ClipBackbone
from omniclip.demo.dataset import ShapeDataset, ShapeSet
from omniclip.evaluation import collect_embeddings
from omniclip.losses import LogitScale
from omniclip.metrics import confusion_matrix
from omniclip.modality import default_collate
from omniclip.model import LensModel
from omniclip.objective import ContrastiveObjective
from omniclip.trainer import Trainer, TrainerConfig


@dataclass(frozen=True)
class LensTrainConfig:
    steps: int = 300
    batch_size: int = 32
    lr: float = 1e-3
    warmup_steps: int = 30
    weight_decay: float = 0.05
    text_weight: float = 1.0  # captions of the training shapes
    image_weight: float = 1.0  # the frozen CLIP embedding of each cloud's own rendering


def train_lens(model: LensModel, backbone: ClipBackbone, train: ShapeSet, cfg: LensTrainConfig,
               out_dir: str | Path, seed: int) -> dict[str, Any]:
    """Fit ``model`` with `Trainer` + `ContrastiveObjective` (temperature = the CLIP's own)."""
    objective = ContrastiveObjective(
        AnchorStore(backbone), LogitScale(backbone.logit_scale), text_weight=cfg.text_weight,
        image_weight=cfg.image_weight,
    )
    trainer_cfg = TrainerConfig(
        max_steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr, warmup_steps=cfg.warmup_steps,
        weight_decay=cfg.weight_decay, num_workers=0, seed=seed, checkpoint_every=cfg.steps, keep_last=1,
        log_every=max(cfg.steps // 10, 1), resume="never", tensorboard=False, progress_bar=False,
    )
    trainer = Trainer(trainer_cfg, model, objective, ShapeDataset(train), default_collate, out_dir)
    start = time.perf_counter()
    result = trainer.fit()
    tail = result.losses[-max(len(result.losses) // 10, 1) :]
    return {"seconds": round(time.perf_counter() - start, 1), "final_loss": sum(tail) / len(tail)}


def embed_clouds(model: LensModel, shapes: ShapeSet, batch_size: int = 128) -> Tensor:
    """Normalised lens embeddings [N, E] of every cloud, with a fixed first FPS centre."""
    batches = [
        {"inputs": shapes.points[i : i + batch_size], "labels": shapes.labels[i : i + batch_size]}
        for i in range(0, len(shapes), batch_size)
    ]
    tokenizer = model.tokenizer
    previous, tokenizer.fps_start = tokenizer.fps_start, 0
    try:
        embeddings, _ = collect_embeddings(model, batches, "cpu")
    finally:
        tokenizer.fps_start = previous
    return embeddings


def prior_matching_bias(logits: Tensor, held_out: Tensor) -> float:
    """The score bonus for held-out classes that makes them win a held-out share of the predictions.

    Calibrated stacking (Chao et al., 2016) with its one constant chosen without labels: a lens
    trained on the seen classes scores them too high, so held-out classes get a bonus ``b`` such
    that the fraction of samples predicted as held-out equals their fraction of the classes
    (the evaluation set is class-balanced). A sample goes to a held-out class exactly when its
    best seen score minus its best held-out score is below ``b``, so ``b`` is a quantile of that
    margin.
    """
    margin = logits[:, ~held_out].amax(dim=1) - logits[:, held_out].amax(dim=1)
    share = held_out.float().mean()
    ordered = margin.sort().values
    k = int(round(float(share) * len(ordered)))
    if k <= 0:
        return float(ordered[0]) - 1e-6
    if k >= len(ordered):
        return float(ordered[-1]) + 1e-6
    return float((ordered[k - 1] + ordered[k]) / 2)


def score(logits: Tensor, labels: Tensor, held_out: Tensor) -> dict[str, Any]:
    """Accuracies (0-1) over all classes, on seen and on held-out samples, and the confusion matrix.

    ``held_out`` [C] marks the classes the lens never saw. ``held_out`` accuracy classifies
    held-out samples among all classes; ``held_out_among_held_out`` only among the held-out
    classes (chance 1 / number held out).
    """
    predictions = logits.argmax(dim=1)
    hit = predictions == labels
    unseen = held_out[labels]
    position = torch.cumsum(held_out.long(), 0) - 1  # of each held-out class among the held-out ones
    among = logits[:, held_out].argmax(dim=1) == position[labels]
    return {
        "all": hit.float().mean().item(),
        "seen": hit[~unseen].float().mean().item(),
        "held_out": hit[unseen].float().mean().item(),
        "held_out_among_held_out": among[unseen].float().mean().item(),
        "confusion": confusion_matrix(predictions, labels, logits.shape[1]).tolist(),
    }


def evaluate(embeddings: Tensor, labels: Tensor, classifier: Tensor, held_out: Tensor) -> dict[str, Any]:
    """Raw and prior-calibrated scores of normalised embeddings against a text classifier."""
    logits = embeddings @ classifier.T
    bias = prior_matching_bias(logits, held_out)
    return {
        "raw": score(logits, labels, held_out),
        "calibrated": {**score(logits + bias * held_out.float(), labels, held_out), "bias": bias},
    }


def held_out_mask(num_classes: int, held_out: Sequence[int]) -> Tensor:
    mask = torch.zeros(num_classes, dtype=torch.bool)
    mask[list(held_out)] = True
    return mask
