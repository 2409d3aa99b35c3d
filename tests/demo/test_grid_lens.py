"""The demos' grid lens: patch tokens, patch anchoring, the token fit, the data-efficiency subsets
and the reported gap, each against a hand computation."""

import pytest
import torch

from omniclip.demo.dataset import PairedDataset, PairedSet
from omniclip.demo.experiment import (
    LensTrainConfig,
    conclusion,
    curve_summary,
    curve_table,
    fit_tokens,
    subset_per_class,
    summarise,
    transfer_gap,
)
from omniclip.demo.lens import LensConfig, PatchAnchored, PatchTokens, build_lens
from omniclip.modality import default_collate
from omniclip.trunk import ViTTrunk


@pytest.fixture(scope="module")
def backbone():
    from omniclip.backbone import load_backbone

    torch.manual_seed(0)
    return load_backbone("omniclip-demo-vit")


def shapes(n: int, seed: int = 0) -> PairedSet:
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 2
    return PairedSet("s", torch.rand(n, 64, 3, generator=generator) * 1.6 - 0.8,
                     torch.rand(n, 3, 32, 32, generator=generator) * 2 - 1, [f"a {i}" for i in range(n)], labels)


def test_projection_lens_has_one_token_per_patch_and_no_perceiver(backbone):
    models = {v: build_lens(v, backbone, LensConfig(tokenizer="projection"), seed=1) for v in ("vit", "no_vit")}
    for model in models.values():
        assert isinstance(model.lens, PatchTokens) and model.tokenizer.num_tokens == 16
    clouds = shapes(2).inputs
    tokens = models["vit"].tokenizer(clouds)
    torch.testing.assert_close(models["vit"].lens(tokens), tokens)
    expected = models["vit"].trunk.forward_head(models["vit"].trunk.forward_features(tokens))
    torch.testing.assert_close(models["vit"].encode(clouds, normalize=False), expected)
    with pytest.raises(ValueError, match="unknown demo tokenizer `voxels`"):
        build_lens("vit", backbone, LensConfig(tokenizer="voxels"), seed=1)
    with pytest.raises(ValueError, match="patch tokens take no mask"):
        models["vit"].lens(tokens, mask=torch.ones(2, 16, dtype=torch.bool))


def test_patch_anchoring_adds_the_normalised_token_error_to_the_embeddings(backbone):
    model = build_lens("random_vit", backbone, LensConfig(tokenizer="projection"), seed=2)
    teacher = ViTTrunk(backbone.visual)
    batch = default_collate([PairedDataset(shapes(3))[i] for i in range(3)])
    embeddings, aux = PatchAnchored(model, teacher, weight=2.5)(batch)
    torch.testing.assert_close(embeddings, model.encode(batch["inputs"]))
    tokens = model.tokenizer(batch["inputs"])
    # the target is the *pretrained* ViT's conv1 on each sample's own image, for every variant
    target = torch.nn.functional.conv2d(batch["images"], backbone.visual.conv1.weight, stride=8).flatten(2).transpose(1, 2)
    expected = 2.5 * ((tokens - target) ** 2).sum() / (target**2).sum()
    torch.testing.assert_close(aux["patch"], expected)
    with pytest.raises(KeyError, match="patch anchoring needs each sample's `images`"):
        PatchAnchored(model, teacher, 1.0)({"inputs": batch["inputs"]})
    with pytest.raises(ValueError, match="must be > 0"):
        PatchAnchored(model, teacher, 0.0)


def test_token_fit_regresses_the_tokens_onto_the_patch_embeddings(backbone, tmp_path):
    from omniclip.demo.dataset import make_shape_set
    from omniclip.demo.world import WorldConfig

    train = make_shape_set(WorldConfig(num_points=256, render_points=2048), range(4), 8, seed=0, name="fit")
    model = build_lens("vit", backbone, LensConfig(tokenizer="projection", encoder_dim=32), seed=0)
    teacher = ViTTrunk(backbone.visual)

    def mismatch(state=None) -> float:
        probe = build_lens("vit", backbone, LensConfig(tokenizer="projection", encoder_dim=32), seed=0)
        if state is not None:
            probe.tokenizer.load_state_dict({k[len("tokenizer."):]: v for k, v in state.items()
                                             if k.startswith("tokenizer.")})
        with torch.no_grad():
            target = teacher.patch_embed(train.images)
            return float(((probe.tokenizer(train.inputs) - target) ** 2).mean() / (target**2).mean())

    cfg = LensTrainConfig(batch_size=16, token_fit_steps=60, token_fit_lr=1e-2)
    fitted = fit_tokens(model, backbone, PairedDataset(train), cfg, tmp_path / "fit", seed=0)
    before, after = mismatch(), mismatch(fitted["state"])
    assert after < 0.5 * before  # by hand: the fit halves the error on its training set at least
    assert fitted["final_mismatch"] == pytest.approx(after, rel=0.5)
    assert set(fitted["state"]) == {f"tokenizer.{k}" for k in model.tokenizer.state_dict()}


