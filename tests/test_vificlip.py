"""Strict import of ViFi-CLIP checkpoints, on state dicts in the published layout built here."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from omniclip.backbone import load_backbone
from omniclip.convert import UntrustedPickleError
from omniclip.errors import CheckpointMismatchError
from omniclip.vificlip import load_vificlip


class YacsLikeConfig:
    """Stands in for the pickled yacs config node of the published files."""

    def __init__(self):
        self.MODEL = {"ARCH": "ViT-B/16"}


def fresh_backbone(noise: float = 0.0, seed: int = 0):
    backbone = load_backbone("omniclip-tiny")
    if noise:
        torch.manual_seed(seed)
        with torch.no_grad():
            for p in backbone.model.parameters():
                p.add_(noise * torch.randn_like(p))
    return backbone


def published_state(source, prompts: bool = False, width_text=None):
    """``model`` of a ViFi-CLIP training dict, from the towers of ``source``."""
    clip = source.model
    state = {f"module.image_encoder.{k}": v.clone() for k, v in clip.visual.state_dict().items()}
    state.update({f"module.text_encoder.transformer.{k}": v.clone() for k, v in clip.transformer.state_dict().items()})
    state.update({f"module.text_encoder.ln_final.{k}": v.clone() for k, v in clip.ln_final.state_dict().items()})
    state["module.text_encoder.positional_embedding"] = clip.positional_embedding.detach().clone()
    state["module.text_encoder.text_projection"] = clip.text_projection.detach().clone()
    state["module.logit_scale"] = clip.logit_scale.detach().clone()
    vision_width, text_width = clip.visual.class_embedding.shape[-1], clip.positional_embedding.shape[-1]
    torch.manual_seed(7)
    if prompts:
        state["module.image_encoder.VPT"] = torch.randn(4, vision_width)
        state["module.image_encoder.transformer.resblocks.1.VPT_shallow"] = torch.randn(4, vision_width)
        state["module.prompt_learner.ctx"] = torch.randn(4, text_width)
        state["module.text_encoder.transformer.resblocks.1.VPT_shallow"] = torch.randn(4, text_width)
        state["module.prompt_learner.token_prefix"] = torch.randn(3, 1, text_width)
        state["module.prompt_learner.token_suffix"] = torch.randn(3, 72, text_width)
    else:
        state["module.prompt_learner.complete_text_embeddings"] = torch.randn(3, 77, text_width)
    return state


def clips():
    torch.manual_seed(3)
    return torch.randn(2, 3, 3, 32, 32)


def test_full_finetune_checkpoint_reproduces_the_source_towers(tmp_path):
    source = fresh_backbone(noise=0.05)
    path = tmp_path / "vificlip_k400.pth"
    torch.save({"model": published_state(source), "optimizer": {}, "epoch": 29, "max_accuracy": 83.9,
                "config": YacsLikeConfig()}, path)
    with pytest.raises(UntrustedPickleError, match="trust_pickle=True"):
        load_vificlip(path, fresh_backbone())
    base = fresh_backbone()
    imported = load_vificlip(path, base, trust_pickle=True)
    assert imported.text_prompts is None and imported.report.ignored == 1  # the class prompts' buffer
    frames = clips()
    with torch.no_grad():
        per_frame = torch.stack([source.model.encode_image(frames[:, t]) for t in range(3)], dim=1)
        torch.testing.assert_close(imported.model.encode(frames), F.normalize(per_frame.mean(1), dim=-1),
                                   rtol=0, atol=1e-5)
        # the text tower is the checkpoint's, the word embedding the base CLIP's
        names = ["archery", "playing_guitar"]
        ids = base.tokenizer(["archery", "playing guitar"])
        clip = source.model
        x = base.model.token_embedding(ids) + clip.positional_embedding
        x = clip.ln_final(clip.transformer(x, attn_mask=clip.attn_mask))
        expected = F.normalize(x[torch.arange(2), ids.argmax(-1)] @ clip.text_projection, dim=-1)
        torch.testing.assert_close(imported.class_embeddings(names), expected, rtol=0, atol=1e-5)
    assert float(base.model.logit_scale) == pytest.approx(float(source.model.logit_scale))


def test_bridge_and_prompt_checkpoint_loads_every_prompt():
    source = fresh_backbone(noise=0.05)
    state = published_state(source, prompts=True)
    imported = load_vificlip({"model": state}, fresh_backbone())
    hooks = imported.model.trunk.block_hooks
    assert set(hooks) == {"0", "1"} and hooks["0"].append and not hooks["1"].append
    assert torch.equal(hooks["0"].tokens, state["module.image_encoder.VPT"])
    assert torch.equal(hooks["1"].tokens, state["module.image_encoder.transformer.resblocks.1.VPT_shallow"])
    prompts = imported.text_prompts
    assert prompts.num_tokens == 4 and torch.equal(prompts.context, state["module.prompt_learner.ctx"])
    assert torch.equal(prompts.deep["1"].tokens, state["module.text_encoder.transformer.resblocks.1.VPT_shallow"])
    assert imported.report.ignored == 2  # token_prefix, token_suffix
    with torch.no_grad():
        embeddings = imported.class_embeddings(["archery", "golf"])
    assert embeddings.shape == (2, source.model.text_projection.shape[1])


def test_a_checkpoint_that_does_not_match_is_refused_with_every_key_named():
    source = fresh_backbone(noise=0.05)
    state = published_state(source)
    state["module.image_encoder.extra_adapter.weight"] = torch.zeros(2)
    del state["module.text_encoder.text_projection"]
    state["module.logit_scale"] = torch.zeros(3)
    with pytest.raises(CheckpointMismatchError) as error:
        load_vificlip({"model": state}, fresh_backbone())
    message = str(error.value)
    assert "1 missing, 1 unexpected, 1 shape mismatches" in message
    assert "  text_projection" in message
    assert "image_encoder.extra_adapter.weight -> visual.extra_adapter.weight" in message
    assert "logit_scale: (3,) vs ()" in message
