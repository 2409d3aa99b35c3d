"""Video in CLIP space (ViFi-CLIP): the text trunk, frame encoding with temporal pooling, prompts.

References are open_clip's own ``encode_text`` / ``encode_image`` and computations written out
from the CLIP submodules.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from omniclip.errors import ConfigError
from omniclip.text_trunk import TextTrunk
from omniclip.prompts import PromptTokens, TextPrompts, add_vision_prompts
from omniclip.video_model import VideoClipModel


def test_text_trunk_equals_encode_text_from_ids_and_from_embeddings(tiny_backbone):
    clip = tiny_backbone.model
    ids = tiny_backbone.tokenizer(["a photo of a dog.", "jumping", "a very long prompt about a cat on a mat"])
    text = TextTrunk(clip)
    with torch.no_grad():
        reference = clip.encode_text(ids)
        torch.testing.assert_close(text(ids), reference, rtol=0, atol=1e-5)
        torch.testing.assert_close(text(ids, text.embed(ids)), reference, rtol=0, atol=1e-5)
    assert not any(p.requires_grad for p in text.parameters())


def test_text_trunk_unlocking_copies_what_trains(tiny_backbone):
    clip = tiny_backbone.model
    first = TextTrunk(clip, unlocked_blocks=1)
    trainable = {n for n, p in first.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("blocks.0.") for n in trainable)
    assert first.blocks[0] is not clip.transformer.resblocks[0] and first.blocks[1] is clip.transformer.resblocks[1]
    whole = TextTrunk(clip, unlocked_blocks=-1)
    assert all(p.requires_grad for p in whole.parameters())
    assert whole.token_embedding is not clip.token_embedding
    assert whole.positional_embedding.data_ptr() != clip.positional_embedding.data_ptr()
    with pytest.raises(ConfigError, match=r"text_trunk.unlocked_blocks.*outside \[-1, 2\]"):
        TextTrunk(clip, unlocked_blocks=3)


def test_text_trunk_hook_replaces_prompt_positions_before_a_block(tiny_backbone):
    """A deep text prompt: positions 1..2 replaced by learned vectors before block 1."""
    clip = tiny_backbone.model
    ids = tiny_backbone.tokenizer(["a photo of a dog."])
    context = torch.randn(2, clip.positional_embedding.shape[1])

    class Replace(torch.nn.Module):
        def forward(self, x, **_):
            return torch.cat([x[:, :1], context.expand(x.shape[0], -1, -1), x[:, 3:]], dim=1)

    text = TextTrunk(clip)
    text.register_block_hook(1, Replace())
    with torch.no_grad():
        x = clip.token_embedding(ids) + clip.positional_embedding
        x = clip.transformer.resblocks[0](x, attn_mask=clip.attn_mask)
        x = torch.cat([x[:, :1], context[None], x[:, 3:]], dim=1)
        x = clip.ln_final(clip.transformer.resblocks[1](x, attn_mask=clip.attn_mask))
        reference = x[torch.arange(1), ids.argmax(-1)] @ clip.text_projection
        torch.testing.assert_close(text(ids), reference, rtol=0, atol=1e-5)
        assert (text(ids) - clip.encode_text(ids)).abs().max() > 1e-3


def clips(batch=2, steps=3, size=32):
    torch.manual_seed(4)
    return torch.randn(batch, steps, 3, size, size)


def test_video_embedding_is_the_mean_of_per_frame_image_embeddings(tiny_backbone):
    clip = tiny_backbone.model
    model = VideoClipModel(tiny_backbone.trunk())
    frames = clips()
    with torch.no_grad():
        per_frame = torch.stack([clip.encode_image(frames[:, t]) for t in range(frames.shape[1])], dim=1)
        reference = F.normalize(per_frame.mean(dim=1), dim=-1)
        torch.testing.assert_close(model.encode(frames), reference, rtol=0, atol=1e-5)
        torch.testing.assert_close(model({"inputs": frames}), reference, rtol=0, atol=1e-5)
        torch.testing.assert_close(model.encode_frames(frames), per_frame, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match=r"expected clips \[B, T, 3, H, W\], got shape \(2, 3, 32, 32\)"):
        model.encode(frames[:, 0])
    with pytest.raises(ConfigError, match="no text tower of its own"):
        model.encode_text(torch.zeros(1, 77, dtype=torch.long))


def test_vision_prompts_follow_the_bridge_and_prompt_layout(tiny_backbone):
    """Prompts appended after the patch tokens at the input, replaced before block 1; class token pooled."""
    visual = tiny_backbone.model.visual
    trunk = tiny_backbone.trunk()
    hooks = add_vision_prompts(trunk, num_tokens=4, depth=2)
    model = VideoClipModel(trunk)
    frames = clips(batch=1, steps=2)
    images = frames.flatten(0, 1)
    with torch.no_grad():
        x = visual.conv1(images).flatten(2).transpose(1, 2)
        x = torch.cat([visual.class_embedding.expand(2, 1, -1), x], dim=1) + visual.positional_embedding
        x = torch.cat([x, hooks[0].tokens.expand(2, -1, -1)], dim=1)
        x = visual.ln_pre(x)
        x = visual.transformer.resblocks[0](x)
        x = torch.cat([x[:, :-4], hooks[1].tokens.expand(2, -1, -1)], dim=1)
        x = visual.transformer.resblocks[1](x)
        per_frame = visual.ln_post(x[:, 0]) @ visual.proj
        reference = F.normalize(per_frame.view(1, 2, -1).mean(1), dim=-1)
        torch.testing.assert_close(model.encode(frames), reference, rtol=0, atol=1e-5)
    trainable = model.trainable_state_dict()
    assert set(trainable) == {"trunk.block_hooks.0.tokens", "trunk.block_hooks.1.tokens"}
    model.encode(frames).sum().backward()
    assert hooks[0].tokens.grad is not None and hooks[1].tokens.grad.abs().sum() > 0
    assert all(p.grad is None for p in visual.parameters())
    with pytest.raises(ConfigError, match=r"vision_prompts.depth.*outside \[1, 2\]"):
        add_vision_prompts(tiny_backbone.trunk(), num_tokens=4, depth=3)
    with pytest.raises(ConfigError, match="num_tokens`: must be >= 1"):
        PromptTokens(8, 0, append=True)


def test_text_prompts_start_as_the_template_and_follow_the_deep_prompt_layout(tiny_backbone):
    clip, tokenizer = tiny_backbone.model, tiny_backbone.tokenizer
    names = ["dog", "jumping_jack"]
    with torch.no_grad():
        shallow = TextPrompts(TextTrunk(clip), tokenizer, init="a photo of a", depth=1)
        assert shallow.num_tokens == 4
        # initialised from the template's own words, the prompt equals the plain template
        reference = clip.encode_text(tokenizer(["a photo of a dog.", "a photo of a jumping jack."]))
        torch.testing.assert_close(shallow.class_embeddings(names), reference, rtol=0, atol=1e-5)

        text = TextTrunk(clip)
        deep = TextPrompts(text, tokenizer, init="a photo of a", depth=2)
        deep.context.normal_()
        ids = tokenizer(["a photo of a dog."])
        x = clip.token_embedding(ids)
        x = torch.cat([x[:, :1], deep.context[None], x[:, 5:]], dim=1) + clip.positional_embedding
        x = clip.transformer.resblocks[0](x, attn_mask=clip.attn_mask)
        x = torch.cat([x[:, :1], deep.deep["1"].tokens[None], x[:, 5:]], dim=1)
        x = clip.ln_final(clip.transformer.resblocks[1](x, attn_mask=clip.attn_mask))
        expected = x[torch.arange(1), ids.argmax(-1)] @ clip.text_projection
        torch.testing.assert_close(deep.class_embeddings(["dog"]), expected, rtol=0, atol=1e-5)
    assert {n for n, p in deep.named_parameters() if p.requires_grad} == {"context", "deep.1.tokens"}
    with pytest.raises(ConfigError, match=r"text_prompts.depth.*outside \[1, 2\]"):
        TextPrompts(TextTrunk(clip), tokenizer, depth=3)