def test_subsets_are_nested_class_balanced_and_named_apart():
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    samples = PairedSet("train", torch.arange(6.0)[:, None], torch.zeros(6, 3, 2, 2), list("abcdef"), labels)
    two = subset_per_class(samples, 2)
    assert two.labels.tolist() == [0, 0, 1, 1] and two.inputs[:, 0].tolist() == [0, 1, 3, 4]
    assert two.captions == ["a", "b", "d", "e"] and two.name == "train-2pc"
    one = subset_per_class(samples, 1)
    assert one.inputs[:, 0].tolist() == [0, 3]  # nested in the larger subset
    assert subset_per_class(samples, 3) is samples


def record(vit: float, random_vit: float, no_vit: float, tower: float = 0.9) -> dict:
    def entry(value: float) -> dict:
        metrics = {"all": value, "seen": value, "held_out": value, "held_out_among_held_out": value}
        return {"raw": metrics, "calibrated": dict(metrics)}

    return {"held_out": ["x"], "image_tower": entry(tower),
            "variants": {"vit": entry(vit), "random_vit": entry(random_vit), "no_vit": entry(no_vit)}}


def test_transfer_gap_is_the_lead_over_the_better_control_per_split():
    splits = [record(0.6, 0.4, 0.5), record(0.7, 0.6, 0.3), record(0.5, 0.4, 0.45)]
    gap = transfer_gap(splits)
    assert gap["per_split"] == pytest.approx([0.1, 0.1, 0.05])
    assert gap["mean"] == pytest.approx(0.25 / 3) and gap["min"] == pytest.approx(0.05)
    assert gap["std"] == pytest.approx(((2 * (0.1 - 0.25 / 3) ** 2 + (0.05 - 0.25 / 3) ** 2) / 2) ** 0.5)
    assert gap["holds"]
    assert not transfer_gap(splits[:2])["holds"]  # fewer than 3 splits is no evidence
    assert not transfer_gap([record(0.6, 0.55, 0.5)] * 3)["holds"]  # a lead under 0.05
    noisy = transfer_gap([record(0.9, 0.4, 0.4), record(0.3, 0.4, 0.4), record(0.6, 0.55, 0.5)])
    assert noisy["mean"] > 0.05 and not noisy["holds"]  # the lead is within the spread


def test_summary_spread_and_the_printed_conclusion():
    splits = [record(0.6, 0.4, 0.5), record(0.8, 0.6, 0.3), record(0.7, 0.5, 0.4)]
    summary = summarise(splits, ("vit", "random_vit", "no_vit"))
    assert summary["vit"]["calibrated"]["held_out"] == pytest.approx(0.7)
    assert summary["vit"]["calibrated"]["std"]["held_out"] == pytest.approx(0.1)
    results = {"summary": summary, "gap": transfer_gap(splits)}
    text = conclusion(results, "3D")
    assert text.startswith("On held-out classes the 3D lens into the frozen pretrained ViT scores 0.70 ± 0.10 over 3")
    assert "against 0.50 for the better control (lens -> frozen random ViT)" in text
    assert "by +0.17 ± 0.06 (minimum +0.10)" in text and text.endswith("classes the lens never saw.")
    weak = [record(0.5, 0.5, 0.4)] * 3
    assert conclusion({"summary": summarise(weak, ("vit", "random_vit", "no_vit")), "gap": transfer_gap(weak)},
                      "audio").endswith("That is not the >= 0.05 lead beyond the spread the method claims here.")


def test_curve_table_lists_each_size():
    curve = {4: [record(0.3, 0.2, 0.1)] * 3, 150: [record(0.6, 0.4, 0.5)] * 3}
    points = curve_summary(curve, ("vit", "random_vit", "no_vit"))
    assert [p["train_per_class"] for p in points] == [4, 150]
    table = curve_table(points, ("vit", "random_vit", "no_vit")).splitlines()
    assert table[2].startswith("| 4 | 0.30 ± 0.00 / 0.30 ± 0.00 | 0.20 ± 0.00 / 0.20 ± 0.00 |")
    assert table[3].endswith("| +0.10 ± 0.00 |")


def test_token_fit_objective_at_depth_compares_after_the_teachers_first_blocks(backbone):
    from omniclip.demo.experiment import PatchEmbeddingFit

    teacher = ViTTrunk(backbone.visual)
    torch.manual_seed(0)
    tokens, images = torch.randn(2, 16, 128), torch.rand(2, 3, 32, 32) * 2 - 1
    batch = {"images": images}
    target = teacher.patch_embed(images)
    flat, _ = PatchEmbeddingFit(teacher, 0)(tokens, batch)
    torch.testing.assert_close(flat, ((tokens - target) ** 2).mean() / (target**2).mean())
    # by hand through block 0 of the open_clip tower: class token, positions, ln_pre, one block
    visual = backbone.visual

    def first_block(x):
        x = torch.cat([visual.class_embedding.expand(2, 1, -1), x], dim=1) + visual.positional_embedding
        return visual.transformer.resblocks[0](visual.ln_pre(x))

    deep, _ = PatchEmbeddingFit(teacher, 1)(tokens, batch)
    a, b = first_block(tokens), first_block(target)
    torch.testing.assert_close(deep, ((a - b) ** 2).mean() / (b**2).mean())
    torch.testing.assert_close(teacher.forward_features(tokens, depth=len(teacher.blocks)), teacher.forward_features(tokens))
    with pytest.raises(ValueError, match="token fit depth 9 is not in 0..4"):
        PatchEmbeddingFit(teacher, 9)
