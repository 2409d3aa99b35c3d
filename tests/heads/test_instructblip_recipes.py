"""The InstructBLIP lens recipes and the import of the published ViT-Lens EVA-g 3D lens.

The EVA-g checkpoint is built here with random weights in the published layout (the ViT-Lens
trainer's ``{epoch, state_dict, optimizer}``, DDP ``module.`` prefixes; ``visual.visual_adapter``,
``visual.perceiver``, the frozen ``visual.eva_vit.*`` tower and ``visual.eva_vit_proj``, the CLIP
image and text towers) at tiny sizes, and its converted forward is checked against explicit ops on
the raw tensors and transformers' own tiny InstructBLIP vision tower.

The recipes compose at full size (tower and anchors named, lens heads as wide as the tower's) and
under ``debug=default``; the 3D one trains two steps into a tiny InstructBLIP tower saved with
``save_pretrained`` (as wide as the tiny CLIP its anchors come from), and ``omniclip-describe``
answers with the exported lens.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf
from safetensors.torch import load_file
from transformers import BlipImageProcessor, InstructBlipForConditionalGeneration, InstructBlipProcessor

from omniclip import describe, train
from omniclip.blip_backbone import InstructBlipBackbone
from omniclip.convert import get_converter, main
from omniclip.errors import ConfigError
from omniclip.model import load_lens_model
from omniclip.recipe import AnchoredBackbone, build_backbone
from tests.heads.test_describe import word_tokenizer
from tests.heads.test_instructblip import QUERIES, tiny_config
from tests.modalities.pointcloud.test_datasets import make_objaverse_triplets
from tests.modalities.pointcloud.test_convert import SMALL, reference_tokens
from tests.modalities.pointcloud.test_tokenizers import pointbert_reference_keys, random_state
from tests.reference import perceiver_reference_keys, reference_perceiver

WIDTH = 32  # the tiny tower's width
SIDE = 4  # image 8, patch 2: 16 patch positions, so 16 lens latents need no interpolation
LENS = {"latent_dim": WIDTH, "num_latents": SIDE * SIDE, "depth": 2, "cross_dim_head": 8, "latent_heads": 4,
        "latent_dim_head": 8, "input_dim": SMALL["token_dim"]}


@pytest.fixture(scope="module")
def blip():
    torch.manual_seed(0)
    config = tiny_config()
    config.vision_config.image_size = 2 * SIDE
    return InstructBlipForConditionalGeneration(config).eval()


def evag_checkpoint(seed: int = 0) -> dict:
    """Every part of a published EVA-g 3D lens file, tiny: what the converter must map or skip."""
    gen = torch.Generator().manual_seed(seed)
    state = {f"visual.visual_adapter.{k}": v
             for k, v in random_state(pointbert_reference_keys(SMALL["encoder_dim"], SMALL["token_dim"]), seed).items()}
    lens_keys = perceiver_reference_keys(SMALL["token_dim"], WIDTH, SIDE * SIDE, 2, 8, 4 * 8)
    state.update({f"visual.perceiver.{k}": torch.randn(s, generator=gen) * (0.3 if len(s) > 1 else 0.1)
                  for k, s in lens_keys.items()})
    for name, shape in {"cls_token": (1, 1, WIDTH), "pos_embed": (1, 17, WIDTH), "norm.weight": (WIDTH,),
                        "blocks.0.attn.qkv.weight": (3 * WIDTH, WIDTH), "blocks.0.mlp.fc1.weight": (4 * WIDTH, WIDTH),
                        "blocks.1.norm1.weight": (WIDTH,)}.items():
        state[f"visual.eva_vit.{name}"] = torch.randn(shape, generator=gen)
    state["visual.eva_vit_proj"] = torch.randn(WIDTH, 24, generator=gen)
    state.update({"image.class_embedding": torch.randn(16, generator=gen), "image.proj": torch.randn(16, 24),
                  "token_embedding.weight": torch.randn(10, 16), "text_projection": torch.randn(16, 24),
                  "logit_scale": torch.tensor(4.6), "transformer.resblocks.0.ln_1.weight": torch.ones(16)})
    return {"epoch": 3, "name": "pc/evag", "state_dict": {f"module.{k}": v for k, v in state.items()},
            "optimizer": {"state": {}, "param_groups": []}}


def small_sets(backbone: str) -> list[str]:
    return ["--set", f"backbone.name={backbone}", *[f"tokenizer.{k}={v}" for k, v in SMALL.items()],
            *[f"lens.{k}={v}" for k, v in LENS.items()]]


def test_evag_defaults_are_the_published_lens_and_map_every_published_key():
    converter = get_converter("pointcloud.vitlens-evag")
    lens = converter.default_config["lens"]
    assert (lens["num_latents"], lens["latent_dim"], lens["depth"], lens["input_dim"]) == (256, 1408, 6, 384)
    assert lens["latent_heads"] * lens["latent_dim_head"] == 1408 and lens["cross_dim_head"] == 88
    assert converter.default_config["backbone"]["name"].startswith("instructblip:")
    with torch.device("meta"):
        target = converter.build(converter.default_config)
    keys = {f"visual.visual_adapter.{k}": s for k, s in pointbert_reference_keys(256, 384).items()}
    keys.update({f"visual.perceiver.{k}": s for k, s in perceiver_reference_keys(384, 1408, 256, 6, 88, 1408).items()})
    keys.update({"visual.eva_vit.blocks.38.mlp.fc2.weight": (1408, 6144), "visual.eva_vit_proj": (1408, 1280),
                 "visual.eva_vit.cls_token": (1, 1, 1408), "image.proj": (1280, 1280)})
    mapped, unmatched = converter.keymap.apply({k: torch.empty(s, device="meta") for k, s in keys.items()})
    assert unmatched == []
    assert {k: tuple(v.shape) for k, v in mapped.items()} == {k: tuple(v.shape) for k, v in target.state_dict().items()}


def test_evag_convert_forward_matches_the_raw_tensors_through_the_instructblip_tower(tmp_path, blip, capsys):
    ckpt = evag_checkpoint()
    torch.save(ckpt, tmp_path / "eva_g14_objaverse.pt")
    name = "instructblip:/models/tiny"
    assert main(["pointcloud.vitlens-evag", str(tmp_path / "eva_g14_objaverse.pt"), str(tmp_path / "out"),
                 *small_sets(name)]) == 0
    assert "loaded" in capsys.readouterr().out
    backbone = InstructBlipBackbone(blip, processor=None, name=name)
    model, _, config = load_lens_model(tmp_path / "out", backbone=backbone)
    assert config["backbone"]["name"] == name and config["converted_from"]["converter"] == "pointcloud.vitlens-evag"
    raw = {k[len("module."):]: v for k, v in ckpt["state_dict"].items()}
    tok = {k[len("visual.visual_adapter."):]: v for k, v in raw.items() if k.startswith("visual.visual_adapter.")}
    lens = {k[len("visual.perceiver."):]: v for k, v in raw.items() if k.startswith("visual.perceiver.")}
    points = torch.randn(2, 40, 3, generator=torch.Generator().manual_seed(5))
    vision = blip.vision_model
    with torch.no_grad():
        features = model.trunk.normed_tokens(model.forward_features(points))
        tokens = reference_tokens(points, tok)
        latents = reference_perceiver(lens, tokens, LENS)
        x = torch.cat([vision.embeddings.class_embedding.expand(2, 1, WIDTH), latents], 1)
        x = x + vision.embeddings.position_embedding
        expected = vision.post_layernorm(vision.encoder(inputs_embeds=x).last_hidden_state)  # what the Q-Former reads
    assert features.shape == (2, 1 + SIDE * SIDE, WIDTH)
    torch.testing.assert_close(features, expected, rtol=0, atol=1e-5)


def test_evag_convert_reports_every_missing_and_unexpected_key_and_refuses_a_clip_backbone(tmp_path, capsys):
    ckpt = evag_checkpoint()
    state = ckpt["state_dict"]
    del state["module.visual.perceiver.layers.1.0.fn.to_q.weight"]
    state["module.visual.eva_vit_head.weight"] = torch.zeros(3)
    torch.save(ckpt, tmp_path / "bad.pt")
    assert main(["pointcloud.vitlens-evag", str(tmp_path / "bad.pt"), str(tmp_path / "out"),
                 *small_sets("instructblip:/models/tiny")]) == 1
    err = capsys.readouterr().err
    assert "1 missing, 1 unexpected" in err
    assert "lens.layers.1.0.fn.to_q.weight" in err
    assert "visual.eva_vit_head.weight (no key-map rule matches)" in err
    assert not (tmp_path / "out" / "lens.safetensors").exists()
    assert main(["pointcloud.vitlens-evag", str(tmp_path / "bad.pt"), str(tmp_path / "out2"),
                 *small_sets("ViT-L-14")]) == 2
    assert "the EVA-g lens feeds InstructBLIP's EVA ViT-g tower" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------- recipes

def compose_train(overrides: list[str]):
    with initialize_config_module("omniclip.recipes", version_base="1.3"):
        return compose("train", overrides)


@pytest.mark.parametrize("modality", ["pointcloud", "audio"])
def test_instructblip_experiments_compose_at_full_size_and_under_debug(modality):
    cfg = compose_train([f"experiment={modality}/vitlens_instructblip"])
    assert cfg.backbone.name == "instructblip:Salesforce/instructblip-vicuna-7b"
    assert OmegaConf.to_container(cfg.backbone.anchors) == {"name": "ViT-bigG-14", "pretrained": "laion2b_s39b_b160k",
                                                            "precision": "fp32", "cache_dir": None}
    assert (cfg.lens.latent_dim_head, cfg.lens.cross_dim_head) == (88, 88)  # 16 heads of 88 = 1408
    assert cfg.lens.depth == (6 if modality == "pointcloud" else None)
    assert cfg.trunk.projection_dim == 1280  # EVA-g's 1408-wide class token into bigG's space
    debug = compose_train([f"experiment={modality}/vitlens_instructblip", "debug=default"])
    assert debug.backbone.name == "omniclip-tiny" and "anchors" not in debug.backbone
    assert debug.lens.latent_dim_head is None  # the modality's default, which fits the tiny CLIP
    assert debug.trunk.projection_dim is None  # a CLIP tower has its own projection


def save_tiny_instructblip(folder, width: int) -> None:
    """A tiny InstructBLIP (tower ``width`` wide, 16 patch positions) and its processor."""
    torch.manual_seed(0)
    config = tiny_config()
    config.vision_config.update({"hidden_size": width, "image_size": 2 * SIDE})
    config.qformer_config.encoder_hidden_size = width
    InstructBlipForConditionalGeneration(config).eval().save_pretrained(folder)
    InstructBlipProcessor(BlipImageProcessor(size={"height": 2 * SIDE, "width": 2 * SIDE}), word_tokenizer(True),
                          word_tokenizer(False), num_query_tokens=QUERIES).save_pretrained(folder)


@pytest.mark.parametrize("tower_width, projection", [(64, None), (WIDTH, 64)])
def test_pointcloud_instructblip_recipe_trains_into_a_tiny_instructblip_tower_and_describes(
        tmp_path, capsys, tower_width, projection):
    """A tower as wide as the anchors' embedding (the tiny CLIP's 64), and one narrower that trains
    a projection into it, as EVA-g (1408) into bigG (1280): exported with the lens, loaded back."""
    model_dir = tmp_path / "tiny_instructblip"
    save_tiny_instructblip(model_dir, width=tower_width)
    objaverse = make_objaverse_triplets(tmp_path / "objaverse")
    extra = [] if projection is None else [f"+backbone.projection_dim={projection}"]
    cfg = compose_train(["experiment=pointcloud/vitlens_instructblip", "debug=default", "backbone=instructblip_tiny",
                         *extra, f"backbone.name=instructblip:{model_dir}", f"output_dir={tmp_path / 'run'}",
                         f"anchors.cache_dir={tmp_path / 'anchors'}", f"data.train.root={objaverse}",
                         "data.train.num_points=48", "data.train.min_points=8", "modality.tokenizer.num_groups=8",
                         "modality.tokenizer.group_size=8", "trainer.max_steps=2", "trainer.batch_size=2",
                         "eval=none"])
    result = train.run(cfg)
    assert result.step == 2 and len(result.losses) == 2 and all(loss == loss for loss in result.losses)
    lens_dir = tmp_path / "run" / "lens"
    config = json.loads((lens_dir / "config.json").read_text())
    assert config["backbone"] == {"name": f"instructblip:{model_dir}", "pretrained": None}
    lens = config["lens"]
    assert (lens["latent_dim"], lens["num_latents"], lens["depth"]) == (tower_width, SIDE * SIDE, 6)  # the tower's
    assert lens["latent_dim_head"] == 16  # the backbone's head_width
    weights = load_file(str(lens_dir / "lens.safetensors"))
    if projection is None:
        assert not any(k.startswith("trunk.") for k in weights)  # the tower stays InstructBLIP's own
    else:
        assert {k for k in weights if k.startswith("trunk.")} == {"trunk.proj"}
        assert weights["trunk.proj"].shape == (tower_width, projection)
    model, backbone, _ = load_lens_model(lens_dir)
    assert isinstance(backbone, InstructBlipBackbone)
    assert model.trunk.embed_dim == (projection or tower_width)
    if projection is not None:
        torch.testing.assert_close(model.trunk.proj.detach(), weights["trunk.proj"], rtol=0, atol=0)
    np.save(tmp_path / "cloud.npy", np.random.default_rng(0).normal(size=(64, 3)).astype(np.float32))
    try:
        code = describe.main([str(tmp_path / "cloud.npy"), "--question", "w5 w7", "--lens", str(lens_dir),
                              "--instructblip", str(model_dir), "--device", "cpu", "--num-points", "64",
                              "--max-new-tokens", "2"])
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    assert code == 0, err
    assert json.loads(out.splitlines()[-1])["file"] == str(tmp_path / "cloud.npy")


def test_anchors_must_be_as_wide_as_the_lens_embedding(tmp_path):
    model_dir = tmp_path / "tiny_instructblip"
    save_tiny_instructblip(model_dir, width=WIDTH)
    spec = {"name": f"instructblip:{model_dir}", "pretrained": None, "anchors": {"name": "omniclip-tiny"}}
    with pytest.raises(ConfigError, match=r"`backbone.projection_dim`: the lens embedding of .* is 32 wide but "
                                          r"`omniclip-tiny` embeds in 64 dimensions: set backbone.projection_dim=64"):
        build_backbone(spec, torch.device("cpu"))
    assert isinstance(build_backbone({**spec, "projection_dim": 64}, torch.device("cpu")), AnchoredBackbone)
    with pytest.raises(ConfigError, match=r"`backbone.anchors.name`: .* has no contrastive towers"):
        build_backbone({**spec, "anchors": {"name": f"instructblip:{model_dir}"}}, torch.device("cpu"))
    plain = build_backbone({"name": f"instructblip:{model_dir}"}, torch.device("cpu"))
    assert isinstance(plain, InstructBlipBackbone) and not isinstance(plain, AnchoredBackbone)


def test_a_clip_trunk_takes_only_its_own_projection_width():
    """The key is shared by both trunk kinds; a CLIP tower already projects, so another width is a
    config error rather than a silently ignored key."""
    from omniclip.backbone import load_backbone

    clip = load_backbone("omniclip-tiny")
    assert clip.trunk(projection_dim=64).embed_dim == 64 == clip.trunk().embed_dim
    with pytest.raises(ConfigError, match=r"is 32, but this CLIP tower has its own projection \(64\)"):
        clip.trunk(projection_dim=32)
