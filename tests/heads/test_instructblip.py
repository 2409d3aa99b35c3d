"""InstructBLIP: the vision tower as a trunk, and the head fed external features.

A tiny random InstructBLIP in transformers' own test sizes (vision 32 wide x 2 layers, image 30,
patch 2; Q-Former 32 x 2; a 2-layer OPT 16 wide; 10 query tokens). The references are
transformers' own ``vision_model(pixel_values)`` and ``generate(pixel_values=...)``.
"""

from __future__ import annotations

import pytest
import torch
from transformers import (
    Blip2Config,
    Blip2VisionModel,
    InstructBlipConfig,
    InstructBlipForConditionalGeneration,
)

from omniclip.blip_trunk import BlipVisionTrunk
from omniclip.errors import ConfigError
from omniclip.heads import InstructBlipHead
from tests.tools import load_tool

IMAGE_TOKEN = 98
QUERIES = 10
_BENCH = load_tool("bench_instructblip")  # holds the one definition of the tiny config


def tiny_config(**overrides) -> InstructBlipConfig:
    """transformers' test sizes, QUERIES query tokens, IMAGE_TOKEN (tools/bench_instructblip.py holds
    the one definition, so the benchmark's --tiny is this model)."""
    config = _BENCH.tiny_config(**overrides)
    assert (config.num_query_tokens, config.image_token_index) == (QUERIES, IMAGE_TOKEN)
    return config


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    model = InstructBlipForConditionalGeneration(tiny_config()).eval()
    with torch.no_grad():
        model.query_tokens.normal_()  # initialised to zeros
    return model


def prompts(batch: int, lengths=(3, 3)):
    """LM prompts ``<image>*10 <bos> text`` (left-padded) and Q-Former instructions."""
    torch.manual_seed(1)
    rows, masks = [], []
    longest = max(lengths)
    for n in lengths[:batch]:
        text = [2, *torch.randint(3, 90, (n - 1,)).tolist()]
        pad = longest - n
        rows.append([1] * pad + [IMAGE_TOKEN] * QUERIES + text)
        masks.append([0] * pad + [1] * (QUERIES + n))
    qformer_ids = torch.randint(3, 90, (batch, 5))
    return torch.tensor(rows), torch.tensor(masks), qformer_ids


def test_trunk_fed_the_images_own_patch_tokens_equals_the_vision_model(model):
    trunk = BlipVisionTrunk(model.vision_model)
    pixels = torch.randn(3, 3, 30, 30)
    with torch.no_grad():
        features = trunk.normed_tokens(trunk.forward_features(trunk.patch_embed(pixels)))
        reference = model.vision_model(pixel_values=pixels).last_hidden_state
        pooled = trunk.forward_image(pixels)
    assert features.shape == (3, 226, 32)
    torch.testing.assert_close(features, reference, rtol=0, atol=1e-5)
    torch.testing.assert_close(pooled, reference[:, 0], rtol=0, atol=1e-5)  # the normalised class token
    spec = trunk.spec()
    assert (spec.width, spec.patch_size, spec.num_positions, spec.image_size, spec.num_blocks, spec.embed_dim) == \
        (32, 2, 226, 30, 2, 32)


def test_trunk_over_blip2_skip_unlock_and_frozen_parts():
    torch.manual_seed(0)
    vision = Blip2VisionModel(Blip2Config(vision_config={"hidden_size": 32, "intermediate_size": 37,
                                                         "num_hidden_layers": 3, "num_attention_heads": 4,
                                                         "image_size": 30, "patch_size": 2}).vision_config).eval()
    trunk = BlipVisionTrunk(vision, skip_blocks=1, unlocked_blocks=1, unlock_class_token=True)
    trainable = {n for n, p in trunk.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("blocks.0.") or n == "class_embedding" for n in trainable)
    assert trunk.blocks[0] is not vision.encoder.layers[1] and trunk.blocks[1] is vision.encoder.layers[2]
    assert trunk.class_embedding is not vision.embeddings.class_embedding
    trunk.train()
    assert trunk.blocks[0].training and not trunk.blocks[1].training and not trunk.ln_post.training
    tokens = torch.randn(2, 225, 32)
    with torch.no_grad():  # skipping block 0: tokens + positions go straight into layers 1 and 2
        x = torch.cat([vision.embeddings.class_embedding.expand(2, 1, 32), tokens], 1)
        x = x + vision.embeddings.position_embedding
        for layer in vision.encoder.layers[1:]:
            x = layer(x)
        torch.testing.assert_close(trunk.forward_features(tokens), x, rtol=0, atol=1e-5)
    with pytest.raises(ConfigError, match="trunk.interpolate_positions"):
        trunk.forward_features(torch.randn(2, 16, 32))
    with pytest.raises(ConfigError, match="not a BLIP-family vision model"):
        BlipVisionTrunk(torch.nn.Linear(2, 2))


