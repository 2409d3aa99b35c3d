"""Fixed sets of world shapes as datasets of the framework's sample dicts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import Tensor
from torch.utils.data import Dataset

from omniclip.demo.render import render
from omniclip.demo.world import WorldConfig, balanced_labels, generate


@dataclass
class ShapeSet:
    """Clouds, their renderings and captions, drawn once (``name`` keys the image anchors)."""

    name: str
    points: Tensor  # [N, P, 3]
    images: Tensor  # [N, 3, S, S]
    captions: list[str]
    labels: Tensor  # [N] indices into WorldConfig.classes

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def make_shape_set(world: WorldConfig, classes: Sequence[int], per_class: int, seed: int, name: str,
                   image_size: int = 32, chunk: int = 256) -> ShapeSet:
    """``per_class`` shapes of each class in ``classes`` (class-major), drawn from ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    labels = balanced_labels(classes, per_class)
    points, images, captions = [], [], []
    for start in range(0, len(labels), chunk):  # bounded memory for the dense render samples
        shapes = generate(world, labels[start : start + chunk], generator)
        points.append(shapes.points)
        images.append(render(shapes.surface, image_size))
        captions += shapes.captions
    return ShapeSet(name, torch.cat(points), torch.cat(images), captions, labels)


class ShapeDataset(Dataset):
    """Sample dicts (``inputs``, ``label``, ``text``, ``image``, ``image_key``, ``path``) of a `ShapeSet`."""

    def __init__(self, shapes: ShapeSet) -> None:
        self.shapes = shapes

    def __len__(self) -> int:
        return len(self.shapes)

    def __getitem__(self, index: int) -> dict[str, Any]:
        key = f"{self.shapes.name}/{index}"
        return {
            "inputs": self.shapes.points[index],
            "label": int(self.shapes.labels[index]),
            "text": self.shapes.captions[index],
            "image": self.shapes.images[index],
            "image_key": key,
            "path": key,
        }
