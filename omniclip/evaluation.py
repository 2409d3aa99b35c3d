"""Zero-shot evaluation library: text classifiers from prompts, embedding collection, scoring,
and result records.

The hydra CLI (`omniclip.zeroshot`) drives these pieces; they know no modality. Metric values
are in percent (0-100), like `omniclip.metrics` and the papers.
"""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from omniclip import metrics
from omniclip.errors import SampleError

PLACEHOLDERS = ("{}", "{c}")


def _fill(template: str, class_name: str) -> str:
    # Plain replacement rather than str.format: templates and class names may contain other braces.
    for placeholder in PLACEHOLDERS:
        template = template.replace(placeholder, class_name)
    return template


def build_classifier(
    encode_text: Callable[[list[str]], Tensor],
    class_names: Sequence[str],
    templates: Sequence[str],
    batch_size: int = 256,
) -> Tensor:
    """Zero-shot classifier [C, D], float32: per class, the renormalised mean of the L2-normalised
    embeddings of every template filled with the class name.

    Templates mark the class name with ``{}`` or ``{c}``. All C x T prompts are encoded in chunks
    of ``batch_size`` (class-major order), so the result does not depend on ``batch_size``.
    """
    if isinstance(class_names, str) or isinstance(templates, str):
        raise ValueError("class_names and templates must be sequences of strings, not one string")
    if len(class_names) == 0:
        raise ValueError("class_names is empty")
    if len(templates) == 0:
        raise ValueError("templates is empty")
    bad = [t for t in templates if not any(p in t for p in PLACEHOLDERS)]
    if bad:
        marks = " or ".join(PLACEHOLDERS)
        raise ValueError(f"templates without a class placeholder ({marks}): {bad}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    prompts = [_fill(t, name) for name in class_names for t in templates]
    with torch.no_grad():
        chunks = []
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start : start + batch_size]
            emb = encode_text(chunk)
            if emb.ndim != 2 or emb.shape[0] != len(chunk):
                raise ValueError(
                    f"encode_text returned shape {tuple(emb.shape)} for {len(chunk)} prompts; "
                    f"expected [{len(chunk)}, D]"
                )
            chunks.append(F.normalize(emb.float(), dim=-1))
        emb = torch.cat(chunks).view(len(class_names), len(templates), -1)
        return F.normalize(emb.mean(dim=1), dim=-1)


def _to_device(value: Any, device: torch.device | str) -> Any:
    if isinstance(value, Tensor):
        return value.to(device, non_blocking=True)
    if isinstance(value, Mapping):
        return {k: _to_device(v, device) for k, v in value.items()}
    return value


def _average_groups(
    embeddings: Tensor, labels: Tensor | None, group_ids: Tensor, paths: list[str] | None
) -> tuple[Tensor, Tensor | None]:
    """Mean embedding per group id, groups in order of first appearance; the labels of a group's
    clips must agree."""
    unique, inverse = torch.unique(group_ids, return_inverse=True)
    positions = torch.arange(group_ids.numel(), device=group_ids.device)
    first = torch.full_like(unique, group_ids.numel())
    first = first.scatter_reduce(0, inverse, positions, reduce="amin")  # first clip of each group
    order = first.argsort()
    rank_of = torch.empty_like(order)
    rank_of[order] = torch.arange(order.numel(), device=order.device)
    slot = rank_of[inverse]  # output row of every clip
    sums = embeddings.new_zeros(unique.numel(), embeddings.shape[1]).index_add_(0, slot, embeddings)
    counts = torch.bincount(slot, minlength=unique.numel()).to(sums.dtype)
    grouped = sums / counts[:, None]
    if labels is None:
        return grouped, None
    group_labels = labels[first[order]]
    differs = (labels != group_labels[slot]).reshape(labels.shape[0], -1).any(dim=1)
    if differs.any():
        clip = int(differs.nonzero()[0])
        where = paths[clip] if paths is not None else f"clip {clip}"
        group = int(group_ids[clip])
        raise SampleError(where, f"label differs from the other clips of group {group}")
    return grouped, group_labels


