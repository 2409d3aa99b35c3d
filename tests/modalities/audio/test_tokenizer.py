import pytest
import torch

from omniclip.modalities.audio.tokenizer import AudioPatchTokenizer, audio_lens_defaults


@pytest.mark.parametrize(
    ("patch", "grid"),
    [(14, (12, 50)), (16, (12, 50)), (32, (10, 49))],
)
def test_token_grid(patch, grid):
    tokenizer = AudioPatchTokenizer(width=32, patch_size=patch)
    assert tokenizer.grid_size == grid
    assert tokenizer.num_tokens == grid[0] * grid[1]
    assert tokenizer(torch.randn(2, 512, 128)).shape == (2, grid[0] * grid[1], 32)


def test_state_dict_has_reference_names_and_shapes():
    state = AudioPatchTokenizer(width=64, patch_size=14).state_dict()
    assert set(state) == {"conv1.weight", "pos_emb"}
    assert state["conv1.weight"].shape == (64, 1, 14, 14)
    assert state["pos_emb"].shape == (600, 64)


def test_forward_equals_explicit_patch_projection():
    torch.manual_seed(0)
    tokenizer = AudioPatchTokenizer(width=24, patch_size=14, stride=10)
    fbank = torch.randn(3, 512, 128)
    spec = fbank.transpose(1, 2)  # [B, mel, time], the reference's image layout
    patches = spec.unfold(1, 14, 10).unfold(2, 14, 10)  # [B, 12 mel, 50 time, 14, 14]
    patches = patches.reshape(3, 12 * 50, 14 * 14)  # mel-major token order
    weight = tokenizer.conv1.weight.reshape(24, 14 * 14)
    expected = patches @ weight.T + tokenizer.pos_emb
    torch.testing.assert_close(tokenizer(fbank), expected, rtol=1e-5, atol=1e-5)


def test_tokens_are_mel_major():
    tokenizer = AudioPatchTokenizer(width=4, patch_size=14)
    with torch.no_grad():
        tokenizer.pos_emb.zero_()
        tokenizer.conv1.weight.fill_(1.0)
    fbank = torch.zeros(1, 512, 128)
    fbank[0, 36, 25] = 1.0  # frame 36 lies only in time patch 3, mel 25 only in mel patch 2
    hit = tokenizer(fbank)[0, :, 0].nonzero().flatten().tolist()
    assert hit == [2 * 50 + 3]


def test_rejects_wrong_spectrogram_shape():
    with pytest.raises(ValueError, match=r"expects fbank \[B, 512, 128\], got shape \(2, 498, 128\)"):
        AudioPatchTokenizer(width=8, patch_size=14)(torch.zeros(2, 498, 128))


@pytest.mark.parametrize(("backbone", "width", "patch"), [("ViT-L-14", 1024, 14), ("ViT-B-16", 768, 16)])
def test_lens_defaults_match_trunk(backbone, width, patch):
    cfg = audio_lens_defaults[backbone]
    assert cfg["num_latents"] == (224 // patch) ** 2
    assert cfg["latent_dim"] == width
    assert cfg["latent_heads"] * cfg["latent_dim_head"] == width
    assert (cfg["depth"], cfg["self_per_cross_attn"], cfg["cross_heads"]) == (2, 3, 1)
