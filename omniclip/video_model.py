"""Video in CLIP space: frames through the image tower, frame embeddings pooled over time.

ViFi-CLIP's recipe: every frame of a clip ``[B, T, 3, H, W]`` goes through CLIP's image tower as
one image of a batch of ``B*T`` (`omniclip.trunk.ViTTrunk.forward_image`, so ``encode_image`` per
frame), the ``T`` frame embeddings are averaged, and the video embedding is compared with class
prompts through the text tower (`omniclip.text_trunk.TextTrunk`) by cosine similarity times
CLIP's logit scale. Per-block modules inside the image tower (vision prompts here; ILA's frame
alignment) are `ViTTrunk` block hooks (`omniclip.prompts`); the temporal pooling is a module of its
own so a learned pooling (ILA's MIT) can take its place.

The model owns its text side (the text tower, frozen or training, and learned text prompts), so
one object gives both video and class embeddings: the training objective
(`omniclip.video_objective.ClassText`) reads the class text through it, in-training evaluation
and ``omniclip-zeroshot`` score against it (`omniclip.zeroshot.task_classifier`), and its
checkpoints and exports hold every trained tensor exactly once, under ``text.*`` /
``text_prompts.*``.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from omniclip.errors import ConfigError
from omniclip.prompts import TextPrompts
from omniclip.state import load_exactly
from omniclip.text_trunk import TextTrunk
from omniclip.trunk import ViTTrunk


class TemporalMean(nn.Module):
    """Frame embeddings [B, T, E] -> their mean [B, E] (ViFi-CLIP)."""

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return frames.mean(dim=1)


def class_prompts(class_names: Sequence[str], template: str) -> list[str]:
    """``template`` filled with every class name, underscores as spaces ("{}" = the bare name)."""
    return [template.replace("{}", str(n).replace("_", " ")) for n in class_names]


class VideoClipModel(nn.Module):
    """Frames -> per-frame CLIP image embeddings -> temporal pooling -> normalised video embedding,
    and class names -> class embeddings through the model's own text side.

    Args:
        trunk: the image tower (frozen, unlocked or fully trainable as built).
        text: the text tower (frozen and shared with the backbone, partly unlocked, or a whole
            copy); None for a vision-only model, whose class embeddings then come from the
            frozen tower's anchor cache.
        temporal: pools [B, T, E] to [B, E]; `TemporalMean` by default.
        text_prompts: learned text context (`TextPrompts`, running through ``text``): class
            prompts are then ``"<context> <name>."``.
        tokenizer: the CLIP tokenizer, for class names (default: the prompts' own).

    `trainable_state_dict` holds the tensors the model owns: every parameter that requires a
    gradient when the model is built. The trainer's ``train_only`` may freeze some of them
    later; they are still the model's, not the backbone's, so checkpoints and exports keep them
    and a rebuilt model loads the export strictly.
    """

    def __init__(self, trunk: ViTTrunk, text: TextTrunk | None = None, temporal: nn.Module | None = None,
                 text_prompts: TextPrompts | None = None,
                 tokenizer: Callable[[list[str]], torch.Tensor] | None = None) -> None:
        super().__init__()
        if text_prompts is not None and text is None:
            raise ValueError("text prompts run through a text tower: give `text` too")
        self.trunk = trunk
        # Registered before `text`: the deep prompts are hooked into the text tower as well, and a
        # shared parameter is named (in checkpoints and train_only patterns) by its first owner.
        self.register_module("text_prompts", text_prompts)
        self.text = text
        self.temporal = temporal if temporal is not None else TemporalMean()
        self.tokenizer = tokenizer if tokenizer is not None else getattr(text_prompts, "tokenizer", None)
        self.mark_own_tensors()

    def mark_own_tensors(self) -> None:
        """Record the tensors this model owns (those requiring a gradient now); subclasses that add
        modules after ``super().__init__`` call it again at the end of theirs."""
        self._own = [name for name, p in self.named_parameters() if p.requires_grad]

    # ------------------------------------------------------------------ video
    def encode_frames(self, frames: torch.Tensor, **hook_kwargs: Any) -> torch.Tensor:
        """Clips [B, T, 3, H, W] -> frame embeddings [B, T, E] (not normalised)."""
        if frames.ndim != 5:
            raise ValueError(f"expected clips [B, T, 3, H, W], got shape {tuple(frames.shape)}")
        batch, steps = frames.shape[:2]
        embeddings = self.trunk.forward_image(frames.flatten(0, 1), **hook_kwargs)
        return embeddings.view(batch, steps, -1)

    def encode(self, frames: torch.Tensor, normalize: bool = True, **hook_kwargs: Any) -> torch.Tensor:
        """Clips [B, T, 3, H, W] -> video embeddings [B, E]."""
        video = self.temporal(self.encode_frames(frames, **hook_kwargs))
        return F.normalize(video, dim=-1) if normalize else video

    def forward(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """Batch dict with ``inputs`` [B, T, 3, H, W] -> normalised video embeddings [B, E]."""
        return self.encode(batch["inputs"])

    # ------------------------------------------------------------------ text
    def _require_text(self) -> TextTrunk:
        if self.text is None:
            raise ConfigError("model.text", "this video model has no text tower of its own: its class "
                              "embeddings come from the frozen CLIP text tower (the anchor cache)")
        return self.text

    def encode_text(self, ids: torch.Tensor, embeddings: torch.Tensor | None = None,
                    normalize: bool = True) -> torch.Tensor:
        """Prompt ids [N, C] through the model's own text tower (see `TextTrunk.forward`) -> [N, E]."""
        features = self._require_text()(ids, embeddings)
        return F.normalize(features, dim=-1) if normalize else features

    def class_ids(self, class_names: Sequence[str], template: str = "{}") -> torch.Tensor:
        """Token ids [C, L] of ``template`` filled with each class name, on the text tower's device."""
        text = self._require_text()
        if self.tokenizer is None:
            raise ValueError("this video model was built without a tokenizer: pass `tokenizer`")
        ids = self.tokenizer(class_prompts(class_names, template))
        return ids.to(text.positional_embedding.device)

    def class_features(self, class_names: Sequence[str], template: str = "{}") -> torch.Tensor:
        """Class text features [C, E], not normalised (a per-video conditioner reads them so):
        ``"<context> <name>."`` with learned prompts (``template`` unused), else ``template``."""
        if self.text_prompts is not None:
            return self.text_prompts.class_embeddings(list(class_names))
        return self.encode_text(self.class_ids(class_names, template), normalize=False)

    def class_embeddings(self, class_names: Sequence[str], template: str = "{}") -> torch.Tensor:
        """Normalised class embeddings [C, E] (`class_features`, normalised)."""
        return F.normalize(self.class_features(class_names, template), dim=-1)

    # ------------------------------------------------------------------ trainer contract
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.trunk.set_grad_checkpointing(enable)
        if self.text is not None:
            self.text.set_grad_checkpointing(enable)

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """The tensors the model owns, by name (see the class docstring); the towers hold no
        running statistics."""
        params = dict(self.named_parameters())
        return {name: params[name].detach() for name in self._own}

    def load_trainable_state_dict(self, state: Mapping[str, torch.Tensor], source: str = "weights") -> None:
        """Load what `trainable_state_dict` gave, strictly: every key present, none extra, shapes
        equal, or one `CheckpointMismatchError` naming ``source`` and them all."""
        load_exactly(self, state, self.trainable_state_dict(), source)


__all__ = ["TemporalMean", "VideoClipModel", "class_prompts"]
