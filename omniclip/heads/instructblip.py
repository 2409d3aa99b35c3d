"""An InstructBLIP Q-Former + language model that reads features from any trunk.

transformers' ``InstructBlipForConditionalGeneration.generate`` takes pixel values only. A lens
trained into InstructBLIP's own vision tower (`omniclip.blip_trunk.BlipVisionTrunk`) produces
the tower's post-LayerNorm hidden states ``[B, 1+L, W]`` for a point cloud or a sound; this head
runs the rest of the model on them through its public submodules: the Q-Former (query tokens +
instruction) cross-attends to the features, its first ``num_query_tokens`` outputs go through
``language_projection`` into the image-token positions of the prompt, and the language model
generates. Fed the vision model's own features it gives exactly the tokens of
``generate(pixel_values=...)``.

A video (``InstructBlipVideoForConditionalGeneration``) is the same model run per frame: the
features of ``frames`` consecutive rows belong to one video, the Q-Former reads each frame with
the video's instruction, and the frames' query outputs are concatenated (``frames x
num_query_tokens`` video tokens in the prompt). ``frames=1`` is the image model.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from omniclip.errors import ConfigError


class InstructBlipHead(nn.Module):
    """Q-Former, projection and language model of an InstructBLIP model (frozen, shared).

    Args:
        model: a transformers ``InstructBlipForConditionalGeneration``; its vision tower is not
            used here (pair it with `BlipVisionTrunk` to read lens tokens).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        for name in ("query_tokens", "qformer", "language_projection", "language_model"):
            if not hasattr(model, name):
                raise ConfigError("head", f"{type(model).__name__} has no `{name}`: not an InstructBLIP model")
        self.config = model.config
        self.query_tokens = model.query_tokens
        self.qformer = model.qformer
        self.language_projection = model.language_projection
        self.language_model = model.language_model
        # The video model names its prompt placeholder `video_token_id`; the image model `image_token_id`.
        video = getattr(model.config, "model_type", "") == "instructblipvideo"
        self.placeholder_id = int(model.config.video_token_id if video else model.config.image_token_id)
        self.requires_grad_(False)
        self.eval()

    @property
    def num_query_tokens(self) -> int:
        return int(self.query_tokens.shape[1])

    @property
    def feature_width(self) -> int:
        """Width of the trunk features the Q-Former cross-attends to."""
        return int(self.config.qformer_config.encoder_hidden_size)

    def query_outputs(
        self,
        features: torch.Tensor,
        qformer_input_ids: torch.Tensor,
        qformer_attention_mask: torch.Tensor | None = None,
        frames: int = 1,
    ) -> torch.Tensor:
        """Trunk features [B*frames, N, W] + instruction ids [B, S] -> language-model inputs
        [B, frames*Q, H]: frame by frame, each frame's Q outputs in frame order (as
        ``InstructBlipVideoModel.get_video_features`` reshapes them)."""
        if features.shape[-1] != self.feature_width:
            raise ConfigError("lens", f"the features are {features.shape[-1]} wide but this InstructBLIP's "
                              f"Q-Former reads {self.feature_width}: the lens was trained on another tower")
        if frames < 1 or features.shape[0] != qformer_input_ids.shape[0] * frames:
            raise ValueError(f"{features.shape[0]} feature rows for {qformer_input_ids.shape[0]} instructions of "
                             f"{frames} frames each")
        batch, device = features.shape[0], features.device
        queries = self.query_tokens.expand(batch, -1, -1)
        query_mask = torch.ones(queries.shape[:-1], dtype=torch.long, device=device)
        if qformer_attention_mask is None:
            qformer_attention_mask = torch.ones_like(qformer_input_ids)
        qformer_input_ids = qformer_input_ids.repeat_interleave(frames, dim=0)
        qformer_attention_mask = qformer_attention_mask.repeat_interleave(frames, dim=0)
        output = self.qformer(
            input_ids=qformer_input_ids,
            attention_mask=torch.cat([query_mask, qformer_attention_mask.to(device)], dim=1),
            query_embeds=queries,
            encoder_hidden_states=features,
            encoder_attention_mask=torch.ones(features.shape[:-1], dtype=torch.long, device=device),
            return_dict=True,
        )
        projected = self.language_projection(output.last_hidden_state[:, : self.num_query_tokens])
        return projected.reshape(batch // frames, frames * self.num_query_tokens, -1)

    @torch.no_grad()
    def generate(
        self,
        features: torch.Tensor,
        qformer_input_ids: torch.Tensor,
        input_ids: torch.Tensor,
        qformer_attention_mask: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        frames: int = 1,
        **generate_kwargs: Any,
    ) -> torch.Tensor:
        """Generated token ids for trunk features and a prompt.

        ``input_ids`` is the language-model prompt holding ``frames * num_query_tokens``
        placeholder tokens (`placeholder_id`: the image token, or the video model's video
        token), as InstructBLIP's processor builds it; ``features`` holds ``frames`` rows per
        prompt (see `query_outputs`); ``generate_kwargs`` go to the language model's
        ``generate`` (``max_new_tokens``, ``num_beams``, ...). Returns what transformers'
        ``generate`` returns for the same prompt and pixels.
        """
        placeholder = self.placeholder_id
        placeholders = input_ids == placeholder
        counts = placeholders.sum(dim=1)
        expected = frames * self.num_query_tokens
        if not bool((counts == expected).all()):
            raise ValueError(f"each prompt must hold {expected} image tokens (id {placeholder}); found "
                             f"{counts.tolist()} ({frames} frame(s) x {self.num_query_tokens} queries)")
        projected = self.query_outputs(features, qformer_input_ids, qformer_attention_mask, frames)
        embeddings = self.language_model.get_input_embeddings()(input_ids)
        mask = placeholders.unsqueeze(-1).expand_as(embeddings)
        embeddings = embeddings.masked_scatter(mask, projected.to(embeddings.dtype))
        inputs: dict[str, Any] = {
            "inputs_embeds": embeddings,
            "attention_mask": attention_mask if attention_mask is not None else torch.ones_like(input_ids),
        }
        if not self.language_model.config.is_encoder_decoder:
            inputs["input_ids"] = input_ids
        return self.language_model.generate(**inputs, **generate_kwargs)


__all__ = ["InstructBlipHead"]
