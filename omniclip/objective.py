"""What the trainer minimises: modality embeddings against frozen CLIP anchors.

The objective reads the modality-independent batch keys (``texts``, ``image_keys`` /
``images``, ``labels``), fetches the anchors through the `AnchorStore` (computing only cache
misses) and combines the contrastive terms with an optional class-level cross-entropy.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from omniclip.anchors import AnchorStore
from omniclip.errors import ConfigError
from omniclip.losses import ClassificationLoss, ContrastiveLoss, LogitScale


class ContrastiveObjective(nn.Module):
    """``sum_kind w_kind * InfoNCE(embedding, anchor_kind) / sum w + class_weight * CE``.

    Args:
        anchors: where text and image anchor features come from.
        logit_scale: temperature (fixed or learnable); ViT-Lens uses CLIP's own.
        text_weight, image_weight: weights of the two contrastive terms (0 turns one off).
        class_embeddings: [C, E] class text embeddings for the class-level loss.
        class_weight: weight of the class-level cross-entropy (needs ``labels`` in the batch).
        same_text_is_positive: captions repeated in a batch (e.g. class-name prompts) count as
            positives of each other instead of as negatives.
    """

    def __init__(
        self,
        anchors: AnchorStore,
        logit_scale: LogitScale,
        text_weight: float = 1.0,
        image_weight: float = 1.0,
        class_embeddings: torch.Tensor | None = None,
        class_weight: float = 0.0,
        label_smoothing: float = 0.0,
        multi_label: bool = False,
        same_text_is_positive: bool = True,
    ) -> None:
        super().__init__()
        weights = {k: w for k, w in (("text", text_weight), ("image", image_weight)) if w > 0}
        if not weights and class_weight <= 0:
            raise ConfigError("loss", "every loss weight is zero: set text_weight, image_weight or class_weight")
        if class_weight > 0 and class_embeddings is None:
            raise ConfigError("loss.class_weight", "is > 0 but no class embeddings were given")
        self.anchors = anchors
        self.logit_scale = logit_scale
        self.contrastive = ContrastiveLoss(weights) if weights else None
        self.classification = ClassificationLoss(label_smoothing, multi_label) if class_weight > 0 else None
        self.class_weight = class_weight
        self.same_text_is_positive = same_text_is_positive
        self.register_buffer("class_embeddings", class_embeddings, persistent=False)

    def forward(self, embeddings: torch.Tensor, batch: Mapping[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        scale = self.logit_scale()
        loss = embeddings.new_zeros(())
        logs: dict[str, float] = {}
        if self.contrastive is not None:
            anchors, keys = self._anchors(batch, embeddings.device)
            if not anchors:
                raise KeyError(
                    f"the batch has none of the anchor keys the loss needs ({sorted(self.contrastive.weights)}); "
                    f"batch keys: {sorted(batch)}"
                )
            term, term_logs = self.contrastive(embeddings, anchors, scale, keys)
            loss = loss + term
            logs.update({f"contrastive/{k}": v for k, v in term_logs.items()})
        if self.classification is not None:
            if "labels" not in batch:
                raise KeyError(f"class_weight > 0 needs `labels` in the batch; batch keys: {sorted(batch)}")
            term, term_logs = self.classification(
                embeddings, self.class_embeddings, batch["labels"].to(embeddings.device), scale
            )
            loss = loss + self.class_weight * term
            logs.update({f"class/{k}": v for k, v in term_logs.items()})
        return loss, logs

    def _anchors(self, batch: Mapping[str, Any], device: torch.device) -> tuple[dict, dict]:
        weights = self.contrastive.weights
        anchors: dict[str, torch.Tensor] = {}
        keys: dict[str, list[str]] = {}
        if "text" in weights and batch.get("texts") is not None:
            anchors["text"] = self.anchors.text(batch["texts"]).to(device)
            if self.same_text_is_positive:
                keys["text"] = list(batch["texts"])
        if "image" in weights and batch.get("image_keys") is not None:
            anchors["image"] = self.anchors.image(batch["image_keys"], batch.get("images"))
            anchors["image"] = anchors["image"].to(device)
            keys["image"] = list(batch["image_keys"])
        return anchors, keys
