"""Class-level training of video models against class text embeddings (ViFi-CLIP, ILA).

When the text side trains (ViFi-CLIP's full fine-tune, bridge-and-prompt's context vectors) the
class embeddings cannot come from a cache: `ClassText` computes them every step through the video
model's own text side (`omniclip.video_model.VideoClipModel.class_features`), and
`ClassObjective` scores video embeddings against them, cosine times the logit scale, with
cross-entropy on integer labels or on the soft targets that mixup / cutmix and label smoothing
make. The text side is the model's: the objective refers to it without registering it, so the
trainer's optimizer, checkpoints and DDP see each of its tensors once, under ``model.*``, and
evaluation scores against the same text side that trained.

Class text conditioned per video (X-CLIP / ILA's video-specific prompts): give `ClassObjective` a
``conditioner`` mapping the un-normalised class text [C, E] and a clip's context tokens [B, N, E]
to per-clip class embeddings [B, C, E]; the model's embeddings are then ``[B, 1 + N, E]`` (the
normalised video embedding, then its context tokens), as `omniclip.ila.ILAVideoModel` gives them.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from omniclip.losses import ClassificationLoss, LogitScale
from omniclip.video_model import VideoClipModel


class ClassText(nn.Module):
    """Class embeddings [C, E] of ``class_names`` through ``model``'s text side, every call.

    With learned text prompts the prompts are ``"<context> <name>."``; otherwise ``template``
    filled with each class name ("{}" = the bare name, as ViFi-CLIP evaluates; it trains with
    "a photo of a {}."), tokenised once. ``model`` is used, not owned (held outside the module
    tree), so its text weights are saved and optimised once, as the model's.
    """

    def __init__(self, class_names: Sequence[str], model: VideoClipModel, template: str = "{}") -> None:
        super().__init__()
        if getattr(model, "text", None) is None:
            raise ValueError("the video model has no text side of its own to compute class embeddings with")
        self.class_names = [str(n) for n in class_names]
        self.template = template
        self._model = [model]  # a list: not a submodule
        if model.text_prompts is None:
            self.register_buffer("ids", model.class_ids(self.class_names, template), persistent=False)

    @property
    def model(self) -> VideoClipModel:
        return self._model[0]

    def forward(self, normalize: bool = True) -> torch.Tensor:
        """Class embeddings [C, E]; ``normalize=False`` gives the text tower's raw features, which a
        per-video conditioner reads (X-CLIP conditions them before normalising)."""
        model = self.model
        if model.text_prompts is not None:
            features = model.text_prompts.class_embeddings(self.class_names)
        else:
            features = model.encode_text(self.ids, normalize=False)
        return F.normalize(features, dim=-1) if normalize else features


class ClassObjective(nn.Module):
    """``CE(scale * video @ class_text().T, labels)``; labels are ints [B] or soft targets [B, C].

    With a ``conditioner`` (e.g. `omniclip.ila.VideoPromptGenerator`), ``embeddings`` are
    ``[B, 1 + N, E]``: row 0 the normalised video embedding, rows 1.. the context tokens; each clip
    is scored against its own class embeddings ``normalize(conditioner(class_text(normalize=False),
    context))`` [B, C, E]. The conditioner is used, not owned: its parameters belong to the video
    model (the same module object), so the trainer saves and optimises them once, under the model.
    """

    def __init__(self, class_text: ClassText, logit_scale: LogitScale, label_smoothing: float = 0.0,
                 conditioner: nn.Module | None = None) -> None:
        super().__init__()
        self.class_text = class_text
        self.logit_scale = logit_scale
        self.loss = ClassificationLoss(label_smoothing)
        self._conditioner = [conditioner]  # a list: not a submodule (its weights are the model's)

    @property
    def conditioner(self) -> nn.Module | None:
        return self._conditioner[0]

    def forward(self, embeddings: torch.Tensor, batch: Mapping[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        if "labels" not in batch:
            raise KeyError(f"class-level training needs `labels` in the batch; batch keys: {sorted(batch)}")
        labels = batch["labels"].to(embeddings.device)
        if self.conditioner is None:
            classes = self.class_text().to(embeddings.dtype)
            loss, logs = self.loss(embeddings, classes, labels, self.logit_scale())
        else:
            if embeddings.ndim != 3 or embeddings.shape[1] < 2:
                raise ValueError("with a conditioner the model must give [B, 1 + N, E] (video embedding, then "
                                 f"context tokens), got {tuple(embeddings.shape)}")
            video, context = embeddings[:, 0], embeddings[:, 1:]
            classes = F.normalize(self.conditioner(self.class_text(normalize=False).to(embeddings.dtype), context),
                                  dim=-1)
            cosine = torch.einsum("be,bce->bc", video, classes)
            # Cosines against an identity "class table" are the logits / scale: the same loss,
            # targets and accuracy as for shared class embeddings.
            identity = torch.eye(cosine.shape[1], dtype=cosine.dtype, device=cosine.device)
            loss, logs = self.loss(cosine, identity, labels, self.logit_scale())
        return loss, {f"class/{k}": v for k, v in logs.items()}


__all__ = ["ClassText", "ClassObjective"]
