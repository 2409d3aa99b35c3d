"""Zero-shot evaluation library: text classifiers from prompts, embedding collection, scoring,
and result records.

The hydra CLI (`omniclip.zeroshot`) drives these pieces; they know no modality. Metric values
are in percent (0-100), like `omniclip.metrics` and the papers.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

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
    module = embed_fn if isinstance(embed_fn, nn.Module) else getattr(embed_fn, "__self__", None)
    # Per-submodule flags, so a trainer's deliberately frozen (eval) parts stay so afterwards.
    modes = {m: m.training for m in module.modules()} if isinstance(module, nn.Module) else {}
    if modes:
        module.eval()
    embeddings: list[Tensor] = []
    labels: list[Tensor] = []
    groups: list[Tensor] = []
    paths: list[str] = []
    try:
        with torch.no_grad():
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
    finally:
        for submodule, training in modes.items():
            submodule.training = training
    if not embeddings:
        raise ValueError("loader yielded no batches")
    all_emb = torch.cat(embeddings)
    all_labels = torch.cat(labels) if labels else None
    if groups:
        group_ids = torch.cat(groups)
        if group_ids.is_floating_point() or group_ids.ndim != 1:
            raise ValueError(
                f"group_ids must be integers, one per embedding; "
                f"got {group_ids.dtype} of shape {tuple(group_ids.shape)}"
            )
        clip_paths = paths if len(paths) == all_emb.shape[0] else None
        all_emb, all_labels = _average_groups(all_emb, all_labels, group_ids.long(), clip_paths)
    return F.normalize(all_emb, dim=-1), all_labels


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
    num_classes = classifier.shape[0]
    expected = (embeddings.shape[0], num_classes) if multilabel else (embeddings.shape[0],)
    if tuple(labels.shape) != expected:
        kind = "multi-hot" if multilabel else "class-index"
        raise ValueError(f"{kind} labels must have shape {expected}, got {tuple(labels.shape)}")
    classifier = F.normalize(classifier.to(embeddings.device).float(), dim=-1)
    logits = F.normalize(embeddings.float(), dim=-1) @ classifier.T
    labels = labels.to(embeddings.device)
    if multilabel:
        results = {"mAP": metrics.mean_average_precision(logits, labels)}
    else:
        results = metrics.topk_accuracy(logits, labels, ks=(1, 5))
        recall = metrics.mean_per_class_recall(logits, labels, num_classes)
        results["mean_per_class_recall"] = recall
    results["num_samples"] = embeddings.shape[0]
    return results


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