@pytest.mark.parametrize("generate_kwargs", [{"max_new_tokens": 6}, {"max_new_tokens": 5, "num_beams": 3}])
def test_head_on_vision_features_gives_exactly_transformers_generate(model, generate_kwargs):
    input_ids, attention_mask, qformer_ids = prompts(2, lengths=(3, 5))
    pixels = torch.randn(2, 3, 30, 30)
    expected = model.generate(pixel_values=pixels, qformer_input_ids=qformer_ids, input_ids=input_ids,
                              attention_mask=attention_mask, do_sample=False, **generate_kwargs)
    trunk, head = BlipVisionTrunk(model.vision_model), InstructBlipHead(model)
    with torch.no_grad():
        features = trunk.normed_tokens(trunk.forward_features(trunk.patch_embed(pixels)))
    got = head.generate(features, qformer_ids, input_ids, attention_mask=attention_mask, do_sample=False,
                        **generate_kwargs)
    assert torch.equal(got, expected)
    assert got.shape[1] > input_ids.shape[1]  # something was generated
    # the features matter: another image's features give other tokens
    with torch.no_grad():
        other_features = trunk.normed_tokens(trunk.forward_features(trunk.patch_embed(torch.randn(2, 3, 30, 30))))
    other = head.generate(other_features, qformer_ids, input_ids, attention_mask=attention_mask, do_sample=False,
                          **generate_kwargs)
    assert not torch.equal(other, expected)


def test_head_refuses_features_of_another_width_and_prompts_without_image_tokens(model):
    head = InstructBlipHead(model)
    input_ids, _, qformer_ids = prompts(1)
    with pytest.raises(ConfigError, match="features are 1024 wide but this InstructBLIP's Q-Former reads 32"):
        head.generate(torch.randn(1, 257, 1024), qformer_ids, input_ids, max_new_tokens=2)
    with pytest.raises(ValueError, match=r"must hold 10 image tokens \(id 98\); found \[0\]"):
        head.generate(torch.randn(1, 226, 32), qformer_ids, input_ids[:, QUERIES:], max_new_tokens=2)


def test_a_point_cloud_lens_into_the_instructblip_tower_feeds_the_head(model):
    """The whole path: Point-BERT tokenizer -> Perceiver lens -> InstructBLIP's vision tower -> head."""
    from omniclip.model import build_lens_model

    trunk = BlipVisionTrunk(model.vision_model)
    tokenizer_cfg = {"num_groups": 16, "group_size": 8, "eval_fps_start": 0}
    with pytest.raises(ConfigError, match=r"lens.latent_dim_head.*64 exceeds latent_dim 32"):  # not a crash in SDPA
        build_lens_model("pointcloud", trunk, tokenizer_cfg=tokenizer_cfg)
    lens_model, config = build_lens_model("pointcloud", trunk, tokenizer_cfg=tokenizer_cfg,
                                          lens_cfg={"latent_dim_head": 8, "cross_dim_head": 8})
    assert config["lens"]["latent_dim"] == 32 and config["lens"]["num_latents"] == 225  # sized from the tower
    assert config["lens"]["latent_heads"] == 4
    lens_model.eval()
    head = InstructBlipHead(model)
    input_ids, attention_mask, qformer_ids = prompts(2)
    clouds = torch.rand(2, 256, 3)
    with torch.no_grad():
        features = trunk.normed_tokens(lens_model.forward_features(clouds))
        tokens = head.generate(features, qformer_ids, input_ids, attention_mask=attention_mask, max_new_tokens=4)
        # the head reads exactly what the frozen tower makes of the lens latents
        latents = lens_model.lens(lens_model.tokenizer(clouds))
        x = torch.cat([model.vision_model.embeddings.class_embedding.expand(2, 1, 32), latents], 1)
        x = x + model.vision_model.embeddings.position_embedding
        reference = model.vision_model.post_layernorm(model.vision_model.encoder(inputs_embeds=x).last_hidden_state)
    torch.testing.assert_close(features, reference, rtol=0, atol=1e-5)
    assert tokens.shape == (2, input_ids.shape[1] + 4)
