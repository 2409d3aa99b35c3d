"""Train a lens on the seen classes with the framework's trainer, score zero-shot on all classes, and
report the scores (summary, markdown table, confusion plot); shared by the 3D and the audio demo."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
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
from omniclip.trunk import ViTTrunk
from omniclip.demo.lens import PatchEmbeddingFit


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
    # Steps of `fit_tokens` before the contrastive training: the tokenizer alone regressed onto the
    # ViT's patch embeddings of the images, once per training set; every variant starts from it.
    token_fit_steps: int = 0
    token_fit_lr: float = 3e-3
    token_fit_depth: int = 0  # judge the fit after this many of the pretrained ViT's blocks (0: the patch embeddings)


def pick_preset(name: str, base: Any, quick: Any, study: Any) -> Any:
    """The demo config of preset ``name``: ``quick`` (a smoke test of the whole pipeline),
    ``default`` (``base``) or ``study`` (every held-out split)."""
    presets = {"quick": quick, "default": base, "study": study}
    if name not in presets:
        raise ValueError(f"unknown preset `{name}` (quick, default, study)")
    return presets[name]


def train_lens(model: LensModel, backbone: ClipBackbone, train: Dataset, cfg: LensTrainConfig,
               out_dir: str | Path, seed: int, label: str = "lens") -> dict[str, Any]:
    """Fit ``model`` on ``train`` (sample dicts with ``text`` and ``image`` anchors, e.g. a
    `PairedDataset`) with `Trainer` + `ContrastiveObjective` (temperature = the CLIP's own)."""
    objective = ContrastiveObjective(
        AnchorStore(backbone), LogitScale(backbone.logit_scale), text_weight=cfg.text_weight,
        image_weight=cfg.image_weight,
    )
    trainer_cfg = TrainerConfig(
        max_steps=cfg.steps, batch_size=min(cfg.batch_size, len(train)), lr=cfg.lr, warmup_steps=cfg.warmup_steps,
        weight_decay=cfg.weight_decay, num_workers=0, seed=seed, checkpoint_every=cfg.steps, keep_last=1,
        log_every=max(cfg.steps // 10, 1), resume="never", tensorboard=False, progress_bar=True,
        progress_label=label,
    )
    trained: torch.nn.Module = model
    if cfg.patch_weight > 0:
        from omniclip.demo.lens import PatchAnchored

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


class _Tokens(nn.Module):
    """The tokenizer and lens of a `LensModel` alone: the tokens a trunk would read."""

    def __init__(self, model: LensModel) -> None:
        super().__init__()
        self.tokenizer, self.lens = model.tokenizer, model.lens

    def forward(self, batch: dict[str, Any]) -> Tensor:
        return self.lens(self.tokenizer(batch["inputs"]))


def fit_tokens(model: LensModel, backbone: ClipBackbone, train: Dataset, cfg: LensTrainConfig, out_dir: str | Path,
               seed: int, label: str = "tokens") -> dict[str, Any]:
    """Regress ``model``'s tokenizer + lens onto the pretrained ViT's patch embeddings of each training
    sample's image (no trunk, no contrastive term) with `Trainer`: ``cfg.token_fit_steps`` steps at
    ``cfg.token_fit_lr``. Returns the fitted tokenizer + lens state and the fit's record.

    Done jointly with the contrastive loss, the fit stalls (on sounds, 0.2 of the targets' energy left
    after 400 steps: the trainer's gradient clipping lets the contrastive gradients crowd it out);
    alone it reaches 0.01 in 300 steps, on held-out classes too."""
    trainer_cfg = TrainerConfig(
        max_steps=cfg.token_fit_steps, batch_size=min(cfg.batch_size, len(train)), lr=cfg.token_fit_lr,
        warmup_steps=max(cfg.token_fit_steps // 10, 1), weight_decay=cfg.weight_decay, num_workers=0, seed=seed,
        checkpoint_every=cfg.token_fit_steps, keep_last=1, log_every=max(cfg.token_fit_steps // 10, 1),
        resume="never", tensorboard=False, progress_bar=True, progress_label=label,
    )
    tokens = _Tokens(model)
    objective = PatchEmbeddingFit(ViTTrunk(backbone.visual), cfg.token_fit_depth)
    trainer = Trainer(trainer_cfg, tokens, objective, train, default_collate, out_dir)
    start = time.perf_counter()
    result = trainer.fit()
    tail = result.losses[-max(len(result.losses) // 10, 1):]
    state = {k: v.detach().clone() for k, v in tokens.state_dict().items()}
    return {"state": state, "seconds": round(time.perf_counter() - start, 1), "final_mismatch": sum(tail) / len(tail)}


def subset_per_class(samples: PairedSet, per_class: int) -> PairedSet:
    """The first ``per_class`` samples of every class of ``samples`` (named apart, so that image
    anchors cached by key never mix sets): smaller training sets are nested in larger ones."""
    rank = torch.zeros_like(samples.labels)
    for label in samples.labels.unique():
        where = samples.labels == label
        rank[where] = torch.arange(int(where.sum()))
    keep = torch.nonzero(rank < per_class).squeeze(1)
    if per_class >= int(rank.max()) + 1:
        return samples
    return PairedSet(f"{samples.name}-{per_class}pc", samples.inputs[keep], samples.images[keep],
                     [samples.captions[i] for i in keep.tolist()], samples.labels[keep])


def run_split(backbone: ClipBackbone, classes: Sequence[str], prompts: Sequence[str], held_out: Sequence[int],
              split_name: str, train: PairedSet, test: PairedSet, variants: Sequence[str],
              build: Callable[[str], LensModel], embed_fn: Callable[[LensModel, PairedSet], Tensor],
              cfg: LensTrainConfig, out_dir: Path, seed: int, report: Callable[[str], None],
              lens_config: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train ``build(variant)`` for every variant on ``train`` (the seen classes of one split) and score
    it, and the image tower on the test samples' own images, zero-shot on ``test`` (all classes).

    Each trained lens is exported to ``lens-<split>-<variant>/lens`` with its config (`LensModel.save_lens`:
    ``lens_config`` plus the variant, split and training settings), so it can be loaded and reused."""
    classifier = build_classifier(backbone.encode_text, classes, prompts)
    mask = held_out_mask(len(classes), held_out)
    with torch.no_grad():
        image_tower = backbone.encode_image(test.images)
    per_class = len(train) // max(len(set(train.labels.tolist())), 1)
    record: dict[str, Any] = {
        "held_out": [classes[c] for c in held_out],
        "train_per_class": per_class,
        # What a perfect lens would reach: the image tower on the test samples' own images.
        "image_tower": evaluate(image_tower, test.labels, classifier, mask),
        "variants": {},
    }
    fitted = None
    if cfg.token_fit_steps > 0:
        fitted = fit_tokens(build(variants[0]), backbone, PairedDataset(train), cfg,
                            out_dir / f"tokens-{split_name}-{per_class}pc", seed,
                            label=f"tokens ({split_name}, {per_class}/class)")
        record["token_fit"] = {k: v for k, v in fitted.items() if k != "state"}
    for variant in variants:
        model = build(variant)
        if fitted is not None:
            _Tokens(model).load_state_dict(fitted["state"])
        folder = out_dir / f"lens-{split_name}-{per_class}pc-{variant}"
        training = train_lens(model, backbone, PairedDataset(train), cfg, folder, seed,
                              label=f"lens {variant} ({split_name}, {per_class}/class)")
        model.save_lens(folder / "lens", {**(lens_config or {}), "variant": variant, "held_out": record["held_out"],
                                          "train_per_class": per_class, "train": asdict(cfg), "seed": seed})
        result = evaluate(embed_fn(model, test), test.labels, classifier, mask)
        result["train"] = training
        record["variants"][variant] = result
        report(f"  held out {split_name}, {per_class}/class, {variant}: held-out {result['calibrated']['held_out']:.2f} "
               f"(raw {result['raw']['held_out']:.2f}), seen {result['raw']['seen']:.2f}  ({training['seconds']:.0f} s)")
    return record


def run_splits(backbone: ClipBackbone, classes: Sequence[str], prompts: Sequence[str],
               splits: Sequence[Sequence[int]], split_names: Sequence[str], make_train: Callable[[Sequence[int]], PairedSet],
               test: PairedSet, variants: Sequence[str], build: Callable[[str], LensModel],
               embed_fn: Callable[[LensModel, PairedSet], Tensor], cfg: LensTrainConfig, out_dir: Path, seed: int,
               report: Callable[[str], None], curve_sizes: Sequence[int] = (),
               lens_config: dict[str, Any] | None = None) -> tuple[list[dict[str, Any]], dict[int, list[dict[str, Any]]]]:
    """`run_split` for every held-out split on its whole training set, and, for a data-efficiency
    curve, on the first n samples per seen class for each n in ``curve_sizes``.

    Returns the whole-set records (one per split) and the curve: {n: records}, the whole set included
    under its own size."""
    whole: list[dict[str, Any]] = []
    curve: dict[int, list[dict[str, Any]]] = {}
    for held_out, name in zip(splits, split_names):
        train = make_train(held_out)
        for n in sorted(set(curve_sizes)):
            subset = subset_per_class(train, n)
            if len(subset) < len(train):
                curve.setdefault(n, []).append(run_split(backbone, classes, prompts, held_out, name, subset, test,
                                                         variants, build, embed_fn, cfg, out_dir, seed, report,
                                                         lens_config))
        record = run_split(backbone, classes, prompts, held_out, name, train, test, variants, build, embed_fn, cfg,
                           out_dir, seed, report, lens_config)
        whole.append(record)
        if curve_sizes:
            curve.setdefault(record["train_per_class"], []).append(record)
    return whole, curve


def split_name(classes: Sequence[str], held_out: Sequence[int]) -> str:
    """A folder-safe name of a held-out split (``falling_chirp-beeps-rumble``)."""
    return "-".join(classes[c].replace(" ", "_") for c in held_out)


def run_lens_demo(cfg: Any, out_dir: str | Path, report: Callable[[str], None], *, classes: Sequence[str],
                  prompts: Sequence[str], pretrain: Callable[[Path], tuple[ClipBackbone, dict[str, Any]]],
                  make_set: Callable[[Sequence[int], int, int, str], PairedSet],
                  build: Callable[[str, ClipBackbone], LensModel], embed_fn: Callable[[LensModel, PairedSet], Tensor],
                  lens_record: dict[str, Any], task: str, images: str) -> dict[str, Any]:
    """The 3D and the audio demo: pretrain (or load) the tiny CLIP, draw the test set once and each
    split's training set, `run_splits` (and the curve when ``cfg.curve_sizes``), write ``results.json``,
    ``confusion.png`` and ``curve.png``. ``cfg`` is the demo's config (`clip`, `train`, `splits`,
    `curve_sizes`, `variants`, `train_per_class`, `test_per_class`, `seed`); ``make_set(classes,
    per_class, seed, name)`` draws a `PairedSet`; ``build(variant, backbone)`` a lens."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    start, cpu_start = time.perf_counter(), time.process_time()
    backbone, clip_info = pretrain(out_dir)
    clip_seconds = time.perf_counter() - start
    test = make_set(range(len(classes)), cfg.test_per_class, cfg.seed * 1000 + 12, "test")

    def make_train(held_out: Sequence[int]) -> PairedSet:
        seen = [c for c in range(len(classes)) if c not in held_out]
        return make_set(seen, cfg.train_per_class, cfg.seed * 1000 + 11, f"train-{split_name(classes, held_out)}")

    splits, curve = run_splits(
        backbone, classes, prompts, cfg.splits, [split_name(classes, h) for h in cfg.splits], make_train, test,
        cfg.variants, lambda variant: build(variant, backbone), embed_fn, cfg.train, out_dir, cfg.seed, report,
        cfg.curve_sizes, {**lens_record, "backbone": cfg.clip.model, "clip": clip_info["hash"]},
    )
    results = results_record(classes, splits, cfg.variants, clip_info, {
        "clip": round(clip_seconds, 1), "total": round(time.perf_counter() - start, 1),
        "cpu": round(time.process_time() - cpu_start, 1)}, asdict(cfg))
    if curve:
        results["curve"] = curve_summary(curve, cfg.variants)
        results["curve_splits"] = {str(n): records for n, records in curve.items()}
        plot_curve(results["curve"], cfg.variants, results["chance"]["held_out"], out_dir / "curve.png", task)
    (out_dir / "results.json").write_text(json.dumps(results, indent=2))
    plot_confusion(splits[0], classes, cfg.variants, out_dir / "confusion.png", task, images)
    return results


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


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    spread = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5 if len(values) > 1 else 0.0
    return mean, spread


def summarise(splits: list[dict[str, Any]], variants: Sequence[str]) -> dict[str, Any]:
    """Per variant (and the image tower), raw and calibrated: the mean over splits of every metric,
    and under ``std`` its standard deviation over splits (0 for one split)."""
    rows = {v: [s["variants"][v] for s in splits] for v in variants}
    rows["image_tower"] = [s["image_tower"] for s in splits]
    summary: dict[str, Any] = {}
    for name, records in rows.items():
        summary[name] = {}
        for mode in ("raw", "calibrated"):
            stats = {m: _mean_std([r[mode][m] for r in records]) for m in METRICS}
            summary[name][mode] = {m: mean for m, (mean, _) in stats.items()}
            summary[name][mode]["std"] = {m: spread for m, (_, spread) in stats.items()}
    return summary


CONTROLS = ("random_vit", "no_vit")


def transfer_gap(splits: list[dict[str, Any]], metric: str = "held_out") -> dict[str, Any] | None:
    """The claim in one number: per split, the pretrained-ViT lens's calibrated ``metric`` minus the
    better control's on that split; their mean, standard deviation and minimum over splits.
    ``holds`` is the issue's bar: mean >= 0.05 and larger than the spread, over >= 3 splits."""
    if not splits or "vit" not in splits[0]["variants"]:
        return None
    controls = [c for c in CONTROLS if c in splits[0]["variants"]]
    if not controls:
        return None
    gaps = [s["variants"]["vit"]["calibrated"][metric] - max(s["variants"][c]["calibrated"][metric] for c in controls)
            for s in splits]
    mean, spread = _mean_std(gaps)
    return {"per_split": gaps, "mean": mean, "std": spread, "min": min(gaps), "splits": len(gaps),
            "holds": len(gaps) >= 3 and mean >= 0.05 and mean > spread}


def conclusion(results: dict[str, Any], modality: str) -> str:
    """One sentence saying what the run shows about the frozen pretrained ViT on held-out classes."""
    gap, summary = results.get("gap"), results["summary"]
    if gap is None:
        return "no conclusion: the run did not train the pretrained-ViT lens and a control"
    vit = summary["vit"]["calibrated"]
    best = max(CONTROLS, key=lambda c: summary[c]["calibrated"]["held_out"] if c in summary else -1.0)
    n = gap["splits"]
    head = (f"On held-out classes the {modality} lens into the frozen pretrained ViT scores {vit['held_out']:.2f} "
            f"± {vit['std']['held_out']:.2f} over {n} split(s) against {summary[best]['calibrated']['held_out']:.2f} "
            f"for the better control ({VARIANT_LABELS[best].split(': ')[1]}); per split it leads the better control "
            f"by {gap['mean']:+.2f} ± {gap['std']:.2f} (minimum {gap['min']:+.2f}). ")
    if gap["holds"]:
        return head + "Image knowledge in the frozen ViT transfers to classes the lens never saw."
    if n < 3:
        return head + "Fewer than 3 splits: run --study (or the default run) for evidence."
    return head + "That is not the >= 0.05 lead beyond the spread the method claims here."


def output_folder(out: str | None, name: str, quick: bool) -> Path:
    """``--out``, else ``<name>-out``, or ``<name>-quick`` for a smoke test: a ``--quick`` run never
    overwrites a full run's results or cached models."""
    return Path(out or f"{name}-{'quick' if quick else 'out'}")


def parse_held_out(text: str, classes: Sequence[str]) -> tuple[int, ...]:
    """``--held-out`` value: comma-separated class names -> their indices (at least one class stays seen)."""
    import argparse

    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [n for n in names if n not in classes]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown classes {unknown or [text]} (known: {', '.join(classes)})")
    if len(names) >= len(classes):
        raise argparse.ArgumentTypeError("at least one class must stay seen")
    return tuple(classes.index(n) for n in names)


def add_demo_arguments(parser: Any, classes: Sequence[str], splits: Sequence[Sequence[int]], name: str,
                       study: str) -> None:
    """The options every demo shares: ``--quick``, ``--study``, ``--held-out``, ``--out``, ``--seed``,
    ``--threads`` (``study`` says what ``--study`` adds)."""
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="smoke test of the pipeline (< 1 min; not evidence)")
    mode.add_argument("--study", action="store_true", help=study)
    default = "; ".join(", ".join(classes[c] for c in split) for split in splits)
    parser.add_argument("--held-out", type=lambda text: parse_held_out(text, classes), action="append",
                        help=f"comma-separated held-out class names (repeat for several splits; default: {default})")
    parser.add_argument("--out", default=None, help=f"output folder (the tiny CLIP is cached here; default "
                        f"{name}-out, or {name}-quick with --quick)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: the tiny models gain little from more, and lose a lot "
                             "on a busy machine)")


def print_report(results: dict[str, Any], images: str, modality: str, out: Path, files: Sequence[str],
                 quick: bool) -> None:
    """The end of every lens demo's run: one table (chance in it), the calibration in one line, the
    data-efficiency table when there is one, the conclusion, and where the files went."""
    print()
    print(markdown_table(results, images))
    print(CALIBRATION_NOTE + ".")
    if results.get("curve"):
        print()
        print(curve_table(results["curve"], results["variants"]))
    print()
    print("No conclusion: this is a smoke test." if quick else conclusion(results, modality))
    print(f"\nwrote {', '.join(str(out / f) for f in files)} in {results['seconds']['total']:.0f} s"
          + (f"  ({SMOKE_TEST})" if quick else ""))


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
        "gap": transfer_gap(splits),
        "seconds": seconds,
        "config": config,
        "versions": versions(),
    }


CALIBRATION_NOTE = ("calibrated: the held-out classes' scores get one bonus, chosen without labels so that they "
                    "receive their share of the predictions (a lens trained on the seen classes prefers those)")


def markdown_table(results: dict[str, Any], images: str) -> str:
    """Mean accuracies over the splits (± their standard deviation where there are several),
    calibrated (see `prior_matching_bias`) and raw, chance in the first row; ``images`` names what
    the image tower reads (``renderings``, ``spectrograms``)."""
    chance, summary = results["chance"], results["summary"]
    labels = {**VARIANT_LABELS, "image_tower": f"reference: CLIP image tower on {images}"}
    several = len(results["splits"]) > 1

    def cell(record: dict[str, Any], metric: str) -> str:
        return f"{record[metric]:.2f} ± {record['std'][metric]:.2f}" if several else f"{record[metric]:.2f}"

    lines = [
        (f"| model (mean of {len(results['splits'])} held-out split(s)) | held-out | held-out (raw) | seen "
         "| all classes | held-out among held-out |"),
        "|---|---|---|---|---|---|",
        (f"| chance | {chance['held_out']:.2f} | {chance['held_out']:.2f} | {chance['seen']:.2f} | {chance['all']:.2f} "
         f"| {chance['held_out_among_held_out']:.2f} |"),
    ]
    for name in [*results["variants"], "image_tower"]:
        cal, raw = summary[name]["calibrated"], summary[name]["raw"]
        lines.append(f"| {labels[name]} | {cell(cal, 'held_out')} | {cell(raw, 'held_out')} | {cell(cal, 'seen')} "
                     f"| {cell(cal, 'all')} | {cell(cal, 'held_out_among_held_out')} |")
    return "\n".join(lines)


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_confusion(split: dict[str, Any], classes: Sequence[str], variants: Sequence[str], path: Path,
                   task: str, images: str | None = None, labels: dict[str, str] | None = None) -> None:
    """One calibrated confusion matrix (row-normalised) per variant (titled by ``labels``, default
    `VARIANT_LABELS`) and, when ``images`` names what it read, for the image tower; held-out classes
    starred, one shared colour bar; ``task`` titles the figure."""
    plt = _pyplot()
    labels = labels or VARIANT_LABELS
    names = [f"{c}*" if c in split["held_out"] else c for c in classes]
    panels = [(labels.get(v, v), split["variants"][v]["calibrated"]) for v in variants]
    if images is not None and "image_tower" in split:
        panels.append((f"reference: image tower on {images}", split["image_tower"]["calibrated"]))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels) + 0.8, 4.6), squeeze=False)
    image = None
    for ax, (title, result) in zip(axes[0], panels):
        counts = torch.tensor(result["confusion"], dtype=torch.float32)
        rates = counts / counts.sum(dim=1, keepdim=True).clamp(min=1)
        image = ax.imshow(rates.numpy(), cmap="Blues", vmin=0, vmax=1)
        ax.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
        ax.set_yticks(range(len(names)), names, fontsize=7)
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class")
        ax.set_title(f"{title}\nheld-out {result['held_out']:.2f}, seen {result['seen']:.2f} (calibrated)", fontsize=9)
    fig.colorbar(image, ax=list(axes[0]), fraction=0.015, pad=0.01, label="share of the true class's samples")
    fig.suptitle(f"zero-shot {task} classification, held out: {', '.join(split['held_out'])} "
                 f"(* = never seen in lens training)", fontsize=10)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def curve_summary(curve: dict[int, list[dict[str, Any]]], variants: Sequence[str]) -> list[dict[str, Any]]:
    """Per training-set size (samples per seen class): `summarise` of its splits and its `transfer_gap`."""
    return [{"train_per_class": n, "splits": len(records), "summary": summarise(records, variants),
             "gap": transfer_gap(records)} for n, records in sorted(curve.items())]


def curve_table(points: list[dict[str, Any]], variants: Sequence[str]) -> str:
    """Markdown: calibrated held-out and seen accuracy (mean ± std over splits) per size and variant."""
    header = "| per seen class | " + " | ".join(f"{VARIANT_LABELS[v]}: held-out / seen" for v in variants)
    lines = [header + " | lead over the better control (held-out) |", "|---" * (len(variants) + 2) + "|"]
    for point in points:
        cells = []
        for v in variants:
            cal = point["summary"][v]["calibrated"]
            cells.append(f"{cal['held_out']:.2f} ± {cal['std']['held_out']:.2f} / {cal['seen']:.2f} ± {cal['std']['seen']:.2f}")
        gap = point["gap"]
        lead = f"{gap['mean']:+.2f} ± {gap['std']:.2f}" if gap else "-"
        lines.append(f"| {point['train_per_class']} | " + " | ".join(cells) + f" | {lead} |")
    return "\n".join(lines)


def plot_curve(points: list[dict[str, Any]], variants: Sequence[str], chance: float, path: Path, task: str) -> None:
    """Held-out and seen calibrated accuracy against samples per seen class (log scale), one line per
    variant with its standard deviation over splits as error bars, the image tower and chance dashed."""
    plt = _pyplot()
    sizes = [p["train_per_class"] for p in points]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), sharey=True)
    for ax, metric, title in zip(axes, ("held_out", "seen"), ("held-out classes", "seen classes")):
        for v in variants:
            means = [p["summary"][v]["calibrated"][metric] for p in points]
            spreads = [p["summary"][v]["calibrated"]["std"][metric] for p in points]
            ax.errorbar(sizes, means, yerr=spreads, marker="o", capsize=3, label=VARIANT_LABELS[v])
        tower = [p["summary"]["image_tower"]["calibrated"][metric] for p in points]
        ax.plot(sizes, tower, "k--", label="reference: image tower")
        ax.axhline(chance, color="grey", linestyle=":", label="chance")
        ax.set_xscale("log")
        ax.set_xticks(sizes, [str(n) for n in sizes])
        ax.set_xlabel("training samples per seen class")
        ax.set_title(f"{title} (mean ± std over {points[0]['splits']} splits)", fontsize=10)
        ax.set_ylim(0, 1)
    axes[0].set_ylabel("zero-shot accuracy (calibrated)")
    axes[1].legend(fontsize=8, loc="lower right")
    fig.suptitle(f"data efficiency of the {task} lens", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
