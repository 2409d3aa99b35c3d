"""The published class splits of the video benchmarks, as shipped class lists.

The lists live beside the full class lists in ``classnames/`` and are named like them, so every
place that takes a shipped class list takes these too: ``class_subset`` of any video dataset
(`omniclip.modalities.video.datasets.protocol_view`), ``classes`` of a ``list`` / ``kinetics``
dataset, and ``Modality.class_names``.

* ``<dataset>_base`` / ``<dataset>_novel`` for ``k400``, ``hmdb51``, ``ucf101``, ``ssv2``: the
  base-to-novel halves of ViFi-CLIP (Rasheed et al., CVPR 2023; its ``labels/*_base_labels.csv``
  and ``*_novel_labels.csv``): 200 / 200, 26 / 25, 51 / 50 and 87 / 87 classes. Each list is in
  its own label order, the order of the ``path label`` lists that repository ships
  (``datasets_splits/base2novel_splits``), so those lists can be read with ``classes:
  hmdb51_base`` as they are.
* ``k600_zs_split{1,2,3}``: the three 160-class sets drawn from the Kinetics-600 classes that
  Kinetics-400 lacks, on which K400-trained models are tested zero-shot (X-CLIP's protocol, as
  ViFi-CLIP ships it in ``labels/ZS_split*_K600.csv``), alphabetical.

Only the class names were taken (data); ViFi-CLIP's sample lists are not shipped here.
"""

from __future__ import annotations

from omniclip.modalities.video.datasets import shipped_class_names
from omniclip.protocols import BaseNovelSplit, base_novel_split

#: Datasets with a published base-to-novel split.
BASE_NOVEL_DATASETS = ("k400", "hmdb51", "ucf101", "ssv2")
#: The K600 zero-shot class sets.
K600_ZERO_SHOT_SPLITS = (1, 2, 3)


def base_novel_classes(dataset: str) -> tuple[list[str], list[str]]:
    """The base and the novel class names of ``dataset``, each in its own label order."""
    if dataset not in BASE_NOVEL_DATASETS:
        raise ValueError(f"no published base-to-novel split for `{dataset}` "
                         f"(published: {', '.join(BASE_NOVEL_DATASETS)})")
    return shipped_class_names(f"{dataset}_base"), shipped_class_names(f"{dataset}_novel")


def base_novel_ids(dataset: str) -> BaseNovelSplit:
    """The split as ids into ``dataset``'s full shipped class list, checked to partition it."""
    base, novel = base_novel_classes(dataset)
    return base_novel_split(shipped_class_names(dataset), base, novel)


def k600_zero_shot_classes(split: int) -> list[str]:
    """The 160 classes of K600 zero-shot split ``split`` (1, 2 or 3)."""
    if split not in K600_ZERO_SHOT_SPLITS:
        raise ValueError(f"K600 zero-shot splits are 1, 2, 3; got {split!r}")
    return shipped_class_names(f"k600_zs_split{split}")


__all__ = ["BASE_NOVEL_DATASETS", "K600_ZERO_SHOT_SPLITS", "base_novel_classes", "base_novel_ids",
           "k600_zero_shot_classes"]
