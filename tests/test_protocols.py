"""Evaluation protocols (omniclip.protocols): few-shot draws, base/novel splits, harmonic mean,
split aggregation, eval summaries and the class-subset dataset view."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from omniclip.errors import ConfigError
from omniclip.protocols import (
    ClassSubset,
    aggregate_splits,
    base_novel_split,
    check_summaries,
    few_shot_subset,
    harmonic_mean,
    sample_labels,
    summarize,
)

#: class 0: 5 samples, class 1: 7, class 2: 3, interleaved
LABELS = [0, 1, 2, 1, 0, 1, 1, 0, 2, 1, 0, 1, 2, 0, 1]
NAMES = ["archery", "bowling", "cello"]


def test_few_shot_takes_exactly_k_per_class_in_dataset_order():
    chosen = few_shot_subset(LABELS, shots=3, seed=0, class_names=NAMES)
    assert chosen == sorted(set(chosen)) and len(chosen) == 9
    assert Counter(LABELS[i] for i in chosen) == {0: 3, 1: 3, 2: 3}
    assert set(i for i in chosen if LABELS[i] == 2) == {2, 8, 12}  # all three of the smallest class


def test_few_shot_is_deterministic_and_differs_between_seeds():
    draws = {seed: few_shot_subset(LABELS, shots=2, seed=seed) for seed in range(4)}
    assert draws[0] == few_shot_subset(LABELS, shots=2, seed=0)
    assert len({tuple(d) for d in draws.values()}) > 1
    # one class's draw depends on its own samples only: more samples of class 1 leave class 0's
    more = LABELS + [1, 1, 1]
    zero = [i for i in draws[1] if LABELS[i] == 0]
    assert [i for i in few_shot_subset(more, shots=2, seed=1) if more[i] == 0] == zero


def test_few_shot_names_the_class_that_is_short():
    with pytest.raises(ValueError, match=r"class `cello` \(label 2\) has 3 samples, fewer than the 4 shots"):
        few_shot_subset(LABELS, shots=4, seed=0, class_names=NAMES)
    with pytest.raises(ValueError, match=r"class label 2 has 3 samples"):
        few_shot_subset(LABELS, shots=4, seed=0)
    # a named class with no sample at all is short too, not silently absent
    with pytest.raises(ValueError, match=r"class `drums` \(label 3\) has 0 samples"):
        few_shot_subset(LABELS, shots=1, seed=0, class_names=NAMES + ["drums"])
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="shots must be a positive integer"):
            few_shot_subset(LABELS, shots=bad, seed=0)


def test_harmonic_mean_against_hand_values():
    assert harmonic_mean(80.0, 60.0) == pytest.approx(2 * 80 * 60 / 140)  # 68.571...
    assert harmonic_mean(80.0, 60.0) == pytest.approx(68.5714286)
    assert harmonic_mean(50.0, 50.0) == 50.0
    assert round(harmonic_mean(73.8, 53.3), 1) == 61.9  # ViFi-CLIP's published HMDB51 row
    assert round(harmonic_mean(92.9, 67.7), 1) == 78.3  # and UCF101's
    assert harmonic_mean(0.0, 70.0) == 0.0 and harmonic_mean(70.0, 0.0) == 0.0 and harmonic_mean(0.0, 0.0) == 0.0
    with pytest.raises(ValueError, match="novel accuracy"):
        harmonic_mean(50.0, -1.0)
    with pytest.raises(ValueError, match="base accuracy"):
        harmonic_mean(float("nan"), 1.0)


def test_split_aggregation_matches_numpy():
    splits = [{"top1": 76.2, "top5": 94.1, "num_samples": 3783},
              {"top1": 77.9, "top5": 95.0, "num_samples": 3734},
              {"top1": 75.4, "top5": 93.6, "num_samples": 3696}]
    out = aggregate_splits(splits)
    for name in ("top1", "top5"):
        values = np.array([s[name] for s in splits])
        assert out[name] == pytest.approx(values.mean()) and out[f"{name}_std"] == pytest.approx(values.std())
    assert out["top1_std"] > 0 and out["num_samples"] == 3783 + 3734 + 3696 and out["num_splits"] == 3
    assert aggregate_splits(splits, ddof=1)["top1_std"] == pytest.approx(np.std([76.2, 77.9, 75.4], ddof=1))
    assert "num_samples_std" not in out
    with pytest.raises(ValueError, match=r"metric `top5` is missing from split result 1"):
        aggregate_splits([splits[0], {"top1": 1.0}])
    with pytest.raises(ValueError, match="no split results"):
        aggregate_splits([])


def test_base_novel_split_maps_names_and_insists_on_a_partition():
    names = ["a", "b", "c", "d", "e"]
    split = base_novel_split(names, base=["d", "b"], novel=["a", "e", "c"])
    assert split.base == [3, 1] and split.novel == [0, 4, 2]  # each half in its own list's order
    assert base_novel_split(names, base=["d", "b"]).novel == [0, 2, 4]  # the rest, in the full order
    with pytest.raises(ValueError, match=r"both base and novel: \['b'\]"):
        base_novel_split(names, base=["b"], novel=["a", "b", "c", "d", "e"])
    with pytest.raises(ValueError, match=r"neither base nor novel: \['e'\]"):
        base_novel_split(names, base=["a", "b"], novel=["c", "d"])
    with pytest.raises(ValueError, match=r"base classes not in the class list: \['z'\]"):
        base_novel_split(names, base=["z"])


class Labelled:
    """A stand-in labelled dataset: samples are dicts, labels readable without loading."""

    class_names = NAMES

    def __init__(self, labels):
        self.labels = list(labels)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        return {"inputs": index, "label": self.labels[index], "group_id": index}


def test_class_subset_keeps_some_classes_renumbered():
    view = ClassSubset(Labelled(LABELS), classes=[2, 0])
    assert view.class_names == ["cello", "archery"] and len(view) == 8
    assert view.indices == [i for i, label in enumerate(LABELS) if label in (0, 2)]
    samples = [view[i] for i in range(len(view))]
    assert [s["label"] for s in samples] == [1 if LABELS[s["inputs"]] == 0 else 0 for s in samples]
    assert [s["group_id"] for s in samples] == view.indices  # the wrapped dataset's index: unique
    assert sample_labels(view) == view.labels == [s["label"] for s in samples]
    picked = ClassSubset(Labelled(LABELS), indices=[1, 2, 4], classes=[0])  # other classes dropped
    assert picked.indices == [4] and picked[0]["label"] == 0
    with pytest.raises(ValueError, match="class id 3 is outside the 3 classes"):
        ClassSubset(Labelled(LABELS), classes=[3])


TASKS = ["ucf101_split1", "ucf101_split2", "ucf101_split3", "hmdb51_base", "hmdb51_novel"]


def test_summaries_are_checked_naming_the_key():
    good = {"ucf101": {"splits": TASKS[:3]}, "hm": {"base": "hmdb51_base", "novel": "hmdb51_novel"}}
    check_summaries(good, TASKS)
    bad = [({"u": {"splits": ["ucf101_split1", "ucf101_split9"]}}, "eval.summaries.u.splits"),
           ({"u": {"splits": "ucf101_split1"}}, "eval.summaries.u.splits"),
           ({"u": {"base": "hmdb51_base"}}, "eval.summaries.u.novel"),
           ({"u": {"base": "hmdb51_base", "novel": "hmdb51_novel", "mean": 1}}, "eval.summaries.u.mean"),
           ({"ucf101_split1": {"splits": TASKS[:2]}}, "eval.summaries.ucf101_split1"),
           ({"u": {"folds": TASKS[:2]}}, "eval.summaries.u")]
    for summaries, key in bad:
        with pytest.raises(ConfigError) as err:
            check_summaries(summaries, TASKS)
        assert err.value.key == key


def test_summarize_gives_split_means_and_base_novel_rows():
    results = {"ucf101_split1": {"top1": 70.0, "num_samples": 10}, "ucf101_split2": {"top1": 80.0, "num_samples": 12},
               "hmdb51_base": {"top1": 80.0, "num_samples": 5}, "hmdb51_novel": {"top1": 60.0, "num_samples": 4}}
    out = summarize({"ucf101": {"splits": ["ucf101_split1", "ucf101_split2"]},
                     "hmdb51_base_novel": {"base": "hmdb51_base", "novel": "hmdb51_novel"}}, results)
    kind, metrics, parts = out["ucf101"]
    assert kind == "split_mean" and parts == ["ucf101_split1", "ucf101_split2"]
    assert metrics["top1"] == 75.0 and metrics["top1_std"] == 5.0 and metrics["num_samples"] == 22
    kind, metrics, _ = out["hmdb51_base_novel"]
    assert kind == "base_to_novel"
    assert metrics == {"base": 80.0, "novel": 60.0, "hm": pytest.approx(68.5714286), "num_samples": 9}
    with pytest.raises(ConfigError, match="reported no `mAP`"):
        summarize({"x": {"base": "hmdb51_base", "novel": "hmdb51_novel", "metric": "mAP"}}, results)