@contextmanager
def eval_mode(fn: Any) -> Iterator[None]:
    """Put a module (or a module's bound method) in eval mode and restore every submodule's own
    flag afterwards, so a trainer's deliberately frozen (eval) parts stay so; plain functions
    pass through."""
    module = fn if isinstance(fn, nn.Module) else getattr(fn, "__self__", None)
    modes = {m: m.training for m in module.modules()} if isinstance(module, nn.Module) else {}
    if modes:
        module.eval()
    try:
        yield
    finally:
        for submodule, training in modes.items():
            submodule.training = training


def _collect(
    embed_fn: Callable[[dict], Tensor], loader: Iterable[dict], device: torch.device | str
) -> tuple[Tensor, Tensor | None, Tensor | None, list[str]]:
    """Raw float32 embeddings [N, D] of every batch, their labels and group ids (None when the
    batches carry none) and the clip paths."""
    embeddings: list[Tensor] = []
    labels: list[Tensor] = []
    groups: list[Tensor] = []
    paths: list[str] = []
    with eval_mode(embed_fn), torch.no_grad():
        for index, batch in enumerate(loader):
            batch = _to_device(batch, device)
            emb = embed_fn(batch)
            if emb.ndim != 2:
                raise ValueError(
                    f"embed_fn returned shape {tuple(emb.shape)} for batch {index}; "
                    "expected [B, D]"
                )
            embeddings.append(emb.float())
            for key, seen in (("labels", labels), ("group_ids", groups)):
                if index > 0 and (batch.get(key) is not None) != bool(seen):
                    state = "lacks" if seen else "has"
                    raise ValueError(
                        f"batch {index} {state} `{key}`, unlike the batches before it"
                    )
                values = batch.get(key)
                if values is None:
                    continue
                values = torch.as_tensor(values, device=device)
                if values.shape[0] != emb.shape[0]:
                    raise ValueError(
                        f"batch {index}: {values.shape[0]} {key} for {emb.shape[0]} embeddings"
                    )
                seen.append(values)
            paths.extend(batch.get("paths") or [])
    if not embeddings:
        raise ValueError("loader yielded no batches")
    group_ids = None
    if groups:
        group_ids = torch.cat(groups)
        if group_ids.is_floating_point() or group_ids.ndim != 1:
            raise ValueError(
                f"group_ids must be integers, one per embedding; "
                f"got {group_ids.dtype} of shape {tuple(group_ids.shape)}"
            )
        group_ids = group_ids.long()
    return torch.cat(embeddings), torch.cat(labels) if labels else None, group_ids, paths


def collect_embeddings(
    embed_fn: Callable[[dict], Tensor],
    loader: Iterable[dict],
    device: torch.device | str,
) -> tuple[Tensor, Tensor | None]:
    """Embed every batch of ``loader``; return L2-normalised float32 embeddings [N, D] and labels.

    Batches are dicts as in `omniclip.modality`; their tensors are moved to ``device`` before
    ``embed_fn(batch)``. Labels (LongTensor [N] or multi-hot [N, C]) are None when the batches
    carry none. When batches carry ``group_ids`` (list of ints or LongTensor [B]; several clips or
    views of one file, possibly split across batches), the raw embeddings of a group are averaged
    before normalising, as ViT-Lens does for its 3 audio clips per file; one row per group, in
    order of first appearance. Runs without gradients; a module (or a module's bound method)
    is put in eval mode and restored afterwards. Results stay on ``device``.
    """
    all_emb, all_labels, group_ids, paths = _collect(embed_fn, loader, device)
    if group_ids is not None:
        clip_paths = paths if len(paths) == all_emb.shape[0] else None
        all_emb, all_labels = _average_groups(all_emb, all_labels, group_ids, clip_paths)
    return F.normalize(all_emb, dim=-1), all_labels


