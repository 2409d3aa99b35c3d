import time

import pytest
import torch
from safetensors.torch import save_file

from omniclip.backbone import load_backbone
from omniclip.errors import ConfigError, WeightsUnavailableError


def test_tiny_backbone_towers(tiny_backbone):
    text = tiny_backbone.encode_text(["a photo of a cat", "a dog"])
    image = tiny_backbone.encode_image(torch.randn(3, 3, 32, 32))
    assert text.shape == (2, 64) and image.shape == (3, 64)
    torch.testing.assert_close(text.norm(dim=-1), torch.ones(2))
    assert tiny_backbone.logit_scale == pytest.approx(1 / 0.07, rel=1e-5)
    assert not any(p.requires_grad for p in tiny_backbone.model.parameters())


def test_random_init_is_reproducible_and_leaves_global_rng_alone():
    torch.manual_seed(5)
    expected_next = torch.rand(1)
    torch.manual_seed(5)
    a = load_backbone("omniclip-tiny")
    assert torch.equal(torch.rand(1), expected_next)
    b = load_backbone("omniclip-tiny")
    c = load_backbone("omniclip-tiny", init_seed=1)
    assert a.fingerprint("text") == b.fingerprint("text") != c.fingerprint("text")


def test_local_weights_file_loads(tmp_path, tiny_backbone):
    path = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in tiny_backbone.model.state_dict().items()}, str(path))
    loaded = load_backbone("omniclip-tiny", pretrained=str(path))
    torch.testing.assert_close(loaded.encode_text(["x"]), tiny_backbone.encode_text(["x"]))
    assert loaded.fingerprint("image") == tiny_backbone.fingerprint("image")


def test_missing_local_file_and_unknown_names():
    with pytest.raises(FileNotFoundError, match="nope.safetensors does not exist"):
        load_backbone("omniclip-tiny", pretrained="/tmp/nope.safetensors")
    with pytest.raises(ConfigError, match="unknown open_clip model `ViT-Q-99`"):
        load_backbone("ViT-Q-99")
    with pytest.raises(ConfigError, match="`laion9000` is not a pretrained tag of `ViT-B-16`"):
        load_backbone("ViT-B-16", pretrained="laion9000")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_backbone("local-dir:/tmp/definitely-not-here")


def test_offline_tag_fails_fast_with_instructions(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(WeightsUnavailableError) as info:
        load_backbone("ViT-L-14", pretrained="datacomp_xl_s13b_b90k", cache_dir=str(tmp_path))
    assert time.monotonic() - start < 5
    message = str(info.value)
    assert "laion/CLIP-ViT-L-14-DataComp.XL-s13B-b90K" in message
    assert "backbone.pretrained=/path/to/file" in message
    with pytest.raises(WeightsUnavailableError, match="local-dir:"):
        load_backbone("hf-hub:timm/some-clip-model", cache_dir=str(tmp_path))
