import pytest
import torch

from omniclip.backbone import load_backbone
from omniclip.errors import ConfigError
from omniclip.trunk import interpolate_positions


@pytest.fixture(scope="module")
def vit_b16():
    torch.manual_seed(0)
    return load_backbone("ViT-B-16")


def test_patch_tokens_reproduce_encode_image(vit_b16):
    """Feeding an image's own patch tokens through the token path is exactly encode_image."""
    trunk = vit_b16.trunk()
    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        reference = vit_b16.model.encode_image(images)
        via_tokens = trunk(trunk.patch_embed(images))
        via_image = trunk.forward_image(images)
    assert via_tokens.shape == (2, 512)
    torch.testing.assert_close(via_tokens, reference, atol=1e-5, rtol=0)
    torch.testing.assert_close(via_image, reference, atol=1e-5, rtol=0)


def test_frozen_trunk_passes_gradients_to_its_input(vit_b16):
    trunk = vit_b16.trunk()
    assert not any(p.requires_grad for p in trunk.parameters())
    tokens = torch.randn(1, 196, 768, requires_grad=True)
    trunk(tokens).sum().backward()
    assert tokens.grad is not None and tokens.grad.abs().sum() > 0
    assert all(p.grad is None for p in trunk.parameters())


def test_unlocked_parts_are_copies_and_train_mode_keeps_frozen_eval(vit_b16):
    trunk = vit_b16.trunk(unlocked_blocks=2, unlock_class_token=True)
    visual = vit_b16.model.visual
    trainable = {n for n, p in trunk.named_parameters() if p.requires_grad}
    assert "class_embedding" in trainable
    assert any(n.startswith("blocks.0.") for n in trainable)
    assert any(n.startswith("blocks.1.") for n in trainable)
    assert not any(n.startswith("blocks.2.") for n in trainable)
    assert trunk.class_embedding is not visual.class_embedding
    assert trunk.blocks[0] is not visual.transformer.resblocks[0]
    assert trunk.blocks[2] is visual.transformer.resblocks[2]
    trunk.train()
    assert trunk.blocks[0].training and not trunk.blocks[2].training and not trunk.ln_post.training
    # training the copy leaves the image tower untouched
    with torch.no_grad():
        trunk.class_embedding.add_(1.0)
    assert not torch.equal(trunk.class_embedding, visual.class_embedding)


def test_skip_blocks_enters_later_block(vit_b16):
    trunk = vit_b16.trunk(skip_blocks=4)
    assert len(trunk.blocks) == 8
    assert trunk.blocks[0] is vit_b16.model.visual.transformer.resblocks[4]
    tokens = torch.randn(1, 196, 768)
    full = vit_b16.trunk()
    with torch.no_grad():
        x = full.embed_tokens(tokens)
        for block in full.blocks[4:]:
            x = block(x)
        torch.testing.assert_close(trunk(tokens), full.forward_head(x))


def test_grad_checkpointing_same_values_and_grads(vit_b16):
    trunk = vit_b16.trunk(unlocked_blocks=1)
    tokens = torch.randn(2, 196, 768, requires_grad=True)
    out = trunk(tokens).square().sum()
    (g_plain,) = torch.autograd.grad(out, tokens)
    trunk.set_grad_checkpointing(True)
    out_ckpt = trunk(tokens).square().sum()
    (g_ckpt,) = torch.autograd.grad(out_ckpt, tokens)
    torch.testing.assert_close(out, out_ckpt)
    torch.testing.assert_close(g_plain, g_ckpt)


def test_block_hook_runs_before_its_block(vit_b16):
    trunk = vit_b16.trunk()
    seen = {}

    class Recorder(torch.nn.Module):
        def forward(self, x, **kwargs):
            seen.update(kwargs, shape=tuple(x.shape))
            return x * 0  # observable effect: block 11 sees zeros

    trunk.register_block_hook(11, Recorder())
    tokens = torch.randn(1, 196, 768)
    with torch.no_grad():
        out = trunk(tokens, num_frames=3)
        expected = trunk.forward_head(trunk.blocks[11](torch.zeros(1, 197, 768)))
    assert seen == {"num_frames": 3, "shape": (1, 197, 768)}
    torch.testing.assert_close(out, expected)


def test_token_count_mismatch_is_a_config_error(vit_b16):
    trunk = vit_b16.trunk()
    with pytest.raises(ConfigError, match=r"input gives 100 tokens .* 196 patch positions"):
        trunk(torch.randn(1, 100, 768))
    flexible = vit_b16.trunk(interpolate_positions=True)
    assert flexible(torch.randn(1, 100, 768)).shape == (1, 512)


def test_interpolate_positions_square_and_identity():
    pos = torch.randn(1 + 16, 8)
    assert interpolate_positions(pos, (4, 4), 16) is pos
    up = interpolate_positions(pos, (4, 4), 64)
    assert up.shape == (65, 8)
    torch.testing.assert_close(up[0], pos[0])
    # a constant table stays constant under bicubic resampling
    const = torch.ones(17, 8)
    torch.testing.assert_close(interpolate_positions(const, (4, 4), 36), torch.ones(37, 8))
    seq = interpolate_positions(pos, (4, 4), 10)
    assert seq.shape == (11, 8)


def test_interpolate_positions_non_square_grid_matches_reference():
    """A 3x5 grid (H != W) resampled to 4x4 equals separable cubic resampling along H then W.

    Reading the table with H and W transposed (reshape to 5x3) gives a different answer, so this
    catches it; the reference is written from the cubic-convolution formula."""
    from tests.reference import reference_resample_positions

    torch.manual_seed(0)
    pos = torch.randn(1 + 3 * 5, 6)
    got = interpolate_positions(pos, (3, 5), 16)
    torch.testing.assert_close(got, reference_resample_positions(pos, (3, 5), 4), atol=1e-5, rtol=0)
    # structure check independent of the kernel: a table varying only along W (columns) must
    # give a result varying only along columns, identical for every output row
    along_w = torch.arange(5.0).repeat(3).unsqueeze(-1).expand(15, 2)
    out = interpolate_positions(torch.cat([torch.zeros(1, 2), along_w]), (3, 5), 16)[1:].reshape(4, 4, 2)
    torch.testing.assert_close(out, out[:1].expand(4, 4, 2))
    assert (out[0, 1:, 0] > out[0, :-1, 0]).all()


def test_trunk_with_non_square_grid_interpolates_along_the_right_axes():
    """A ViT on 32x48 images (2x3 grid of 16-px patches) fed 9 tokens adds the positional table
    resampled from its own 2x3 layout, computed here from the raw parameters."""
    import open_clip

    from omniclip.trunk import ViTTrunk
    from tests.reference import reference_resample_positions

    torch.manual_seed(0)
    visual = open_clip.model._build_vision_tower(
        embed_dim=16, vision_cfg=open_clip.model.CLIPVisionCfg(layers=1, width=32, head_width=16,
                                                                  patch_size=16, image_size=(32, 48)))
    with torch.no_grad():
        visual.positional_embedding.normal_()
    trunk = ViTTrunk(visual, interpolate_positions=True)
    assert trunk.grid_size == (2, 3)
    tokens = torch.randn(1, 9, 32)
    with torch.no_grad():
        got = trunk.embed_tokens(tokens)
    pos = reference_resample_positions(visual.positional_embedding.detach(), (2, 3), 3)
    cls = visual.class_embedding.detach().reshape(1, 1, -1)
    expected = torch.cat([cls, tokens], 1) + pos
    # embed_tokens ends with ln_pre
    torch.testing.assert_close(got, trunk.ln_pre(expected), atol=1e-5, rtol=0)
