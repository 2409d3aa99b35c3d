import pytest
import torch

from omniclip.anchors import AnchorStore
from omniclip.backbone import load_backbone


def test_text_anchors_equal_tower_and_are_cached_on_disk(tmp_path, tiny_backbone):
    texts = ["a red toy", "a blue toy", "a red toy"]
    store = AnchorStore(tiny_backbone, tmp_path)
    features = store.text(texts)
    torch.testing.assert_close(features, tiny_backbone.encode_text(texts))
    assert store.tower_calls["text"] == 1 and store.misses["text"] == 2  # the duplicate is computed once
    store.flush()

    fresh = AnchorStore(tiny_backbone, tmp_path)
    fresh.backbone = _ExplodingBackbone(tiny_backbone)  # a cache hit must never run a tower
    torch.testing.assert_close(fresh.text(texts), features)
    assert fresh.tower_calls["text"] == 0 and fresh.hits["text"] == 3


def test_image_anchors_need_images_only_on_miss(tmp_path, tiny_backbone):
    images = torch.randn(2, 3, 32, 32)
    store = AnchorStore(tiny_backbone, tmp_path)
    first = store.image(["img/a.png", "img/b.png"], images)
    torch.testing.assert_close(first, tiny_backbone.encode_image(images))
    store.flush()
    again = AnchorStore(tiny_backbone, tmp_path)
    torch.testing.assert_close(again.image(["img/b.png", "img/a.png"], None), first.flip(0))
    with pytest.raises(KeyError, match=r"\['img/c.png'\] are not cached and the batch carries no images"):
        again.image(["img/c.png"], None)


def test_cache_is_keyed_by_weights(tmp_path, tiny_backbone):
    store = AnchorStore(tiny_backbone, tmp_path)
    store.text(["a toy"])
    store.flush()
    other = load_backbone("omniclip-tiny", init_seed=123)  # same architecture, different weights
    assert other.fingerprint("text") != tiny_backbone.fingerprint("text")
    other_store = AnchorStore(other, tmp_path)
    torch.testing.assert_close(other_store.text(["a toy"]), other.encode_text(["a toy"]))
    assert other_store.misses["text"] == 1
    other_store.flush()
    assert len(list(tmp_path.glob("text/*"))) == 2


def test_a_tower_cast_in_place_after_its_key_was_read_gets_another_key():
    """trainer.frozen_dtype casts the frozen image tower after the anchor store may have read its
    key; bf16 features must not land in the float32 tower's cache."""
    backbone = load_backbone("omniclip-tiny")
    before, text = backbone.fingerprint("image"), backbone.fingerprint("text")
    assert before == load_backbone("omniclip-tiny").fingerprint("image")  # same weights, same key
    for param in backbone.model.visual.parameters():
        param.data = param.data.to(torch.bfloat16)
    after = backbone.fingerprint("image")
    assert after != before and backbone.fingerprint("text") == text
    assert after == backbone.fingerprint("image")  # then cached: one hash per tower and dtype


class _ExplodingBackbone:
    def __init__(self, backbone):
        self._backbone = backbone
        self.name = backbone.name

    def fingerprint(self, tower):
        return self._backbone.fingerprint(tower)

    def encode_text(self, texts):
        raise AssertionError("text tower ran on a cache hit")

    def encode_image(self, images):
        raise AssertionError("image tower ran on a cache hit")


def test_disabled_cache_runs_the_tower_every_time(tiny_backbone):
    store = AnchorStore(tiny_backbone, enabled=False)
    first = store.text(["a", "b", "a"])
    second = store.text(["a", "b"])
    torch.testing.assert_close(second, first[:2])
    assert store.tower_calls["text"] == 2 and store.misses["text"] == 4 and store.hits["text"] == 0
    assert store.flush() is None
