"""Evaluation protocols beyond one zero-shot pass: few-shot training subsets, base-to-novel class
splits, and the aggregation of results over several official splits.

The pieces know no modality; they work on integer class labels and class names.

* **Few-shot** (ViFi-CLIP's K = 2 / 4 / 8 / 16): train on exactly K samples of every class of a
  training split, evaluate on the full test split. `few_shot_subset` draws the K samples per class
  from a seed, so a K-shot run is reproducible and another seed gives another draw.
* **Base-to-novel**: the classes are split in two halves; a model trains (few-shot) on the base
  half only and is evaluated on each half with a classifier over that half's classes alone;
  the headline number is the harmonic mean of the two accuracies (`harmonic_mean`), which
  rewards keeping the novel classes rather than trading them for base accuracy.
* **Several splits** (UCF101 and HMDB51 ship three train/test splits; base-to-novel and K600
  zero-shot are run three times): papers report the mean and standard deviation over the
  splits (`aggregate_splits`).

`ClassSubset` is the dataset view all of this needs: some samples of a labelled dataset, and
optionally only some of its classes, with labels renumbered to the kept classes so a classifier
(or a training objective) over those classes alone lines up with them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
from torch.utils.data import Dataset

from omniclip.errors import ConfigError


def sample_labels(dataset: Any) -> list[int]:
    """The integer label of every sample, read without loading any sample.

    Datasets expose them as ``labels`` (a sequence of ints) or as ``items`` whose entries carry a
    ``label`` (the video and audio datasets); reading ``dataset[i]`` would decode every file.
    """
    labels = getattr(dataset, "labels", None)
    if labels is None and hasattr(dataset, "items"):
        labels = [getattr(item, "label") for item in dataset.items]
    if labels is None:
        raise TypeError(f"{type(dataset).__name__} exposes neither `labels` nor `items` with a `label`: "
                        "its samples' classes cannot be read without loading them")
    values = [int(label) for label in labels]
    if len(values) != len(dataset):
        raise ValueError(f"{type(dataset).__name__} has {len(dataset)} samples but {len(values)} labels")
    return values


def _class_name(class_id: int, class_names: Sequence[str] | None) -> str:
    if class_names is not None and 0 <= class_id < len(class_names):
        return f"`{class_names[class_id]}` (label {class_id})"
    return f"label {class_id}"


def few_shot_subset(
    labels: Sequence[int],
    shots: int,
    seed: int,
    class_names: Sequence[str] | None = None,
    num_classes: int | None = None,
) -> list[int]:
    """Indices of exactly ``shots`` samples of every class, in ascending order.

    Each class draws its samples without replacement from its own generator, seeded by
    ``(seed, class id)``: the draw is the same on every run and machine for a seed, differs
    between seeds, and one class's draw does not depend on how many samples other classes have
    (adding videos of one class leaves the others' shots unchanged). ``num_classes`` (or the
    length of ``class_names``) makes a class with no sample at all an error too, rather than
    silently absent from the subset.

    Raises ValueError naming the first class with fewer than ``shots`` samples.
    """
    if isinstance(shots, bool) or int(shots) != shots or shots < 1:
        raise ValueError(f"shots must be a positive integer, got {shots!r}")
    values = np.asarray([int(label) for label in labels], dtype=np.int64)
    if values.size and values.min() < 0:
        raise ValueError(f"labels must be non-negative class ids, got {int(values.min())}")
    if num_classes is None and class_names is not None:
        num_classes = len(class_names)
    present = int(values.max()) + 1 if values.size else 0
    if num_classes is not None and present > num_classes:
        raise ValueError(f"label {present - 1} is outside the {num_classes} classes")
    total = num_classes if num_classes is not None else present
    chosen: list[np.ndarray] = []
    for class_id in range(total):
        members = np.flatnonzero(values == class_id)
        if members.size == 0 and num_classes is None:
            continue  # a gap in the labels of an unnamed class list: nothing to draw from
        if members.size < shots:
            raise ValueError(f"class {_class_name(class_id, class_names)} has {members.size} samples, "
                             f"fewer than the {shots} shots asked for")
        rng = np.random.default_rng([int(seed), class_id])
        chosen.append(rng.choice(members, size=int(shots), replace=False))
    if not chosen:
        raise ValueError("no labelled samples to draw shots from")
    return sorted(int(i) for i in np.concatenate(chosen))


@dataclass(frozen=True)
class BaseNovelSplit:
    """Class ids (into the full class list) of the base and the novel half, each in the order
    its list gives them (that order is the label order of the half's own classifier)."""

    base: list[int]
    novel: list[int]


def base_novel_split(
    class_names: Sequence[str], base: Sequence[str], novel: Sequence[str] | None = None
) -> BaseNovelSplit:
    """Map base (and novel) class names onto ids of ``class_names``.

    ``novel`` defaults to every class not in ``base``, in the full list's order. The halves must
    not share a class, and with ``novel`` given they must cover every class exactly once: a
    published split that does not partition the dataset's classes was read against the wrong
    class list, and the numbers would not be comparable.
    """
    index = {name: i for i, name in enumerate(class_names)}
    if len(index) != len(class_names):
        raise ValueError("class_names has duplicates")
    for part, names in (("base", base), ("novel", novel or ())):
        unknown = [n for n in names if n not in index]
        if unknown:
            raise ValueError(f"{part} classes not in the class list: {unknown[:5]}")
        if len(set(names)) != len(names):
            raise ValueError(f"{part} classes have duplicates")
    if novel is None:
        chosen = set(base)
        novel = [n for n in class_names if n not in chosen]
    shared = sorted(set(base) & set(novel))
    if shared:
        raise ValueError(f"classes both base and novel: {shared[:5]}")
    left = [n for n in class_names if n not in set(base) | set(novel)]
    if left:
        raise ValueError(f"classes neither base nor novel: {left[:5]}")
    if not base or not novel:
        raise ValueError("base and novel must each hold at least one class")
    return BaseNovelSplit(base=[index[n] for n in base], novel=[index[n] for n in novel])


def harmonic_mean(base: float, novel: float) -> float:
    """``2 * base * novel / (base + novel)``; 0 when either accuracy is 0 (the limit, and what
    the papers print), so a model that forgets the novel classes entirely scores 0."""
    for name, value in (("base", base), ("novel", novel)):
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"{name} accuracy must be a finite non-negative number, got {value!r}")
    if base == 0 or novel == 0:
        return 0.0
    return 2.0 * base * novel / (base + novel)


