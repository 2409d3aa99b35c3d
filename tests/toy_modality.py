"""A test-only modality that exercises the plugin contract without any real data format.

Samples are small sets of 3-d vectors whose mean encodes the class; each sample also carries a
caption and a tiny image whose colour encodes the class, so text and image anchors both exist.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn
from torch.utils.data import Dataset

from omniclip.errors import ConfigError, SampleError
from omniclip.modality import Modality, TrunkSpec

CLASSES = ["red", "green", "blue", "yellow"]


class ToyTokenizer(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, num_points: int) -> None:
        super().__init__()
        self.proj = nn.Linear(in_dim, out_dim)
        self.pos = nn.Parameter(torch.zeros(num_points, out_dim))
        self.out_dim = out_dim

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.proj(inputs) + self.pos


class ToyDataset(Dataset):
    def __init__(self, size: int, num_points: int, image_size: int, bad: tuple[int, ...] = ()) -> None:
        self.size, self.num_points, self.image_size, self.bad = size, num_points, image_size, set(bad)

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> dict[str, Any]:
        if index in self.bad:
            raise SampleError(f"toy/{index}.bin", "corrupt on purpose")
        label = index % len(CLASSES)
        centre = torch.nn.functional.one_hot(torch.tensor(label), 4).float()[:3] * 2
        points = centre + 0.3 * torch.randn(self.num_points, 3)  # random: exercises seeding
        image = torch.zeros(3, self.image_size, self.image_size)
        image[label % 3] = 1.0 + 0.5 * (label // 3)
        return {
            "inputs": points,
            "label": label,
            "text": f"a toy of class {CLASSES[label]}",
            "image": image,
            "image_key": f"toy-image-{label}",
            "path": f"toy/{index}.bin",
        }


class ToyModality(Modality):
    name = "toy"
    default_lens = {"default": {"name": "perceiver", "depth": 1, "latent_dim_head": 16, "self_per_cross_attn": 1,
                                "cross_dim_head": 16}}
    templates = {"default": ["a toy of class {}.", "a {} toy."]}

    def build_tokenizer(self, cfg: Mapping[str, Any], trunk: TrunkSpec) -> nn.Module:
        return ToyTokenizer(3, int(cfg.get("dim", 24)), int(cfg.get("num_points", 10)))

    def build_dataset(self, cfg: Mapping[str, Any], split: str, image_transform=None) -> Dataset:
        if "root" in cfg and not Path(cfg["root"]).is_dir():
            raise ConfigError("root", f"folder {cfg['root']} does not exist")
        return ToyDataset(int(cfg.get("size", 32)), int(cfg.get("num_points", 10)), int(cfg.get("image_size", 32)),
                          tuple(cfg.get("bad", ())))

    def class_names(self, dataset: str) -> list[str]:
        return list(CLASSES)
