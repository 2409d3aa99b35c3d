"""Contrastive and classification losses on L2-normalised embeddings.

Gradients under data parallelism: every rank gathers the features of all ranks (with gradient)
and the frozen anchors (without), and computes the loss of the *global* batch, so every rank
holds the same loss value. The backward of `all_gather_with_grad` sums the gradient of that loss
over ranks before handing each rank its own rows, i.e. each rank's features receive
``world_size`` times their single-process gradient. DDP then averages parameter gradients over
ranks, which divides by ``world_size`` again: every parameter ends with exactly the gradient a
single process would compute on the whole global batch. Parameters that do not pass through the
gather (the logit scale) see the same global loss on every rank, so averaging leaves their
gradient exact as well.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from omniclip.distributed import (
    all_gather,
    all_gather_object,
    all_gather_with_grad,
    is_distributed,
)
from omniclip.errors import ConfigError


class LogitScale(nn.Module):
    """The temperature of cosine logits, stored as its logarithm like CLIP's ``logit_scale``.

    ``init`` is the scale itself (e.g. 100.0, or ``clip.logit_scale.exp()``). When learnable,
    ``log_scale`` is a Parameter (name it in the optimizer's no-weight-decay group); otherwise a
    buffer, saved with the state dict. The output is capped at ``max_scale``; above the cap its
    gradient is zero, as with CLIP's clamped parameter.
    """

    def __init__(self, init: float, learnable: bool = False, max_scale: float = 100.0):
        super().__init__()
        init = float(init)  # also accepts a 0-dim tensor such as clip.logit_scale.exp()
        if not init > 0 or not math.isfinite(init):
            raise ConfigError("logit_scale.init", f"must be a positive finite scale, got {init}")
        if not max_scale > 0:
            raise ConfigError("logit_scale.max_scale", f"must be positive, got {max_scale}")
        self.max_scale = float(max_scale)
        self.learnable = learnable
        log_scale = torch.tensor(math.log(init), dtype=torch.float32)
        if learnable:
            self.log_scale = nn.Parameter(log_scale)
        else:
            self.register_buffer("log_scale", log_scale)

    def forward(self) -> Tensor:
        return self.log_scale.exp().clamp(max=self.max_scale)

    def extra_repr(self) -> str:
        return f"scale={self().item():.4g}, learnable={self.learnable}, max_scale={self.max_scale:g}"


def _soft_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean over rows of -sum(targets * log_softmax(logits)); rows of ``targets`` sum to 1."""
    return -(targets * logits.log_softmax(dim=1)).sum(dim=1).mean()


def _key_ids(keys: Sequence[str]) -> list[int]:
    index: dict[str, int] = {}
    return [index.setdefault(k, len(index)) for k in keys]


class ContrastiveLoss(nn.Module):
    """Symmetric InfoNCE between modality features and each kind of frozen anchor.

    The loss is the weighted mean over anchor kinds present in the batch (weights renormalised
    over them; kinds with weight 0 are skipped) of ``(CE(logits, t) + CE(logits.T, t)) / 2`` with
    ``logits = scale * features @ anchors.T`` over the global batch. ``t`` is the diagonal, or,
    when ``anchor_keys[kind]`` is given, the uniform distribution over every pair with equal keys
    (the same caption or image twice in a batch is not a negative). With the default weights this
    is ViT-Lens's ``(loss_image + loss_text) / 2``.

    Note: when duplicates share a bit-identical anchor embedding (cached anchors), their columns
    have equal logits and the soft target gives exactly the diagonal loss; keys change the loss
    only when equal keys carry different embeddings (e.g. augmented views of one image).
    """

    def __init__(self, weights: Mapping[str, float] | None = None, gather: bool = True):
        super().__init__()
        weights = {"image": 1.0, "text": 1.0} if weights is None else dict(weights)
        if not weights:
            raise ConfigError("loss.weights", "needs at least one anchor kind")
        for kind, w in weights.items():
            if not (math.isfinite(w) and w >= 0):
                raise ConfigError(f"loss.weights.{kind}", f"must be a finite weight >= 0, got {w}")
        if sum(weights.values()) <= 0:
            raise ConfigError("loss.weights", "all weights are zero")
        self.weights = weights
        self.gather = gather

    def forward(
        self,
        features: Tensor,
        anchors: Mapping[str, Tensor],
        logit_scale: Tensor | float,
        anchor_keys: Mapping[str, Sequence[str]] | None = None,
    ) -> tuple[Tensor, dict[str, float]]:
        """Loss and logs (``loss``, ``loss_<kind>``, ``acc_<kind>``, ``logit_scale``).

        ``features`` [B, D] and each ``anchors[kind]`` [B, D] are L2-normalised, row i of each
        describing the same sample. ``acc_<kind>`` is modality-to-anchor top-1 over the global
        batch (a hit when the best anchor is any positive).
        """
        anchor_keys = anchor_keys or {}
        kinds = self._present_kinds(features, anchors, anchor_keys)
        distributed = self.gather and is_distributed()
        feats = all_gather_with_grad(features) if distributed else features
        total_weight = sum(self.weights[k] for k in kinds)
        loss = feats.new_zeros(())
        logs: dict[str, Tensor] = {}
        for kind in kinds:
            anchor = anchors[kind].detach().to(feats.dtype)
            logits = logit_scale * feats @ (all_gather(anchor) if distributed else anchor).T
            positive = None
            if kind in anchor_keys:
                keys = list(anchor_keys[kind])
                if distributed:
                    keys = [k for rank_keys in all_gather_object(keys) for k in rank_keys]
                ids = torch.tensor(_key_ids(keys), device=feats.device)
                positive = ids[:, None] == ids[None, :]
            kind_loss, hits = _symmetric_info_nce(logits, positive)
            loss = loss + self.weights[kind] / total_weight * kind_loss
            logs[f"loss_{kind}"] = kind_loss.detach()
            logs[f"acc_{kind}"] = hits.float().mean()
        logs["loss"] = loss.detach()
        logs["logit_scale"] = torch.as_tensor(logit_scale, device=feats.device).detach()
        return loss, _to_floats(logs)

    def _present_kinds(
        self, features: Tensor, anchors: Mapping[str, Tensor], anchor_keys: Mapping[str, Sequence[str]]
    ) -> list[str]:
        """The weighted anchor kinds in this batch, after checking every input's shape."""
        if features.ndim != 2:
            raise ValueError(f"features must be [B, D], got shape {tuple(features.shape)}")
        weighted = ", ".join(self.weights)
        unknown = sorted(set(anchors) - set(self.weights))
        if unknown:
            names = ", ".join(unknown)
            raise ValueError(f"anchor kind(s) {names} have no loss weight (weighted: {weighted})")
        kinds = [k for k in self.weights if k in anchors and self.weights[k] > 0]
        if not kinds:
            got = ", ".join(anchors) or "none"
            raise ValueError(f"no anchors for any weighted kind (weighted: {weighted}; got: {got})")
        batch = features.shape[0]
        for kind in kinds:
            if anchors[kind].shape != features.shape:
                shapes = f"{tuple(anchors[kind].shape)}, features {tuple(features.shape)}"
                raise ValueError(f"anchors `{kind}` have shape {shapes}")
            if kind in anchor_keys and len(anchor_keys[kind]) != batch:
                count = len(anchor_keys[kind])
                raise ValueError(f"anchor_keys `{kind}` has {count} keys for a batch of {batch}")
        return kinds


def _symmetric_info_nce(logits: Tensor, positive: Tensor | None) -> tuple[Tensor, Tensor]:
    """(CE over rows + CE over columns) / 2 and per-row top-1 hits of square ``logits``.

    ``positive`` [N, N] (symmetric, diagonal set) marks positive pairs; None means the diagonal.
    """
    if positive is None:
        targets = torch.arange(logits.shape[0], device=logits.device)
        loss = (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2
        return loss, logits.argmax(dim=1) == targets
    # Symmetric positives: the same target rows serve both directions.
    soft = positive.to(logits.dtype) / positive.sum(dim=1, keepdim=True)
    loss = (_soft_cross_entropy(logits, soft) + _soft_cross_entropy(logits.T, soft)) / 2
    return loss, positive.gather(1, logits.argmax(dim=1, keepdim=True)).squeeze(1)


def _to_floats(logs: Mapping[str, Tensor]) -> dict[str, float]:
    """One device-to-host transfer for all logged scalars."""
    values = torch.stack([v.detach().float().reshape(()) for v in logs.values()])
    return dict(zip(logs, values.tolist()))


class ClassificationLoss(nn.Module):
    """Cosine-logit classification against fixed class embeddings.

    ``logits = scale * features @ class_embeddings.T``. Targets are either int labels [B]
    (cross-entropy, optional label smoothing), class probabilities [B, C] such as mixup or
    cutmix targets (soft cross-entropy), or, with ``multi_label=True``, multi-hot floats [B, C]
    (binary cross-entropy with logits).
    """

    def __init__(self, label_smoothing: float = 0.0, multi_label: bool = False):
        super().__init__()
        if not 0.0 <= label_smoothing < 1.0:
            raise ConfigError("loss.label_smoothing", f"must be in [0, 1), got {label_smoothing}")
        if multi_label and label_smoothing:
            raise ConfigError("loss.label_smoothing", "is not used with multi_label=True; set it to 0")
        self.label_smoothing = label_smoothing
        self.multi_label = multi_label

    def forward(
        self, features: Tensor, class_embeddings: Tensor, targets: Tensor, logit_scale: Tensor | float
    ) -> tuple[Tensor, dict[str, float]]:
        """Loss and logs (``loss``, ``acc``: top-1 is a positive / the label / the likeliest class)."""
        if features.ndim != 2 or class_embeddings.ndim != 2 or features.shape[1] != class_embeddings.shape[1]:
            raise ValueError(
                f"features [B, D] and class_embeddings [C, D] expected, got {tuple(features.shape)} "
                f"and {tuple(class_embeddings.shape)}"
            )
        batch, num_classes = features.shape[0], class_embeddings.shape[0]
        logits = logit_scale * features @ class_embeddings.to(features.dtype).T
        pred = logits.argmax(dim=1)
        if targets.dtype.is_floating_point:
            if targets.shape != (batch, num_classes):
                expected = f"[{batch}, {num_classes}]"
                raise ValueError(f"float targets must be [B, C] = {expected}, got {tuple(targets.shape)}")
            targets = targets.to(logits.dtype)
            if self.multi_label:
                loss = F.binary_cross_entropy_with_logits(logits, targets)
                hits = targets.gather(1, pred[:, None]).squeeze(1) > 0
            else:
                loss = F.cross_entropy(logits, targets, label_smoothing=self.label_smoothing)
                hits = pred == targets.argmax(dim=1)
        else:
            if self.multi_label:
                raise ValueError("multi_label=True needs multi-hot float targets [B, C], got integer labels")
            if targets.shape != (batch,):
                raise ValueError(f"integer labels must be [B] = [{batch}], got {tuple(targets.shape)}")
            loss = F.cross_entropy(logits, targets, label_smoothing=self.label_smoothing)
            hits = pred == targets
        return loss, _to_floats({"loss": loss.detach(), "acc": hits.float().mean()})
