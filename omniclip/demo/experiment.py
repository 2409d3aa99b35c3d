"""Train a lens on the seen classes with the framework's trainer, score zero-shot on all classes, and
report the scores (summary, markdown table, confusion plot); shared by the 3D and the audio demo."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from omniclip.anchors import AnchorStore
from omniclip.backbone import ClipBackbone
from omniclip.demo.dataset import PairedDataset, PairedSet
from omniclip.evaluation import build_classifier, collect_embeddings
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
    text_weight: float = 1.0  # captions of the training samples
    image_weight: float = 1.0  # the frozen CLIP embedding of each sample's own image
    patch_weight: float = 0.0  # lens tokens fitted to the ViT's patch embeddings of that image (`PatchAnchored`)


def pick_preset(name: str, base: Any, quick: Any, study: Any) -> Any:
    """The demo config of preset ``name``: ``quick`` (a smoke test of the whole pipeline),
    ``default`` (``base``) or ``study`` (every held-out split)."""
    presets = {"quick": quick, "default": base, "study": study}
    if name not in presets:
        raise ValueError(f"unknown preset `{name}` (quick, default, study)")
    return presets[name]


def train_lens(model: LensModel, backbone: ClipBackbone, train: Dataset, cfg: LensTrainConfig,
               out_dir: str | Path, seed: int) -> dict[str, Any]:
    """Fit ``model`` on ``train`` (sample dicts with ``text`` and ``image`` anchors, e.g. a
    `PairedDataset`) with `Trainer` + `ContrastiveObjective` (temperature = the CLIP's own)."""
    objective = ContrastiveObjective(
        AnchorStore(backbone), LogitScale(backbone.logit_scale), text_weight=cfg.text_weight,
        image_weight=cfg.image_weight,
    )
    trainer_cfg = TrainerConfig(
        max_steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr, warmup_steps=cfg.warmup_steps,
        weight_decay=cfg.weight_decay, num_workers=0, seed=seed, checkpoint_every=cfg.steps, keep_last=1,
        log_every=max(cfg.steps // 10, 1), resume="never", tensorboard=False, progress_bar=False,
    )
    trained: torch.nn.Module = model
    if cfg.patch_weight > 0:
        from omniclip.demo.lens import PatchAnchored
        from omniclip.trunk import ViTTrunk

        trained = PatchAnchored(model, ViTTrunk(backbone.visual), cfg.patch_weight)
    trainer = Trainer(trainer_cfg, trained, objective, train, default_collate, out_dir)
    start = time.perf_counter()
    result = trainer.fit()
    tail = result.losses[-max(len(result.losses) // 10, 1) :]
    return {"seconds": round(time.perf_counter() - start, 1), "final_loss": sum(tail) / len(tail)}


def embed(model: LensModel, samples: PairedSet, batch_size: int = 128) -> Tensor:
    """Normalised lens embeddings [N, E] of every sample (eval mode: no augmentation)."""
    batches = [
        {"inputs": samples.inputs[i : i + batch_size], "labels": samples.labels[i : i + batch_size]}
        for i in range(0, len(samples), batch_size)
    ]
    embeddings, _ = collect_embeddings(model, batches, "cpu")
    return embeddings


def embed_clouds(model: LensModel, shapes: PairedSet, batch_size: int = 128) -> Tensor:
    """`embed` of point clouds with a fixed first FPS centre (the tokenizer's is random otherwise)."""
    tokenizer = model.tokenizer
    if not hasattr(tokenizer, "fps_start"):
        return embed(model, shapes, batch_size)  # a projection has no random start
    previous, tokenizer.fps_start = tokenizer.fps_start, 0
    try:
        return embed(model, shapes, batch_size)
    finally:
        tokenizer.fps_start = previous


def run_split(backbone: ClipBackbone, classes: Sequence[str], prompts: Sequence[str], held_out: Sequence[int],
              split_name: str, train: PairedSet, test: PairedSet, variants: Sequence[str],
              build: Callable[[str], LensModel], embed_fn: Callable[[LensModel, PairedSet], Tensor],
              cfg: LensTrainConfig, out_dir: Path, seed: int, report: Callable[[str], None]) -> dict[str, Any]:
    """Train ``build(variant)`` for every variant on ``train`` (the seen classes of one split) and score
    it, and the image tower on the test samples' own images, zero-shot on ``test`` (all classes)."""
    classifier = build_classifier(backbone.encode_text, classes, prompts)
    mask = held_out_mask(len(classes), held_out)
    with torch.no_grad():
        image_tower = backbone.encode_image(test.images)
    record: dict[str, Any] = {
        "held_out": [classes[c] for c in held_out],
        # What a perfect lens would reach: the image tower on the test samples' own images.
        "image_tower": evaluate(image_tower, test.labels, classifier, mask),
        "variants": {},
    }
    for variant in variants:
        model = build(variant)
        training = train_lens(model, backbone, PairedDataset(train), cfg, out_dir / f"lens-{split_name}-{variant}",
                              seed)
        result = evaluate(embed_fn(model, test), test.labels, classifier, mask)
        result["train"] = training
        record["variants"][variant] = result
        report(f"  held out {split_name:>32}  {variant:>10}: held-out {result['raw']['held_out']:.3f} raw, "
               f"{result['calibrated']['held_out']:.3f} calibrated; seen {result['raw']['seen']:.3f}  "
               f"({training['seconds']:.0f} s)")
    return record


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


METRICS = ("all", "seen", "held_out", "held_out_among_held_out")
VARIANT_LABELS = {
    "vit": "lens -> frozen pretrained ViT",
    "random_vit": "control: lens -> frozen random ViT",
    "no_vit": "control: lens pooled, no ViT",
}


def summarise(splits: list[dict[str, Any]], variants: Sequence[str]) -> dict[str, Any]:
    """Mean over splits of every metric, per variant (and for the image tower), raw and calibrated."""
    rows = {v: [s["variants"][v] for s in splits] for v in variants}
    rows["image_tower"] = [s["image_tower"] for s in splits]
    return {
        name: {
            mode: {m: sum(r[mode][m] for r in records) / len(records) for m in METRICS}
            for mode in ("raw", "calibrated")
        }
        for name, records in rows.items()
    }


def output_folder(out: str | None, name: str, quick: bool) -> Path:
    """``--out``, else ``<name>-out``, or ``<name>-quick`` for a smoke test: a ``--quick`` run never
    overwrites a full run's results or cached models."""
    return Path(out or f"{name}-{'quick' if quick else 'out'}")


#: Printed first and last by every demo's ``--quick``.
SMOKE_TEST = "SMOKE TEST (--quick): tiny sizes, a few steps; the numbers mean nothing"


def versions() -> dict[str, str]:
    """The versions a demo's numbers were measured with (saved in ``results.json``)."""
    import platform

    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__}


def results_record(classes: Sequence[str], splits: list[dict[str, Any]], variants: Sequence[str],
                   clip_info: dict[str, Any], seconds: dict[str, float], config: dict[str, Any]) -> dict[str, Any]:
    """What a demo writes to ``results.json``: chance, the CLIP's record, every split and their mean."""
    num_classes = len(classes)
    return {
        "classes": list(classes),
        "chance": {"all": 1 / num_classes, "seen": 1 / num_classes, "held_out": 1 / num_classes,
                   "held_out_among_held_out": 1 / len(splits[0]["held_out"])},
        "clip": clip_info,
        "variants": list(variants),
        "splits": splits,
        "summary": summarise(splits, variants),
        "seconds": seconds,
        "config": config,
        "versions": versions(),
    }


def markdown_table(results: dict[str, Any], images: str) -> str:
    """Mean accuracies over the splits, calibrated (see `prior_matching_bias`) and raw, chance in the
    first row; ``images`` names what the image tower reads (``renderings``, ``spectrograms``)."""
    chance, summary = results["chance"], results["summary"]
    labels = {**VARIANT_LABELS, "image_tower": f"reference: CLIP image tower on {images}"}
    lines = [
        (f"| model (mean of {len(results['splits'])} held-out split(s)) | all classes | seen | held-out "
         "| held-out (raw) | seen (raw) | held-out among held-out |"),
        "|---|---|---|---|---|---|---|",
        (f"| chance | {chance['all']:.2f} | {chance['seen']:.2f} | {chance['held_out']:.2f} "
         f"| {chance['held_out']:.2f} | {chance['seen']:.2f} | {chance['held_out_among_held_out']:.2f} |"),
    ]
    for name in [*results["variants"], "image_tower"]:
        cal, raw = summary[name]["calibrated"], summary[name]["raw"]
        lines.append(f"| {labels[name]} | {cal['all']:.2f} | {cal['seen']:.2f} | {cal['held_out']:.2f} "
                     f"| {raw['held_out']:.2f} | {raw['seen']:.2f} | {cal['held_out_among_held_out']:.2f} |")
    return "\n".join(lines)


def plot_confusion(split: dict[str, Any], classes: Sequence[str], variants: Sequence[str], path: Path,
                   task: str) -> None:
    """One calibrated confusion matrix (row-normalised) per variant, held-out classes starred;
    ``task`` titles the figure (``3D``, ``sound``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [f"{c}*" if c in split["held_out"] else c for c in classes]
    fig, axes = plt.subplots(1, len(variants), figsize=(4.6 * len(variants), 4.6), squeeze=False)
    for ax, variant in zip(axes[0], variants):
        result = split["variants"][variant]["calibrated"]
        counts = torch.tensor(result["confusion"], dtype=torch.float32)
        rates = counts / counts.sum(dim=1, keepdim=True).clamp(min=1)
        ax.imshow(rates.numpy(), cmap="Blues", vmin=0, vmax=1)
        ax.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
        ax.set_yticks(range(len(names)), names, fontsize=7)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"{variant} (calibrated): held-out {result['held_out']:.2f}, seen {result['seen']:.2f}",
                     fontsize=9)
    fig.suptitle(f"zero-shot {task} classification (* = held out of lens training)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
