"""The point-cloud modality plugin: registry, tokenizers and lens configs, collate, class names."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from omniclip.errors import ConfigError
from omniclip.modality import TrunkSpec, get_modality
from omniclip.model import build_lens_model
from omniclip.modalities.pointcloud import pad_clouds
from omniclip.modalities.pointcloud.lens_configs import LENSES, PUBLISHED, TOKENIZERS
from omniclip.modalities.pointcloud.templates import ULIP_TEMPLATES
from omniclip.modalities.pointcloud.tokenizers import PointBertTokenizer, PointNet2Tokenizer
from tests.modalities.pointcloud.test_datasets import MODELNET_CLASSES

SPEC = TrunkSpec(width=64, patch_size=8, num_positions=17, image_size=32, num_blocks=2, embed_dim=64)
RECIPES = Path(__file__).parents[3] / "recipes"


def test_registered_and_templates():
    modality = get_modality("pointcloud")
    assert modality.name == "pointcloud"
    templates = modality.template_set()
    assert len(templates) == len(set(templates)) == 64 and templates == list(ULIP_TEMPLATES)
    assert templates[0] == "a point cloud model of {}." and "a black and white photo of a {}" in templates
    assert all(t.count("{}") == 1 for t in templates)


def test_class_names():
    modality = get_modality("pointcloud")
    assert modality.class_names("modelnet40") == MODELNET_CLASSES and len(MODELNET_CLASSES) == 40
    assert MODELNET_CLASSES[:3] == ["airplane", "bathtub", "bed"] and "night stand" in MODELNET_CLASSES
    scan = modality.class_names("scanobjectnn")
    assert len(scan) == 15 and scan[:4] == ["bag", "bin", "box", "cabinet"] and scan[-1] == "toilet"
    with pytest.raises(ConfigError, match=r"ships no class names for `objaverse_lvis`"):
        modality.class_names("objaverse_lvis")


def test_tokenizers_from_config_and_eval_fps_start():
    modality = get_modality("pointcloud")
    tok = modality.build_tokenizer({"name": "pointbert", "num_groups": 8, "group_size": 4}, SPEC)
    assert isinstance(tok, PointBertTokenizer) and tok.out_dim == 384 and tok.num_groups == 8
    xyz = torch.rand(2, 40, 3, generator=torch.Generator().manual_seed(0))
    tok.eval()
    torch.manual_seed(1)
    _, a = tok.group(xyz)
    torch.manual_seed(2)
    _, b = tok.group(xyz)
    assert torch.equal(a, b) and torch.equal(a[:, 0], xyz[:, 0])  # eval: FPS starts at point 0
    tok.train()
    torch.manual_seed(1)
    _, c = tok.group(xyz)
    torch.manual_seed(2)
    assert not torch.equal(c, tok.group(xyz)[1])  # training: random start from torch's RNG
    pnsa = modality.build_tokenizer({"name": "pnsa", "mlp": [8, 8, 16], "token_dim": 12}, SPEC)
    assert isinstance(pnsa, PointNet2Tokenizer) and pnsa.out_dim == 12
    with pytest.raises(ConfigError, match=r"config `num_grups`: unknown option for tokenizer `pointbert`"):
        modality.build_tokenizer({"num_grups": 3}, SPEC)
    with pytest.raises(ConfigError, match=r"config `name`: unknown point-cloud tokenizer `dgcnn`"):
        modality.build_tokenizer({"name": "dgcnn"}, SPEC)


def test_lens_defaults_size_from_tiny_trunk(tiny_backbone):
    model, config = build_lens_model("pointcloud", tiny_backbone.trunk(), {"num_groups": 8, "group_size": 4}, {},
                                     "omniclip-tiny")
    lens = config["lens"]
    assert (lens["input_dim"], lens["latent_dim"], lens["num_latents"], lens["latent_heads"]) == (384, 64, 16, 1)
    out = model.eval().encode(torch.randn(2, 32, 3))
    assert out.shape == (2, 64) and torch.allclose(out.norm(dim=-1), torch.ones(2))


def test_published_lens_configs():
    assert LENSES["ViT-L-14"] | {"input_dim": 384} == PUBLISHED["vitlens-l"]["lens"]
    l14 = PUBLISHED["vitlens-l"]["lens"]
    assert (l14["num_latents"], l14["latent_dim"], l14["depth"], l14["latent_heads"], l14["latent_dim_head"],
            l14["cross_heads"], l14["cross_dim_head"], l14["self_per_cross_attn"]) == (256, 1024, 4, 16, 64, 1, 64, 1)
    big = PUBLISHED["vitlens-bigg"]
    assert (big["lens"]["latent_dim"], big["lens"]["latent_heads"], big["lens"]["latent_dim_head"],
            big["lens"]["cross_dim_head"]) == (1664, 16, 104, 104)
    assert (big["trunk"]["skip_blocks"], big["trunk"]["unlocked_blocks"], big["trunk"]["unlock_class_token"]) == (16, 2, True)
    b16 = LENSES["ViT-B-16"]
    assert b16["latent_dim"] // b16["latent_dim_head"] == b16["latent_heads"] == 12 and b16["num_latents"] == 196
    # the modality recipes spell out the same tokenizer values
    for recipe, name in (("pointcloud", "pointbert"), ("pointcloud_pnsa", "pnsa")):
        tokenizer = yaml.safe_load((RECIPES / "modality" / f"{recipe}.yaml").read_text())["tokenizer"]
        assert {k: v for k, v in tokenizer.items() if k in TOKENIZERS[name]} == TOKENIZERS[name]


def test_collate_pads_clouds_of_different_sizes_by_repeating_points():
    modality = get_modality("pointcloud")
    a, b = torch.randn(5, 3), torch.randn(3, 3)
    batch = modality.collate([{"inputs": a, "label": 1, "path": "a"}, {"inputs": b, "label": 2, "path": "b"}])
    assert batch["inputs"].shape == (2, 5, 3) and batch["labels"].tolist() == [1, 2] and batch["paths"] == ["a", "b"]
    assert torch.equal(batch["inputs"][1], b[[0, 1, 2, 0, 1]]) and torch.equal(batch["inputs"][0], a)
    same = modality.collate([{"inputs": a, "text": "x"}, {"inputs": a, "text": "y"}])
    assert same["inputs"].shape == (2, 5, 3) and same["texts"] == ["x", "y"]
    assert torch.equal(pad_clouds([b]), b[None])
