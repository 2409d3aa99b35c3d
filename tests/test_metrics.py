import math

import pytest
import torch

from omniclip.metrics import (
    average_precision_per_class,
    confusion_matrix,
    mean_average_precision,
    mean_per_class_recall,
    retrieval_metrics,
    retrieval_recall,
    topk_accuracy,
)


def reference_average_precision(scores: list[float], targets: list[int]) -> float:
    """scikit-learn's definition written out: thresholds at the distinct scores, high to low,
    AP = sum (R_n - R_{n-1}) * P_n, as a fraction."""
    num_pos = sum(targets)
    ap, prev_recall = 0.0, 0.0
    for threshold in sorted(set(scores), reverse=True):
        selected = [t for s, t in zip(scores, targets) if s >= threshold]
        precision = sum(selected) / len(selected)
        recall = sum(selected) / num_pos
        ap += (recall - prev_recall) * precision
        prev_recall = recall
    return ap


# --- top-k accuracy ------------------------------------------------------------------------------

LOGITS = torch.tensor(
    [
        [0.1, 0.7, 0.2],  # ranking 1, 2, 0
        [0.5, 0.3, 0.2],  # ranking 0, 1, 2
        [0.2, 0.3, 0.5],  # ranking 2, 1, 0
        [0.6, 0.1, 0.3],  # ranking 0, 2, 1
    ]
)
LABELS = torch.tensor([1, 1, 0, 1])


def test_topk_accuracy_hand_computed():
    # top1: only sample 0 -> 1/4. top2: samples 0 and 1 -> 2/4. top5 is clipped to 3 classes -> all.
    result = topk_accuracy(LOGITS, LABELS, ks=(1, 2, 5))
    assert result == pytest.approx({"top1": 25.0, "top2": 50.0, "top5": 100.0})


def test_topk_accuracy_matches_loop_reference():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(200, 17, generator=g)
    labels = torch.randint(0, 17, (200,), generator=g)
    result = topk_accuracy(logits, labels, ks=(1, 3, 5))
    for k in (1, 3, 5):
        ranked = [row.argsort(descending=True)[:k].tolist() for row in logits]
        hits = sum(int(y) in r for y, r in zip(labels, ranked))
        assert result[f"top{k}"] == pytest.approx(100.0 * hits / 200)


def test_topk_accuracy_errors():
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\), got range \[0, 3\]"):
        topk_accuracy(LOGITS, torch.tensor([0, 1, 2, 3]))
    with pytest.raises(ValueError, match="labels must be 1-D with 4 entries"):
        topk_accuracy(LOGITS, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="labels must be integer indices"):
        topk_accuracy(LOGITS, LABELS.float())
    with pytest.raises(ValueError, match="logits contains NaN"):
        topk_accuracy(torch.full((4, 3), float("nan")), LABELS)
    with pytest.raises(ValueError, match="ks must be positive integers"):
        topk_accuracy(LOGITS, LABELS, ks=(0,))
    with pytest.raises(ValueError, match="logits is empty"):
        topk_accuracy(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long))


# --- confusion matrix and mean per-class recall --------------------------------------------------


def test_confusion_matrix_rows_are_true_classes():
    preds = torch.tensor([0, 2, 1, 1, 0])
    labels = torch.tensor([0, 1, 1, 2, 0])
    expected = torch.tensor([[2, 0, 0], [0, 1, 1], [0, 1, 0]])
    assert torch.equal(confusion_matrix(preds, labels, 3), expected)
    with pytest.raises(ValueError, match=r"preds must lie in \[0, 3\)"):
        confusion_matrix(torch.tensor([0, 3, 1, 1, 0]), labels, 3)


def test_mean_per_class_recall_skips_absent_classes():
    preds = torch.tensor([0, 2, 1, 1, 0])
    labels = torch.tensor([0, 1, 1, 2, 0])
    # recalls: class 0 = 2/2, class 1 = 1/2, class 2 = 0/1; class 3 never occurs and is left out.
    assert mean_per_class_recall(preds, labels, 4) == pytest.approx(50.0)
    logits = torch.nn.functional.one_hot(preds, 4).float()
    assert mean_per_class_recall(logits, labels, 4) == pytest.approx(50.0)
    with pytest.raises(ValueError, match="logits have 4 classes, num_classes is 3"):
        mean_per_class_recall(logits, labels, 3)


# --- average precision ---------------------------------------------------------------------------

# Five samples, three classes.
# Class 0: scores .9 .8 .8 .5 .1, targets 1 0 1 0 1. Thresholds .9/.8/.5/.1 give (P, R) =
#   (1, 1/3), (2/3, 2/3), (1/2, 2/3), (3/5, 1): AP = 1/3 + 1/3 * 2/3 + 0 + 1/3 * 3/5 = 34/45.
# Class 1: scores .9 .7 .7 .7 .2, targets 0 1 0 1 1; the tied block at .7 holds two positives and
#   one negative. Thresholds give (0, 0), (1/2, 2/3), (3/5, 1): AP = 2/3 * 1/2 + 1/3 * 3/5 = 8/15
#   (ordering the tie negatives-first would give 43/90, positives-first 53/90).
# Class 2: no positive -> AP undefined, left out of the mean: mAP = (34/45 + 8/15) / 2 = 29/45.
AP_SCORES = torch.tensor(
    [[0.9, 0.9, 0.3], [0.8, 0.7, 0.1], [0.8, 0.7, 0.4], [0.5, 0.7, 0.2], [0.1, 0.2, 0.5]]
)
AP_TARGETS = torch.tensor([[1, 0, 0], [0, 1, 0], [1, 0, 0], [0, 1, 0], [1, 1, 0]])


