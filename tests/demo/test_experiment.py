import pytest
import torch

from omniclip.demo.experiment import evaluate, held_out_mask, prior_matching_bias, score
from omniclip.demo.lens import LensConfig, PooledHead, build_lens


def test_score_splits_seen_and_held_out_samples():
    held = held_out_mask(4, [2, 3])
    labels = torch.tensor([0, 1, 2, 3, 3])
    logits = torch.tensor([
        [5.0, 1.0, 0.0, 0.0],  # seen 0 -> 0, right
        [5.0, 1.0, 0.0, 0.0],  # seen 1 -> 0, wrong
        [0.0, 9.0, 3.0, 1.0],  # held 2 -> 1, wrong overall; among held-out -> 2, right
        [0.0, 0.0, 1.0, 2.0],  # held 3 -> 3, right
        [0.0, 0.0, 2.0, 1.0],  # held 3 -> 2, wrong
    ])  # fmt: skip
    result = score(logits, labels, held)
    assert result["all"] == pytest.approx(2 / 5)
    assert result["seen"] == pytest.approx(1 / 2)
    assert result["held_out"] == pytest.approx(1 / 3)
    assert result["held_out_among_held_out"] == pytest.approx(2 / 3)
    assert result["confusion"] == [[1, 0, 0, 0], [1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 1]]


def test_prior_matching_bias_gives_held_out_classes_their_share():
    torch.manual_seed(0)
    held = held_out_mask(10, [1, 5, 7])
    logits = torch.randn(200, 10)
    logits[:, ~held] += 1.0  # a seen-class bias, as a lens trained on seen classes has
    bias = prior_matching_bias(logits, held)
    predicted = (logits + bias * held.float()).argmax(dim=1)
    assert held[predicted].sum().item() == 60  # 3/10 of 200
    # the evaluation reports both, and the calibrated one carries the bias
    result = evaluate(torch.nn.functional.normalize(logits, dim=1), torch.randint(10, (200,)), torch.eye(10), held)
    assert set(result) == {"raw", "calibrated"} and "bias" in result["calibrated"]


@pytest.fixture(scope="module")
def backbone():
    from omniclip.backbone import load_backbone

    torch.manual_seed(0)
    return load_backbone("omniclip-demo-vit")


def trainable(model):
    return {name for name, p in model.named_parameters() if p.requires_grad}


def test_variants_share_the_lens_and_differ_only_after_it(backbone):
    cfg = LensConfig(num_groups=4, group_size=4)
    models = {v: build_lens(v, backbone, cfg, seed=3) for v in ("vit", "random_vit", "no_vit")}
    lens_keys = models["vit"].lens.state_dict()
    for model in models.values():  # same seed: the same starting tokenizer and Perceiver
        assert all(torch.equal(v, model.lens.state_dict()[k]) for k, v in lens_keys.items())
    assert models["vit"].trunk.blocks[0] is backbone.visual.transformer.resblocks[0]  # frozen, shared
    random_proj = models["random_vit"].trunk.proj
    assert random_proj.shape == backbone.visual.proj.shape and not torch.equal(random_proj, backbone.visual.proj)
    assert isinstance(models["no_vit"].trunk, PooledHead)
    assert not any(name.startswith("trunk.") for name in trainable(models["vit"]))
    assert not any(name.startswith("trunk.") for name in trainable(models["random_vit"]))
    assert {n for n in trainable(models["no_vit"]) if n.startswith("trunk.")} == {
        "trunk.norm.weight", "trunk.norm.bias", "trunk.proj.weight", "trunk.proj.bias"}
    clouds = torch.randn(2, 32, 3)
    for model in models.values():
        out = model.encode(clouds)
        assert out.shape == (2, 64) and torch.allclose(out.norm(dim=1), torch.ones(2))


def test_unknown_variant_is_rejected(backbone):
    with pytest.raises(ValueError, match="unknown lens variant `big_vit`"):
        build_lens("big_vit", backbone, LensConfig(), seed=0)
