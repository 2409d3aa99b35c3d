"""Zero-shot metrics recomputed independently of `omniclip.zeroshot` / `omniclip.evaluation` /
`omniclip.metrics`, for the recipe tests.

Only the data layer is shared with the code under test (the recipe's dataset for a task, read
sample by sample with the same per-index seeding); embeddings, class embeddings and every metric
are computed here one sample at a time, in float64, from the formulas:

* an item's embedding: the mean of its clips' normalised embeddings, renormalised;
* a class embedding: the mean of the normalised text embeddings of its prompts, renormalised;
* top-k: the label among the k highest scores (k clipped to the number of classes); mean
  per-class recall over the classes present; mAP over classes with a positive, AP = mean over
  positives of the precision at their rank; R@k both ways, a correct item counting after any
  incorrect one with an equal score.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn.functional as F

from omniclip.data import SeededDataset
from omniclip.modality import get_modality
from omniclip.model import load_lens_model
from omniclip.recipe import task_dataset


def item_embeddings(model: torch.nn.Module, modality: Any, dataset: Any) -> tuple[torch.Tensor, list[Any]]:
    """[N, E] float64 embeddings, one sample at a time, and each sample's label (or None)."""
    seeded = SeededDataset(dataset, seed=0)
    rows, labels = [], []
    with torch.no_grad():
        for index in range(len(dataset)):
            batch = modality.collate([seeded[(0, index)]])  # one sample: its clips, if several
            clips = model.encode(batch["inputs"]).double()
            rows.append(F.normalize(F.normalize(clips, dim=-1).mean(0), dim=0))
            label = batch.get("labels")
            labels.append(None if label is None else label[0])
    return torch.stack(rows), labels


def class_embeddings(backbone: Any, class_names: list[str], templates: list[str]) -> torch.Tensor:
    out = []
    with torch.no_grad():
        for name in class_names:
            prompts = [t.replace("{c}", name).replace("{}", name) for t in templates]
            tokens = backbone.tokenizer(prompts)
            feats = F.normalize(backbone.model.encode_text(tokens).double(), dim=-1)
            out.append(F.normalize(feats.mean(0), dim=0))
    return torch.stack(out)


def classification(scores: torch.Tensor, labels: list[int]) -> dict[str, float]:
    num_classes = scores.shape[1]
    hits = {1: [], 5: []}
    for row, label in zip(scores.tolist(), labels):
        ranked = sorted(range(num_classes), key=lambda c: -row[c])
        for k in hits:
            hits[k].append(label in ranked[: min(k, num_classes)])
    per_class = {}
    for row, label in zip(scores.tolist(), labels):
        per_class.setdefault(label, []).append(max(range(num_classes), key=lambda c: row[c]) == label)
    recall = sum(sum(v) / len(v) for v in per_class.values()) / len(per_class)
    return {"top1": 100 * sum(hits[1]) / len(labels), "top5": 100 * sum(hits[5]) / len(labels),
            "mean_per_class_recall": 100 * recall}


def mean_average_precision(scores: torch.Tensor, targets: torch.Tensor) -> float:
    aps = []
    for c in range(scores.shape[1]):
        order = sorted(range(scores.shape[0]), key=lambda n: -float(scores[n, c]))
        positives = [rank for rank, n in enumerate(order, 1) if targets[n, c] > 0]
        if positives:
            aps.append(sum((i + 1) / rank for i, rank in enumerate(positives)) / len(positives))
    return 100 * sum(aps) / len(aps)


def recall_at(similarity: torch.Tensor, correct: torch.Tensor, k: int) -> float:
    """Queries = rows; a hit when the best correct column ranks within k (ties count against)."""
    found = 0
    for row, ok in zip(similarity.tolist(), correct.tolist()):
        best = max(s for s, good in zip(row, ok) if good)
        rank = sum(1 for s, good in zip(row, ok) if not good and s >= best)
        found += rank < k
    return 100 * found / similarity.shape[0]


def reference_scores(lens_dir: str | Path, task: Mapping[str, Any], key: str = "eval") -> dict[str, Any]:
    """Item embeddings, labels and (classification) class scores [N, C] for ``task``."""
    model, backbone, config = load_lens_model(lens_dir)
    model.eval()
    modality = get_modality(config["modality"])
    dataset = task_dataset(modality, task, key)
    items, labels = item_embeddings(model, modality, dataset)
    out = {"items": items, "labels": labels, "dataset": dataset, "backbone": backbone}
    if task.get("type", "classification") == "classification":
        names = getattr(dataset, "class_names", None) or modality.class_names(task["dataset"]["name"])
        classifier = class_embeddings(backbone, list(names), modality.template_set(task.get("templates")))
        out.update(class_names=list(names), scores=items @ classifier.T)
    return out


def reference_metrics(lens_dir: str | Path, task: Mapping[str, Any], key: str = "eval") -> dict[str, float]:
    """Every metric `omniclip.zeroshot.evaluate_task` reports for ``task`` with the lens export."""
    ref = reference_scores(lens_dir, task, key)
    items, labels, dataset, backbone = ref["items"], ref["labels"], ref["dataset"], ref["backbone"]
    if "scores" not in ref:  # retrieval
        captions = dataset.captions
        texts = [c for item in captions for c in item]
        with torch.no_grad():
            text_emb = F.normalize(backbone.model.encode_text(backbone.tokenizer(texts)).double(), dim=-1)
        owner = torch.tensor([i for i, item in enumerate(captions) for _ in item])
        correct = owner[:, None] == torch.arange(len(captions))[None, :]  # [texts, items]
        similarity = text_emb @ items.T
        metrics = {}
        for k in (1, 5, 10):
            metrics[f"text_to_item_R@{k}"] = recall_at(similarity, correct, k)
            metrics[f"item_to_text_R@{k}"] = recall_at(similarity.T, correct.T, k)
        return metrics
    if getattr(dataset, "multilabel", False):
        return {"mAP": mean_average_precision(ref["scores"], torch.stack(labels))}
    return classification(ref["scores"], [int(label) for label in labels])


def designed_labels(scores: torch.Tensor) -> list[int]:
    """Labels that fix the answer: each even sample's label is its best-scored class, each odd
    sample's its fifth best. A correct evaluation then reports top-1 = ceil(N/2)/N and top-5 =
    100 exactly; a classifier in another class order, other prompts, other embeddings or a
    top-k cut one place early would not."""
    ranked = scores.argsort(dim=1, descending=True)
    return [int(ranked[i, 0 if i % 2 == 0 else 4]) for i in range(scores.shape[0])]


def assert_matches_reference(result: Any, lens_dir: str | Path, task: Mapping[str, Any]) -> dict[str, float]:
    """``result`` (an EvalResult) reports exactly the independently computed metrics."""
    expected = reference_metrics(lens_dir, task)
    got = {k: v for k, v in result.metrics.items() if k in expected}
    assert got.keys() == expected.keys(), (sorted(result.metrics), sorted(expected))
    for name, value in expected.items():
        assert abs(got[name] - value) < 1e-3, f"{result.dataset} {name}: reported {got[name]}, reference {value}"
    return expected