def aggregate_splits(results: Sequence[Mapping[str, Any]], ddof: int = 0) -> dict[str, float | int]:
    """Mean and standard deviation of every metric over the results of several splits.

    Returns ``{metric: mean, f"{metric}_std": std}`` for every numeric metric of the first result
    (each must be present in every result), plus ``num_splits``; ``num_samples`` is summed, as
    it counts what was evaluated. ``ddof=0`` is the population deviation (NumPy's default);
    pass 1 for the sample deviation.
    """
    if not results:
        raise ValueError("no split results to aggregate")
    if not 0 <= ddof < len(results):
        raise ValueError(f"ddof {ddof} needs more than {ddof} results, got {len(results)}")
    names = [k for k, v in results[0].items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    out: dict[str, float | int] = {}
    for name in names:
        missing = [i for i, r in enumerate(results) if name not in r]
        if missing:
            raise ValueError(f"metric `{name}` is missing from split result {missing[0]}")
        values = np.asarray([float(r[name]) for r in results])
        if name == "num_samples":
            out[name] = int(values.sum())
            continue
        out[name] = float(values.mean())
        out[f"{name}_std"] = float(values.std(ddof=ddof))
    out["num_splits"] = len(results)
    return out


class ClassSubset(Dataset):
    """Some samples of a labelled dataset, optionally restricted to some of its classes.

    Args:
        dataset: a single-label dataset whose samples are dicts with ``label`` and which exposes
            its labels (see `sample_labels`) and, when ``classes`` is given, ``class_names``.
        indices: the samples to keep (default: all); with ``classes``, samples of other classes
            are dropped from them.
        classes: class ids to keep, in the order of the new labels: label ``classes[j]`` becomes
            ``j`` and ``class_names`` becomes their names, so the subset reads as a dataset of
            those classes alone (base-only training, per-half evaluation).

    Sample dicts pass through unchanged apart from ``label``; a ``group_id`` stays the wrapped
    dataset's index, which is unique, so multi-view evaluation still groups correctly.
    """

    multilabel = False

    def __init__(self, dataset: Dataset, indices: Sequence[int] | None = None,
                 classes: Sequence[int] | None = None) -> None:
        if getattr(dataset, "multilabel", False):
            raise ValueError("a class subset needs a single-label dataset")
        labels = sample_labels(dataset)
        chosen = list(range(len(labels))) if indices is None else [int(i) for i in indices]
        bad = [i for i in chosen if not 0 <= i < len(labels)]
        if bad:
            raise IndexError(f"index {bad[0]} is outside the {len(labels)} samples")
        names = getattr(dataset, "class_names", None)
        self.dataset = dataset
        self.remap: dict[int, int] | None = None
        self.class_names: list[str] | None = list(names) if names is not None else None
        if classes is not None:
            classes = [int(c) for c in classes]
            if names is None:
                raise ValueError(f"{type(dataset).__name__} has no `class_names` to restrict")
            outside = [c for c in classes if not 0 <= c < len(names)]
            if outside:
                raise ValueError(f"class id {outside[0]} is outside the {len(names)} classes")
            if len(set(classes)) != len(classes):
                raise ValueError("classes has duplicates")
            self.remap = {c: j for j, c in enumerate(classes)}
            self.class_names = [names[c] for c in classes]
            chosen = [i for i in chosen if labels[i] in self.remap]
        self.indices = chosen
        self.labels = [labels[i] if self.remap is None else self.remap[labels[i]] for i in chosen]
        for key in ("split", "train"):  # what callers read of a dataset besides its samples
            if hasattr(dataset, key):
                setattr(self, key, getattr(dataset, key))

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.dataset[self.indices[index]]
        if self.remap is not None:
            label = int(sample["label"])
            if label not in self.remap:
                raise RuntimeError(f"sample {self.indices[index]} has label {label}, unlike its listed label")
            sample = {**sample, "label": self.remap[label]}
        return sample


# ------------------------------------------------------------------------- eval summaries

def check_summaries(summaries: Mapping[str, Any] | None, task_names: Sequence[str],
                    key: str = "eval.summaries") -> None:
    """Check an eval config's ``summaries`` before anything runs.

    Each entry is either ``{splits: [task, ...]}`` (mean and std of every metric over those
    tasks: the three UCF101 / HMDB51 splits) or ``{base: task, novel: task, metric: top1}``
    (base, novel and harmonic-mean accuracy of a base-to-novel evaluation).
    """
    if not summaries:
        return
    if not isinstance(summaries, Mapping):
        raise ConfigError(key, f"expected a mapping of summary name -> entry, got {type(summaries).__name__}")
    known = set(task_names)
    for name, spec in summaries.items():
        where = f"{key}.{name}"
        if name in known:
            raise ConfigError(where, "a summary may not share its name with a task (both are result rows)")
        if not isinstance(spec, Mapping):
            raise ConfigError(where, "expected {splits: [...]} or {base: ..., novel: ...}")
        if "splits" in spec:
            extra = sorted(set(spec) - {"splits"})
            splits = spec["splits"]
            if extra:
                raise ConfigError(f"{where}.{extra[0]}", "unknown key of a split summary (known: splits)")
            if isinstance(splits, str) or not isinstance(splits, Sequence) or len(splits) < 2:
                raise ConfigError(f"{where}.splits", "expected a list of at least two task names")
            parts = [(f"{where}.splits", task) for task in splits]
        elif "base" in spec:
            extra = sorted(set(spec) - {"base", "novel", "metric"})
            if extra:
                raise ConfigError(f"{where}.{extra[0]}", "unknown key of a base-to-novel summary "
                                                         "(known: base, novel, metric)")
            if "novel" not in spec:
                raise ConfigError(f"{where}.novel", "missing: the task evaluating the novel classes")
            if not isinstance(spec.get("metric", "top1"), str):
                raise ConfigError(f"{where}.metric", "expected a metric name such as top1")
            parts = [(f"{where}.base", spec["base"]), (f"{where}.novel", spec["novel"])]
        else:
            raise ConfigError(where, "expected {splits: [...]} or {base: ..., novel: ...}")
        for part_key, task in parts:
            if task not in known:
                raise ConfigError(part_key, f"`{task}` is not a task of this eval config "
                                            f"(tasks: {', '.join(task_names)})")


def summarize(
    summaries: Mapping[str, Any] | None, results: Mapping[str, Mapping[str, Any]]
) -> dict[str, tuple[str, dict[str, Any], list[str]]]:
    """Summary name -> (kind, metrics, the tasks it combines) for every entry of ``summaries``
    (see `check_summaries`), from the metrics of each task by name."""
    out: dict[str, tuple[str, dict[str, Any], list[str]]] = {}
    for name, spec in (summaries or {}).items():
        if "splits" in spec:
            parts = list(spec["splits"])
            out[name] = ("split_mean", aggregate_splits([results[t] for t in parts]), parts)
            continue
        metric = spec.get("metric", "top1")
        parts = [spec["base"], spec["novel"]]
        values = []
        for task in parts:
            if metric not in results[task]:
                raise ConfigError(f"eval.summaries.{name}.metric", f"task `{task}` reported no `{metric}` "
                                                                   f"(it has {', '.join(results[task])})")
            values.append(float(results[task][metric]))
        base, novel = values
        metrics = {"base": base, "novel": novel, "hm": harmonic_mean(base, novel),
                   "num_samples": sum(int(results[t].get("num_samples", 0)) for t in parts)}
        out[name] = ("base_to_novel", metrics, parts)
    return out


__all__ = [
    "BaseNovelSplit",
    "ClassSubset",
    "aggregate_splits",
    "base_novel_split",
    "check_summaries",
    "few_shot_subset",
    "harmonic_mean",
    "sample_labels",
    "summarize",
]
