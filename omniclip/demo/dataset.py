"""Labelled samples paired with an image and a caption, drawn once, as datasets of the framework's
sample dicts; shared by the 3D demo (clouds + renderings) and the audio demo (clips + spectrograms)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from omniclip.demo.render import render
from omniclip.demo.world import WorldConfig, balanced_labels, generate

#: ``draw(labels, generator) -> (inputs, images, captions)``: one fresh sample of each label, its
#: image for the CLIP image tower and its caption.
Draw = Callable[[Tensor, torch.Generator], tuple[Tensor, Tensor, list[str]]]


@dataclass
class PairedSet:
    """Inputs, their images and captions, drawn once (``name`` keys the image anchors)."""

    name: str
    inputs: Tensor  # [N, ...] what the lens reads: points [N, P, 3] or waveforms [N, T]
    images: Tensor  # [N, 3, S, S]
    captions: list[str]
    labels: Tensor  # [N] class indices

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def make_paired_set(draw: Draw, classes: Sequence[int], per_class: int, seed: int, name: str,
                    chunk: int | None = 256) -> PairedSet:
    """``per_class`` samples of each class in ``classes`` (class-major), drawn from ``seed``,
    ``chunk`` at a time to bound memory (None: in one draw; the draws depend on the chunking)."""
    generator = torch.Generator().manual_seed(seed)
    labels = balanced_labels(classes, per_class)
    step = chunk or max(len(labels), 1)
    inputs, images, captions = [], [], []
    for start in range(0, len(labels), step):
        batch_inputs, batch_images, batch_captions = draw(labels[start : start + step], generator)
        inputs.append(batch_inputs)
        images.append(batch_images)
        captions += batch_captions
    return PairedSet(name, torch.cat(inputs), torch.cat(images), captions, labels)


class PairedDataset(Dataset):
    """Sample dicts (``inputs``, ``label``, ``text``, ``image``, ``image_key``, ``path``) of a `PairedSet`."""

    def __init__(self, samples: PairedSet) -> None:
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        key = f"{self.samples.name}/{index}"
        return {
            "inputs": self.samples.inputs[index],
            "label": int(self.samples.labels[index]),
            "text": self.samples.captions[index],
            "image": self.samples.images[index],
            "image_key": key,
            "path": key,
        }


def shape_draw(world: WorldConfig, image_size: int = 32) -> Draw:
    """Clouds of ``world`` with their depth renderings at ``image_size`` px."""

    def draw(labels: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor, list[str]]:
        shapes = generate(world, labels, generator)
        return shapes.points, render(shapes.surface, image_size), shapes.captions

    return draw


def make_shape_set(world: WorldConfig, classes: Sequence[int], per_class: int, seed: int, name: str,
                   image_size: int = 32, chunk: int = 256) -> PairedSet:
    """``per_class`` shapes of each class in ``classes`` (class-major), drawn from ``seed``."""
    return make_paired_set(shape_draw(world, image_size), classes, per_class, seed, name, chunk)
