"""Tokenizers whose tokens sit on a ViT's patch grid: the patch order, the point projection and the
spectrogram layout, each against an independent computation."""

import pytest
import torch
from torch import nn

from omniclip.modalities.audio import AudioGridTokenizer
from omniclip.modalities.audio.features import fbank_picture, kaldi_fbank, normalize_fbank
from omniclip.modalities.pointcloud.projection import depth_map
from omniclip.modalities.pointcloud.tokenizers import ProjectionTokenizer
from omniclip.patch_grid import PatchGridEncoder, patchify


def test_patchify_matches_a_vit_patch_embedding():
    """A linear map of patchify's rows equals the ViT's conv1 patch embedding, flattened as
    `ViTTrunk.patch_embed` does: same patch order, same value order within a patch."""
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 5, kernel_size=4, stride=4, bias=False)
    pictures = torch.randn(2, 3, 12, 8)
    expected = conv(pictures).flatten(2).transpose(1, 2)  # [B, 3 * 2, 5]
    got = patchify(pictures, 4) @ conv.weight.reshape(5, -1).T
    torch.testing.assert_close(got, expected)
    # by hand: patch 1 is the top row's second patch
    torch.testing.assert_close(patchify(pictures, 4)[:, 1], pictures[:, :, 0:4, 4:8].reshape(2, -1))
    with pytest.raises(ValueError, match="picture size 12x8 is not a multiple of the patch size 5"):
        patchify(pictures, 5)


def test_patch_grid_encoder_is_one_mlp_per_patch():
    torch.manual_seed(0)
    encoder = PatchGridEncoder(2, 8, 4, out_dim=3, hidden_dim=6)
    pictures = torch.randn(1, 2, 8, 8)
    tokens = encoder(pictures)
    assert tokens.shape == (1, 4, 3) and encoder.num_tokens == 4
    torch.testing.assert_close(tokens[0, 3], encoder.mlp(pictures[0, :, 4:8, 4:8].reshape(-1)))
    with pytest.raises(ValueError, match=r"pictures must be 8x8, got \[1, 2, 4, 4\]"):
        encoder(torch.zeros(1, 2, 4, 4))


def test_projection_puts_each_point_in_its_pixel_and_keeps_the_nearest():
    tokenizer = ProjectionTokenizer(image_size=4, patch_size=2, token_dim=3)
    points = torch.tensor([[
        [-0.9, 0.9, 0.2],   # top-left pixel (row 0, col 0)
        [-0.8, 0.8, 0.5],   # same pixel, nearer: kept
        [0.9, -0.9, -0.3],  # bottom-right pixel (row 3, col 3)
        [0.1, 0.6, 3.0],    # row 0, col 2; depth clamped to 1
        [1.5, 0.0, 0.0],    # outside the image: ignored
    ]])  # fmt: skip
    picture = tokenizer.project(points)
    depth = torch.zeros(4, 4)
    depth[0, 0], depth[3, 3], depth[0, 2] = 0.5, -0.3, 1.0
    hit = torch.zeros(4, 4)
    hit[0, 0] = hit[3, 3] = hit[0, 2] = 1.0
    torch.testing.assert_close(picture[0], torch.stack([depth, hit]))
    # colour columns are ignored; tokens are the encoder of the picture's patches
    coloured = torch.cat([points, torch.rand(1, 5, 3)], dim=-1)
    torch.testing.assert_close(tokenizer(coloured), tokenizer.encoder(picture))
    assert tokenizer.num_tokens == 4 and tokenizer.out_dim == 3


def test_projection_of_a_dense_surface_is_the_renderers_silhouette():
    """The tokenizer's camera is the demo renderer's: a dense surface projects to its rendering's mask."""
    from omniclip.demo.render import render
    from omniclip.demo.world import WorldConfig, generate

    shapes = generate(WorldConfig(render_points=4096), torch.tensor([0, 4, 9]), torch.Generator().manual_seed(0))
    picture = ProjectionTokenizer(32, 8, 4).project(shapes.surface)
    silhouette = render(shapes.surface, 32)[:, 1] > 0
    assert torch.equal(picture[:, 1] > 0, silhouette)
    depth, _ = depth_map(shapes.surface, 32)
    torch.testing.assert_close(picture[:, 0][silhouette], depth[silhouette].clamp(-1, 1))


def test_projection_rejects_empty_and_malformed_clouds():
    tokenizer = ProjectionTokenizer(8, 4, 3)
    with pytest.raises(ValueError, match="point cloud has no points"):
        tokenizer(torch.zeros(2, 0, 3))
    with pytest.raises(ValueError, match=r"point cloud must have shape \[B, N, 3\] or \[B, N, 6\], got \[5, 3\]"):
        tokenizer(torch.zeros(5, 3))
    with pytest.raises(ValueError, match="image_size 10 is not a multiple of patch_size 4"):
        ProjectionTokenizer(10, 4, 3)


def test_fbank_picture_lays_time_left_to_right_and_high_bands_on_top():
    fbank = torch.zeros(1, 8, 4)  # [B, frames, mel]
    fbank[0, 0, 3] = 4.0  # first frame, highest band -> top-left
    fbank[0, 7, 0] = 8.0  # last frame, lowest band -> bottom-right
    picture = fbank_picture(fbank, 4)  # 8 frames -> 4 columns (pairs averaged), 4 bands -> 4 rows
    expected = torch.zeros(1, 1, 4, 4)
    expected[0, 0, 0, 0] = 2.0
    expected[0, 0, 3, 3] = 4.0
    torch.testing.assert_close(picture, expected)


def test_audio_grid_tokenizer_reads_the_normalised_fbank_picture():
    torch.manual_seed(0)
    tokenizer = AudioGridTokenizer(6, image_size=8, patch_size=4, hidden_dim=5, sample_rate=16000,
                                   num_mel_bins=16, target_frames=24).eval()
    waves = torch.randn(2, 4000) * 0.1
    fbank = normalize_fbank(kaldi_fbank(waves, 16000, 16, target_frames=24))
    expected = tokenizer.encoder.mlp(patchify(fbank_picture(fbank, 8), 4))
    torch.testing.assert_close(tokenizer(waves), expected)
    assert tokenizer.num_tokens == 4 and tokenizer.out_dim == 6
    with pytest.raises(ValueError, match=r"expects waveform clips \[B, T\]"):
        tokenizer(torch.zeros(4000))