def collect_view_embeddings(
    embed_fn: Callable[[dict], Tensor],
    loader: Iterable[dict],
    device: torch.device | str,
) -> tuple[Tensor, Tensor | None, Tensor, list[str]]:
    """Like `collect_embeddings` but one L2-normalised row per view, not per group: embeddings
    [N, D], labels (or None), group ids [N] (each row its own group when the batches carry
    none) and the paths of the rows (empty when the batches carry none), for fusing the views'
    scores rather than their embeddings (`fuse_view_scores`)."""
    all_emb, all_labels, group_ids, paths = _collect(embed_fn, loader, device)
    if group_ids is None:
        group_ids = torch.arange(all_emb.shape[0], device=all_emb.device)
    return F.normalize(all_emb, dim=-1), all_labels, group_ids, paths


def collect_class_scores(
    score_fn: Callable[[Tensor], Tensor],
    model: nn.Module,
    loader: Iterable[dict],
    device: torch.device | str,
) -> tuple[Tensor, Tensor | None, Tensor, list[str]]:
    """Class scores [N, C] of every view, ``score_fn(batch["inputs"])``, with ``model`` in eval mode
    (restored afterwards), their labels, group ids (each row its own group when the batches
    carry none) and paths: for models whose class embeddings differ per clip, which give scores,
    not embeddings to compare with one classifier."""
    with eval_mode(model):
        scores, labels, group_ids, paths = _collect(lambda batch: score_fn(batch["inputs"]), loader, device)
    if group_ids is None:
        group_ids = torch.arange(scores.shape[0], device=scores.device)
    return scores, labels, group_ids, paths


def fuse_view_scores_of(
    cosines: Tensor,
    labels: Tensor | None,
    group_ids: Tensor,
    logit_scale: float,
    paths: list[str] | None = None,
) -> tuple[Tensor, Tensor | None]:
    """`fuse_view_scores` from the views' cosines [N, C] themselves: the mean per group of
    ``softmax(logit_scale * cosines)``."""
    if not logit_scale > 0:
        raise ValueError(f"logit_scale must be positive, got {logit_scale}")
    probs = (logit_scale * cosines.float()).softmax(dim=-1)
    clip_paths = paths if paths is not None and len(paths) == probs.shape[0] else None
    return _average_groups(probs, labels, group_ids.to(probs.device).long(), clip_paths)


