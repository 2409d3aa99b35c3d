import math

import pytest
import torch
import torch.nn.functional as F

from omniclip.errors import ConfigError
from omniclip.losses import ClassificationLoss, ContrastiveLoss, LogitScale


def _unit(*shape: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g, dtype=torch.float64), dim=-1)


def _ref_ce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against probability rows, written out: -sum t * log(exp(l) / sum exp(l))."""
    probs = torch.exp(logits) / torch.exp(logits).sum(dim=1, keepdim=True)
    return -(targets * torch.log(probs)).sum(dim=1).mean()


def _ref_pair_loss(f: torch.Tensor, a: torch.Tensor, scale: float, targets: torch.Tensor) -> torch.Tensor:
    logits = scale * f @ a.T
    return (_ref_ce(logits, targets) + _ref_ce(logits.T, targets.T)) / 2


def test_contrastive_two_kinds_weighted_matches_reference():
    f, img, txt = _unit(6, 5, seed=0), _unit(6, 5, seed=1), _unit(6, 5, seed=2)
    scale = torch.tensor(7.0, dtype=torch.float64)
    loss, logs = ContrastiveLoss({"image": 3.0, "text": 1.0}, gather=False)(f, {"image": img, "text": txt}, scale)

    eye = torch.eye(6, dtype=torch.float64)
    ref_img, ref_txt = _ref_pair_loss(f, img, 7.0, eye), _ref_pair_loss(f, txt, 7.0, eye)
    torch.testing.assert_close(loss, 0.75 * ref_img + 0.25 * ref_txt)
    assert logs["loss_image"] == pytest.approx(ref_img.item())
    assert logs["loss_text"] == pytest.approx(ref_txt.item())
    assert logs["loss"] == pytest.approx(loss.item())
    assert logs["logit_scale"] == 7.0
    expected_acc = ((f @ img.T).argmax(dim=1) == torch.arange(6)).double().mean().item()
    assert logs["acc_image"] == pytest.approx(expected_acc)


def test_contrastive_default_is_mean_of_image_and_text():
    f, img, txt = _unit(4, 3, seed=3), _unit(4, 3, seed=4), _unit(4, 3, seed=5)
    eye = torch.eye(4, dtype=torch.float64)
    loss, _ = ContrastiveLoss(gather=False)(f, {"image": img, "text": txt}, 10.0)
    torch.testing.assert_close(loss, (_ref_pair_loss(f, img, 10.0, eye) + _ref_pair_loss(f, txt, 10.0, eye)) / 2)


def test_contrastive_duplicate_keys_use_soft_targets():
    # Rows 0 and 3 share a key (e.g. two augmented views of one image) but not an embedding.
    f, img = _unit(5, 4, seed=6), _unit(5, 4, seed=7)
    keys = ["dog", "cat", "car", "dog", "bus"]
    loss_fn = ContrastiveLoss({"image": 1.0}, gather=False)
    loss, logs = loss_fn(f, {"image": img}, 5.0, anchor_keys={"image": keys})

    targets = torch.eye(5, dtype=torch.float64)
    targets[0, [0, 3]] = targets[3, [0, 3]] = 0.5
    torch.testing.assert_close(loss, _ref_pair_loss(f, img, 5.0, targets))
    assert not torch.isclose(loss, loss_fn(f, {"image": img}, 5.0)[0])
    best = (f @ img.T).argmax(dim=1)
    expected_acc = sum(keys[int(j)] == keys[i] for i, j in enumerate(best)) / 5
    assert logs["acc_image"] == pytest.approx(expected_acc)


def test_contrastive_identical_duplicates_soft_equals_diagonal():
    # With bit-identical duplicate anchors the duplicate columns have equal logits, so the
    # uniform soft target and the diagonal give the same loss (documented in ContrastiveLoss).
    f, txt = _unit(5, 4, seed=19), _unit(5, 4, seed=20)
    txt[3] = txt[0]
    loss_fn = ContrastiveLoss({"text": 1.0}, gather=False)
    soft, _ = loss_fn(f, {"text": txt}, 5.0, anchor_keys={"text": ["a", "b", "c", "a", "d"]})
    torch.testing.assert_close(soft, loss_fn(f, {"text": txt}, 5.0)[0])


def test_contrastive_absent_kind_is_skipped_and_weights_renormalised():
    f, img = _unit(4, 3, seed=8), _unit(4, 3, seed=9)
    loss, logs = ContrastiveLoss({"image": 3.0, "text": 1.0}, gather=False)(f, {"image": img}, 2.0)
    torch.testing.assert_close(loss, _ref_pair_loss(f, img, 2.0, torch.eye(4, dtype=torch.float64)))
    assert "loss_text" not in logs and "acc_text" not in logs


def test_contrastive_gradient_flows_to_features_not_anchors():
    f = _unit(4, 3, seed=10).requires_grad_()
    img = _unit(4, 3, seed=11).requires_grad_()
    loss, _ = ContrastiveLoss({"image": 1.0}, gather=False)(f, {"image": img}, 3.0)
    loss.backward()
    assert f.grad is not None and f.grad.abs().sum() > 0
    assert img.grad is None


def test_contrastive_bad_inputs():
    loss = ContrastiveLoss({"image": 1.0}, gather=False)
    f = _unit(4, 3, seed=12)
    with pytest.raises(ValueError, match=r"anchor kind\(s\) depth have no loss weight \(weighted: image\)"):
        loss(f, {"image": f, "depth": f}, 1.0)
    with pytest.raises(ValueError, match="no anchors for any weighted kind"):
        loss(f, {}, 1.0)
    with pytest.raises(ValueError, match=r"anchors `image` have shape \(3, 3\), features \(4, 3\)"):
        loss(f, {"image": f[:3]}, 1.0)
    with pytest.raises(ValueError, match="anchor_keys `image` has 2 keys for a batch of 4"):
        loss(f, {"image": f}, 1.0, anchor_keys={"image": ["a", "b"]})
    with pytest.raises(ConfigError, match=r"config `loss.weights.text`: must be a finite weight >= 0, got -1"):
        ContrastiveLoss({"text": -1.0})


def test_classification_int_labels_match_cross_entropy():
    f, classes = _unit(6, 4, seed=13), _unit(3, 4, seed=14)
    labels = torch.tensor([0, 2, 1, 1, 0, 2])
    loss, logs = ClassificationLoss(label_smoothing=0.1)(f, classes, labels, 20.0)
    logits = 20.0 * f @ classes.T
    torch.testing.assert_close(loss, F.cross_entropy(logits, labels, label_smoothing=0.1))
    smoothed = torch.full((6, 3), 0.1 / 3, dtype=torch.float64)
    smoothed[torch.arange(6), labels] += 0.9
    torch.testing.assert_close(loss, _ref_ce(logits, smoothed))
    assert logs["acc"] == pytest.approx((logits.argmax(1) == labels).double().mean().item())


def test_classification_soft_targets_and_multi_label():
    f, classes = _unit(4, 4, seed=15), _unit(3, 4, seed=16)
    logits = 10.0 * f @ classes.T
    probs = torch.tensor([[0.7, 0.3, 0.0], [0.0, 1.0, 0.0], [0.5, 0.0, 0.5], [0.2, 0.2, 0.6]], dtype=torch.float64)
    loss, _ = ClassificationLoss()(f, classes, probs, 10.0)
    torch.testing.assert_close(loss, _ref_ce(logits, probs))

    multi_hot = torch.tensor([[1.0, 1.0, 0.0], [0.0, 1.0, 0.0], [1.0, 0.0, 1.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    loss, logs = ClassificationLoss(multi_label=True)(f, classes, multi_hot, 10.0)
    sig = 1 / (1 + torch.exp(-logits))
    ref = -(multi_hot * torch.log(sig) + (1 - multi_hot) * torch.log(1 - sig)).mean()
    torch.testing.assert_close(loss, ref)
    hits = multi_hot[torch.arange(4), logits.argmax(1)] > 0
    assert logs["acc"] == pytest.approx(hits.double().mean().item())


def test_classification_bad_targets():
    f, classes = _unit(4, 4, seed=17), _unit(3, 4, seed=18)
    with pytest.raises(ValueError, match=r"float targets must be \[B, C\] = \[4, 3\], got \(4, 2\)"):
        ClassificationLoss()(f, classes, torch.zeros(4, 2), 1.0)
    with pytest.raises(ValueError, match="multi_label=True needs multi-hot float targets"):
        ClassificationLoss(multi_label=True)(f, classes, torch.zeros(4, dtype=torch.long), 1.0)


def test_logit_scale_fixed_is_a_buffer():
    scale = LogitScale(50.0)
    assert list(scale.parameters()) == []
    assert "log_scale" in scale.state_dict()
    assert scale().item() == pytest.approx(50.0)
    assert not scale().requires_grad
    clip_logit_scale = torch.tensor(math.log(100.0))  # CLIP stores the log; callers pass its exp()
    assert LogitScale(clip_logit_scale.exp())().item() == pytest.approx(100.0)


def test_logit_scale_learnable_gradient_and_clamp():
    scale = LogitScale(20.0, learnable=True)
    assert [n for n, p in scale.named_parameters() if p.requires_grad] == ["log_scale"]
    scale().backward()
    assert scale.log_scale.grad.item() == pytest.approx(20.0)  # d exp(s) / ds = exp(s)

    capped = LogitScale(200.0, learnable=True, max_scale=100.0)
    out = capped()
    assert out.item() == pytest.approx(100.0)
    out.backward()
    assert capped.log_scale.grad.item() == 0.0
    assert capped.log_scale.item() == pytest.approx(math.log(200.0))


def test_logit_scale_rejects_non_positive():
    with pytest.raises(ConfigError, match=r"config `logit_scale.init`: must be a positive finite scale, got 0.0"):
        LogitScale(0.0)