def test_average_precision_hand_computed_with_ties():
    ap = average_precision_per_class(AP_SCORES, AP_TARGETS)
    assert ap[0].item() == pytest.approx(100 * 34 / 45)
    assert ap[1].item() == pytest.approx(100 * 8 / 15)
    assert math.isnan(ap[2].item())
    assert mean_average_precision(AP_SCORES, AP_TARGETS) == pytest.approx(100 * 29 / 45)


def test_average_precision_all_tied_is_prevalence():
    targets = torch.tensor([[1], [0], [0], [1], [0]])
    assert average_precision_per_class(torch.zeros(5, 1), targets).item() == pytest.approx(40.0)


def test_average_precision_matches_reference_on_random_ties():
    g = torch.Generator().manual_seed(1)
    scores = torch.randint(0, 8, (60, 9), generator=g).float() / 8  # many ties
    targets = (torch.rand(60, 9, generator=g) < 0.2).float()
    targets[:, 4] = 0  # a class without positives
    ap = average_precision_per_class(scores, targets)
    expected = []
    for c in range(9):
        if targets[:, c].sum() == 0:
            assert math.isnan(ap[c].item())
            continue
        column_ap = reference_average_precision(scores[:, c].tolist(), targets[:, c].int().tolist())
        expected.append(100 * column_ap)
        assert ap[c].item() == pytest.approx(expected[-1], abs=1e-9)
    expected_map = sum(expected) / len(expected)
    assert mean_average_precision(scores, targets) == pytest.approx(expected_map, abs=1e-9)


def test_average_precision_errors():
    with pytest.raises(ValueError, match="targets must be multi-hot"):
        average_precision_per_class(AP_SCORES, AP_TARGETS * 2)
    with pytest.raises(ValueError, match=r"targets must have the shape of scores \(5, 3\)"):
        average_precision_per_class(AP_SCORES, AP_TARGETS[:, :2])
    with pytest.raises(ValueError, match="no class has a positive target"):
        mean_average_precision(AP_SCORES, torch.zeros(5, 3))


# --- retrieval -----------------------------------------------------------------------------------


def test_retrieval_recall_matches_topk_reference():
    g = torch.Generator().manual_seed(2)
    sim = torch.randn(40, 25, generator=g)
    truth = torch.randint(0, 25, (40,), generator=g)
    result = retrieval_recall(sim, truth, ks=(1, 5, 10))
    for k in (1, 5, 10):
        hits = sum(int(truth[q]) in sim[q].topk(k).indices.tolist() for q in range(40))
        assert result[f"R@{k}"] == pytest.approx(100.0 * hits / 40)
    mask = torch.nn.functional.one_hot(truth, 25).bool()
    assert retrieval_recall(sim, mask, ks=(1, 5, 10)) == result


def test_retrieval_recall_ties_count_against_the_query():
    # All scores equal: the correct item ranks after both incorrect ones.
    result = retrieval_recall(torch.zeros(2, 3), torch.tensor([0, 2]), ks=(1, 2, 3, 4))
    assert result == {"R@1": 0.0, "R@2": 0.0, "R@3": 100.0, "R@4": 100.0}
    # Ties between correct items do not hurt: query 0 has two correct items sharing the top score.
    mask = torch.tensor([[True, True, False]])
    assert retrieval_recall(torch.tensor([[0.5, 0.5, 0.1]]), mask, ks=(1,)) == {"R@1": 100.0}


def test_retrieval_recall_errors():
    mask = torch.tensor([[True, False, False], [False, False, False]])
    message = r"1 queries have no correct gallery item \(first: query 1\)"
    with pytest.raises(ValueError, match=message):
        retrieval_recall(torch.zeros(2, 3), mask)
    with pytest.raises(ValueError, match=r"mask must have the shape of similarity \(2, 3\)"):
        retrieval_recall(torch.zeros(2, 3), torch.ones(2, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"query_to_gallery must lie in \[0, 3\)"):
        retrieval_recall(torch.zeros(2, 3), torch.tensor([0, 5]))


def test_retrieval_metrics_several_captions_per_item():
    items = torch.eye(3) * 2.0  # normalised inside: cosine = normalised caption component
    texts = torch.tensor(
        [
            [1.0, 0.0, 0.0],  # item 0: ranks item 0 first
            [0.0, 0.5, 1.0],  # item 0: ranks 2, 1, 0 -> third
            [0.2, 1.0, 0.0],  # item 1: first
            [1.0, 0.5, 0.0],  # item 1: second
            [0.9, 0.0, 1.0],  # item 2: first
            [1.0, 0.3, 0.1],  # item 2: third
        ]
    )
    text_to_item = torch.tensor([0, 0, 1, 1, 2, 2])
    result = retrieval_metrics(items, texts, text_to_item, ks=(1, 2, 10))
    # Cosines of item 2 with the captions: 0, .894 (caption 1, of item 0), 0, 0, .743, .095 ->
    # its best own caption is second; items 0 and 1 find one of theirs first.
    assert result == pytest.approx(
        {
            "text_to_item_R@1": 100 * 3 / 6,
            "text_to_item_R@2": 100 * 4 / 6,
            "text_to_item_R@10": 100.0,
            "item_to_text_R@1": 100 * 2 / 3,
            "item_to_text_R@2": 100.0,
            "item_to_text_R@10": 100.0,
        }
    )


def test_retrieval_metrics_errors():
    with pytest.raises(ValueError, match=r"1 items have no caption \(first: item 2\)"):
        retrieval_metrics(torch.eye(3), torch.eye(3)[:2], torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="must share D"):
        retrieval_metrics(torch.eye(3), torch.ones(2, 4), torch.tensor([0, 1]))
