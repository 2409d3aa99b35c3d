"""Classification and retrieval metrics, computed on whole tensors (no loop over samples).

Every rate is returned in **percent (0-100)**, as the papers report them: top-k accuracy, mean
per-class recall, (mean) average precision and recall@k. The confusion matrix holds counts.
Inputs may live on any device; scalar results come back as Python floats.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def _check_scores(scores: Tensor, name: str) -> None:
    if scores.ndim != 2:
        raise ValueError(f"{name} must be 2-D [N, C], got shape {tuple(scores.shape)}")
    if scores.shape[0] == 0 or scores.shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {tuple(scores.shape)})")
    if scores.is_floating_point() and torch.isnan(scores).any():
        raise ValueError(f"{name} contains NaN")


def _check_indices(
    indices: Tensor, num_samples: int, num_classes: int, name: str = "labels"
) -> None:
    shape = tuple(indices.shape)
    if indices.ndim != 1 or indices.shape[0] != num_samples:
        raise ValueError(f"{name} must be 1-D with {num_samples} entries, got shape {shape}")
    if indices.is_floating_point() or indices.dtype == torch.bool:
        raise ValueError(f"{name} must be integer indices, got dtype {indices.dtype}")
    if indices.numel() and (indices.min() < 0 or indices.max() >= num_classes):
        low, high = int(indices.min()), int(indices.max())
        raise ValueError(f"{name} must lie in [0, {num_classes}), got range [{low}, {high}]")


def _check_ks(ks: Sequence[int]) -> None:
    if not ks or any(int(k) != k or k < 1 for k in ks):
        raise ValueError(f"ks must be positive integers, got {list(ks)}")


def topk_accuracy(logits: Tensor, labels: Tensor, ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """Percentage of samples whose label is among the k highest logits, as ``{"top{k}": value}``.

    A k larger than the number of classes C is clipped to C (so "top5" on 3 classes is 100), and
    the key keeps the requested k so reports stay comparable across datasets.
    """
    _check_scores(logits, "logits")
    _check_ks(ks)
    num_samples, num_classes = logits.shape
    _check_indices(labels, num_samples, num_classes)
    max_k = min(max(ks), num_classes)
    top = logits.topk(max_k, dim=1).indices
    hits = top == labels.to(top.device)[:, None]
    return {f"top{k}": 100.0 * hits[:, :k].any(dim=1).float().mean().item() for k in ks}


def confusion_matrix(preds: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """Counts [C, C]; row = true class, column = predicted class."""
    if preds.ndim != 1:
        raise ValueError(f"preds must be 1-D class indices, got shape {tuple(preds.shape)}")
    _check_indices(labels, preds.shape[0], num_classes)
    _check_indices(preds, preds.shape[0], num_classes, "preds")
    flat = labels.to(preds.device).long() * num_classes + preds.long()
    return torch.bincount(flat, minlength=num_classes * num_classes).view(num_classes, num_classes)


def mean_per_class_recall(logits_or_preds: Tensor, labels: Tensor, num_classes: int) -> float:
    """Mean over the classes present in ``labels`` of the fraction of their samples predicted right.

    Accepts logits [N, C] (the argmax is taken) or predicted indices [N]. Classes absent from
    ``labels`` are left out: their recall is undefined, not zero.
    """
    if logits_or_preds.ndim == 2:
        _check_scores(logits_or_preds, "logits")
        if logits_or_preds.shape[1] != num_classes:
            raise ValueError(
                f"logits have {logits_or_preds.shape[1]} classes, num_classes is {num_classes}"
            )
        preds = logits_or_preds.argmax(dim=1)
    else:
        preds = logits_or_preds
    if preds.numel() == 0:
        raise ValueError("no samples to score")
    counts = confusion_matrix(preds, labels, num_classes)
    support = counts.sum(dim=1)
    present = support > 0
    recall = counts.diagonal()[present].double() / support[present].double()
    return 100.0 * recall.mean().item()


def average_precision_per_class(scores: Tensor, targets: Tensor) -> Tensor:
    """Average precision of each class column in percent, float64 [C]; NaN where a class has no
    positive.

    Same definition as scikit-learn's ``average_precision_score``: AP = sum_n (R_n - R_{n-1}) P_n
    over the thresholds n at the distinct score values, so tied scores enter the ranking as one
    block: every positive in a block of ties gets the precision measured at the block's end.
    """
    _check_scores(scores, "scores")
    if targets.shape != scores.shape:
        raise ValueError(
            f"targets must have the shape of scores {tuple(scores.shape)}, "
            f"got {tuple(targets.shape)}"
        )
    targets = targets.to(scores.device)
    if not ((targets == 0) | (targets == 1)).all():
        raise ValueError("targets must be multi-hot (every entry 0 or 1)")
    num_samples = scores.shape[0]
    sorted_scores, order = scores.sort(dim=0, descending=True)
    hits = targets.gather(0, order).double()
    true_pos = hits.cumsum(dim=0)
    ranks = torch.arange(1, num_samples + 1, device=scores.device, dtype=torch.float64)[:, None]
    precision = true_pos / ranks
    # Index of the last row of each block of tied scores, spread back over the block.
    block_end = torch.ones_like(sorted_scores, dtype=torch.bool)
    block_end[:-1] = sorted_scores[:-1] != sorted_scores[1:]
    rows = torch.arange(num_samples, device=scores.device)[:, None].expand_as(sorted_scores)
    end_row = torch.where(block_end, rows, num_samples - 1).flip(0).cummin(dim=0).values.flip(0)
    num_pos = true_pos[-1]
    ap = (hits * precision.gather(0, end_row)).sum(dim=0) / num_pos
    return torch.where(num_pos > 0, 100.0 * ap, torch.full_like(ap, float("nan")))


def mean_average_precision(scores: Tensor, targets: Tensor) -> float:
    """Mean of `average_precision_per_class` over the classes with at least one positive (AudioSet
    convention), in percent."""
    ap = average_precision_per_class(scores, targets)
    valid = ~torch.isnan(ap)
    if not valid.any():
        raise ValueError("no class has a positive target; mAP is undefined")
    return ap[valid].mean().item()


def retrieval_recall(
    similarity: Tensor, query_to_gallery: Tensor, ks: Sequence[int] = (1, 5, 10)
) -> dict[str, float]:
    """Percentage of queries with a correct gallery item among their k most similar items, as
    ``{"R@k": value}``.

    ``query_to_gallery`` is the correct gallery index of each query (LongTensor [Nq]) or a bool
    matrix [Nq, Ng] of correct pairs. Ties count against the query: a correct item is ranked after
    every incorrect item with an equal score, so a collapsed model cannot score by ties. A k
    larger than the gallery is clipped to the gallery size.
    """
    _check_scores(similarity, "similarity")
    _check_ks(ks)
    similarity = similarity if similarity.is_floating_point() else similarity.float()
    num_queries, num_gallery = similarity.shape
    if query_to_gallery.dtype == torch.bool:
        if query_to_gallery.shape != similarity.shape:
            raise ValueError(
                f"correct-pair mask must have the shape of similarity {tuple(similarity.shape)}, "
                f"got {tuple(query_to_gallery.shape)}"
            )
        correct = query_to_gallery.to(similarity.device)
        lonely = (~correct.any(dim=1)).nonzero().flatten()
        if lonely.numel():
            raise ValueError(
                f"{lonely.numel()} queries have no correct gallery item "
                f"(first: query {int(lonely[0])})"
            )
    else:
        _check_indices(query_to_gallery, num_queries, num_gallery, "query_to_gallery")
        gallery = torch.arange(num_gallery, device=similarity.device)
        correct = query_to_gallery.to(similarity.device)[:, None] == gallery[None, :]
    best_correct = similarity.masked_fill(~correct, float("-inf")).amax(dim=1, keepdim=True)
    rank = ((similarity >= best_correct) & ~correct).sum(dim=1)  # 0-based rank of the first hit
    return {f"R@{k}": 100.0 * (rank < k).float().mean().item() for k in ks}


def retrieval_metrics(
    item_emb: Tensor, text_emb: Tensor, text_to_item: Tensor, ks: Sequence[int] = (1, 5, 10)
) -> dict[str, float]:
    """Recall@k both ways between items (audio clips, videos, ...) and captions, in percent.

    Several captions may describe one item (Clotho and AudioCaps test have 5): text->item asks
    whether the caption's own item is in the top k; item->text scores a hit when any of the
    item's captions is. Embeddings are L2-normalised here, so similarity is cosine.
    Keys: ``text_to_item_R@k`` and ``item_to_text_R@k``.
    """
    if item_emb.ndim != 2 or text_emb.ndim != 2 or item_emb.shape[1] != text_emb.shape[1]:
        raise ValueError(
            f"item_emb [Ni, D] and text_emb [Nt, D] must share D, "
            f"got {tuple(item_emb.shape)} and {tuple(text_emb.shape)}"
        )
    num_items = item_emb.shape[0]
    _check_indices(text_to_item, text_emb.shape[0], num_items, "text_to_item")
    text_to_item = text_to_item.to(item_emb.device)
    uncaptioned = torch.ones(num_items, dtype=torch.bool, device=item_emb.device)
    uncaptioned[text_to_item] = False
    if uncaptioned.any():
        missing = uncaptioned.nonzero().flatten()
        raise ValueError(f"{missing.numel()} items have no caption (first: item {int(missing[0])})")
    item_emb = F.normalize(item_emb.float(), dim=-1)
    text_emb = F.normalize(text_emb.to(item_emb.device).float(), dim=-1)
    sim = text_emb @ item_emb.T  # [Nt, Ni]
    items = torch.arange(num_items, device=item_emb.device)
    item_captions = items[:, None] == text_to_item[None, :]  # [Ni, Nt]
    t2i = retrieval_recall(sim, text_to_item, ks)
    i2t = retrieval_recall(sim.T, item_captions, ks)
    return {
        **{f"text_to_item_{name}": value for name, value in t2i.items()},
        **{f"item_to_text_{name}": value for name, value in i2t.items()},
    }
