"""Every backbone recipe names a model and weights open_clip knows, so a typo fails here and not
after a download attempt on a cluster."""

from pathlib import Path

import open_clip
import pytest
import yaml

RECIPES = sorted((Path(__file__).parents[1] / "recipes" / "backbone").glob("*.yaml"))
OUR_MODELS = {"omniclip-tiny"}  # registered by omniclip.backbone, random weights by design


def _check_clip(cfg: dict, where: str) -> None:
    if cfg["name"] in OUR_MODELS:
        assert cfg["pretrained"] is None, where
        return
    assert cfg["name"] in open_clip.list_models(), f"{where}: open_clip has no model {cfg['name']}"
    assert (cfg["name"], cfg["pretrained"]) in open_clip.list_pretrained(), (
        f"{where}: open_clip has no weights `{cfg['pretrained']}` for {cfg['name']}")


@pytest.mark.parametrize("recipe", RECIPES, ids=[r.stem for r in RECIPES])
def test_backbone_recipe_names_a_known_model_and_tag(recipe):
    """An open_clip backbone names a known model and tag; an InstructBLIP tower (no contrastive
    towers) names the CLIP its lenses align to under ``anchors``, which must be known."""
    cfg = yaml.safe_load(recipe.read_text())
    if "anchors" in cfg:
        assert cfg["name"] == "???" or cfg["name"].startswith("instructblip:"), recipe.name
        _check_clip(cfg["anchors"], f"{recipe.name} anchors")
        return
    _check_clip(cfg, recipe.name)


@pytest.mark.parametrize("stem", ["vit_b16_openai", "vit_b32_openai", "vit_l14_openai"])
def test_video_backbones_are_the_quickgelu_openai_clips(stem):
    """ViFi-CLIP / X-CLIP / ILA checkpoints were trained on OpenAI CLIP, whose MLPs use QuickGELU:
    the same weights under exact GELU give different features."""
    cfg = yaml.safe_load((RECIPES[0].parent / f"{stem}.yaml").read_text())
    assert cfg["pretrained"] == "openai"
    assert open_clip.get_model_config(cfg["name"])["quick_gelu"] is True