def fuse_view_scores(
    embeddings: Tensor,
    labels: Tensor | None,
    group_ids: Tensor,
    classifier: Tensor,
    logit_scale: float,
    paths: list[str] | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Class probabilities [G, C] of every group: the mean over its views of
    ``softmax(logit_scale * cos(view, classes))``, and the groups' labels.

    This is the multi-view test of ViFi-CLIP / X-CLIP (their sum of per-view softmax scores has
    the same ranking as this mean): each view votes with a distribution, so one odd view cannot
    drag a confident average the way an outlying embedding drags a mean embedding. Groups come
    in order of first appearance, as in `collect_embeddings`; a group's views must share a label.
    """
    if embeddings.ndim != 2 or classifier.ndim != 2 or embeddings.shape[1] != classifier.shape[1]:
        raise ValueError(
            f"embeddings [N, D] and classifier [C, D] must share D, "
            f"got {tuple(embeddings.shape)} and {tuple(classifier.shape)}"
        )
    if not logit_scale > 0:
        raise ValueError(f"logit_scale must be positive, got {logit_scale}")
    classifier = F.normalize(classifier.to(embeddings.device).float(), dim=-1)
    cosines = F.normalize(embeddings.float(), dim=-1) @ classifier.T
    return fuse_view_scores_of(cosines, labels, group_ids, logit_scale, paths)


def score_metrics(scores: Tensor, labels: Tensor, multilabel: bool = False) -> dict[str, float]:
    """Metrics (percent) of class scores [N, C], whatever made them (cosines, fused view
    probabilities): ``top1``, ``top5``, ``mean_per_class_recall`` for class-index labels [N];
    ``mAP`` for multi-hot labels [N, C]. Both add ``num_samples``."""
    num_classes = scores.shape[1]
    expected = (scores.shape[0], num_classes) if multilabel else (scores.shape[0],)
    if tuple(labels.shape) != expected:
        kind = "multi-hot" if multilabel else "class-index"
        raise ValueError(f"{kind} labels must have shape {expected}, got {tuple(labels.shape)}")
    labels = labels.to(scores.device)
    if multilabel:
        results = {"mAP": metrics.mean_average_precision(scores, labels)}
    else:
        results = metrics.topk_accuracy(scores, labels, ks=(1, 5))
        results["mean_per_class_recall"] = metrics.mean_per_class_recall(scores, labels, num_classes)
    results["num_samples"] = scores.shape[0]
    return results


def zero_shot_classification(
    embeddings: Tensor, labels: Tensor, classifier: Tensor, multilabel: bool = False
) -> dict[str, float]:
    """Score embeddings [N, D] against a classifier [C, D] by cosine similarity, in percent.

    Single-label (labels LongTensor [N]): ``top1``, ``top5``, ``mean_per_class_recall``.
    Multi-label (labels multi-hot [N, C]): ``mAP`` over classes with a positive. Both add
    ``num_samples``.
    """
    if embeddings.ndim != 2 or classifier.ndim != 2 or embeddings.shape[1] != classifier.shape[1]:
        raise ValueError(
            f"embeddings [N, D] and classifier [C, D] must share D, "
            f"got {tuple(embeddings.shape)} and {tuple(classifier.shape)}"
        )
    classifier = F.normalize(classifier.to(embeddings.device).float(), dim=-1)
    logits = F.normalize(embeddings.float(), dim=-1) @ classifier.T
    return score_metrics(logits, labels, multilabel)


@dataclass
class EvalResult:
    """One evaluation run: what was evaluated, with which weights, and the metrics (percent)."""

    task: str  # "zero_shot_classification", "retrieval", ...
    dataset: str
    modality: str
    model: str
    checkpoint: str | None
    metrics: dict[str, float]
    num_samples: int
    extras: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EvalResult:
        return cls(**data)

    def save_json(self, path: str | os.PathLike) -> None:
        """Write atomically, so a crash never leaves a truncated result behind."""
        write_json_atomic(self.to_dict(), path)

    @classmethod
    def load_json(cls, path: str | os.PathLike) -> EvalResult:
        with open(path) as f:
            return cls.from_dict(json.load(f))


def write_json_atomic(data: Any, path: str | os.PathLike) -> None:
    """JSON to a temporary file in the same folder, then renamed over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, sort_keys=True)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def save_results(results: Sequence[EvalResult], path: str | os.PathLike) -> None:
    """Several results as one JSON list, written atomically."""
    write_json_atomic([r.to_dict() for r in results], path)


def _format_value(value: float) -> str:
    return str(value) if isinstance(value, int) else f"{value:.2f}"


def format_results_table(results: Sequence[EvalResult]) -> str:
    """Fixed-width text table: one row per result (dataset, task, model, N), one column per metric
    (union over results, in first-seen order; "-" where a result lacks it; ``num_samples`` is the
    N column); floats to 2 decimals, integer counts as integers."""
    if not results:
        raise ValueError("no results to format")
    names = (name for r in results for name in r.metrics if name != "num_samples")
    metric_names = list(dict.fromkeys(names))
    header = ["dataset", "task", "model", "N", *metric_names]
    rows = [
        [r.dataset, r.task, r.model, str(r.num_samples)]
        + [_format_value(r.metrics[m]) if m in r.metrics else "-" for m in metric_names]
        for r in results
    ]
    widths = [max(len(line[i]) for line in [header, *rows]) for i in range(len(header))]
    num_text = 3  # dataset, task, model are left-aligned; numbers right-aligned

    def render(cells: list[str]) -> str:
        padded = (
            cell.ljust(width) if i < num_text else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(cells, widths))
        )
        return "  ".join(padded).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([render(header), rule, *(render(row) for row in rows)])
