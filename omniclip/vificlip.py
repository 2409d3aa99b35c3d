"""Import published ViFi-CLIP checkpoints (full fine-tune and bridge-and-prompt) strictly.

Layout of the published files (a training dict ``{model, optimizer, lr_scheduler, max_accuracy,
epoch, config}`` whose ``config`` is a pickled yacs node, so reading it needs
``trust_pickle=True``; ``model`` keys carry DDP's ``module.`` prefix):

- ``image_encoder.*``: CLIP's image tower (``visual.*`` of an OpenAI-layout CLIP);
- ``text_encoder.{transformer, positional_embedding, ln_final, text_projection}``: the text tower
  without its word embedding (ViFi-CLIP never trains it: it comes from the base CLIP);
- ``logit_scale``;
- bridge-and-prompt only: ``image_encoder.VPT`` (prompts appended at the input),
  ``image_encoder.transformer.resblocks.{i}.VPT_shallow`` (prompts replacing them before block i),
  ``prompt_learner.ctx`` (text context) and ``text_encoder.transformer.resblocks.{i}.VPT_shallow``;
- ``prompt_learner.{token_prefix, token_suffix, complete_text_embeddings}``: word embeddings of
  the training run's class prompts, rebuilt from the class names at use, so ignored.

Every other key is an error, and so is every key of the model left without a value: the report
lists them all. The towers are loaded into the given base CLIP (whose word embedding stays).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from omniclip.backbone import ClipBackbone
from omniclip.convert import KeyMap, LoadReport, load_state_dict_strict, read_state_dict
from omniclip.prompts import TextPrompts, add_vision_prompts
from omniclip.text_trunk import TextTrunk
from omniclip.video_model import VideoClipModel

_P = r"(?:module\.)?"
KEYMAP = KeyMap(
    rules=(
        (_P + r"image_encoder\.VPT$", "vision_prompts.0.tokens"),
        (_P + r"image_encoder\.transformer\.resblocks\.(\d+)\.VPT_shallow$", r"vision_prompts.\1.tokens"),
        (_P + r"text_encoder\.transformer\.resblocks\.(\d+)\.VPT_shallow$", r"text_prompts.deep.\1.tokens"),
        (_P + r"prompt_learner\.ctx$", "text_prompts.context"),
        (_P + r"image_encoder\.", "visual."),
        (_P + r"text_encoder\.(transformer|ln_final|positional_embedding|text_projection)", r"\1"),
        (_P + r"logit_scale$", "logit_scale"),
    ),
    ignore=(_P + r"prompt_learner\.(token_prefix|token_suffix|complete_text_embeddings)$",),
)


@dataclass
class ViFiClip:
    """An imported ViFi-CLIP: the video model, its text prompts (bridge-and-prompt), the CLIP
    tokenizer and the load report."""

    model: VideoClipModel
    text_prompts: TextPrompts | None
    tokenizer: Any
    report: LoadReport

    def class_embeddings(self, class_names: list[str], template: str = "{}") -> torch.Tensor:
        """Normalised class embeddings [C, E] as the checkpoint's model computes them.

        With learned text context the prompts are ``"<context> <name>."``; without it, the
        ``template`` filled with each name (ViFi-CLIP evaluates zero-shot with the bare name).
        """
        return self.model.class_embeddings(class_names, template)


def _count(state: Mapping[str, torch.Tensor], pattern: str) -> int:
    return sum(1 for k in state if re.fullmatch(_P + pattern, k))


def load_vificlip(checkpoint: str | Path | Mapping[str, Any], backbone: ClipBackbone,
                  trust_pickle: bool = False) -> ViFiClip:
    """Load a ViFi-CLIP checkpoint into ``backbone`` (an OpenAI-layout CLIP, e.g. ``ViT-B-16-quickgelu``
    with ``openai`` weights, for its word embedding) and return the video model.

    The prompt layout (vision tokens and depth, text context length and depth) is read from the
    checkpoint's own keys. ``trust_pickle`` is needed for the published files (see module doc).
    """
    source, state = read_state_dict(checkpoint, trust_pickle)
    clip = backbone.model
    trunk = backbone.trunk()
    text = TextTrunk(clip)
    target = nn.Module()
    target.visual = clip.visual
    target.transformer = clip.transformer
    target.ln_final = clip.ln_final
    target.register_parameter("positional_embedding", clip.positional_embedding)
    target.register_parameter("text_projection", clip.text_projection)
    target.register_parameter("logit_scale", clip.logit_scale)
    vision_depth = _count(state, r"image_encoder\.VPT") + _count(state, r"image_encoder\.transformer\.resblocks\.\d+\.VPT_shallow")
    if vision_depth:
        vpt = next(v for k, v in state.items() if k.endswith("image_encoder.VPT"))
        hooks = add_vision_prompts(trunk, num_tokens=int(vpt.shape[0]), depth=vision_depth)
        target.vision_prompts = nn.ModuleDict({str(i): hook for i, hook in enumerate(hooks)})
    text_prompts = None
    if _count(state, r"prompt_learner\.ctx"):
        ctx = next(v for k, v in state.items() if k.endswith("prompt_learner.ctx"))
        text_depth = 1 + _count(state, r"text_encoder\.transformer\.resblocks\.\d+\.VPT_shallow")
        # Only the number of context tokens matters for positions; the learned values replace them.
        text_prompts = TextPrompts(text, backbone.tokenizer, init=" ".join(["X"] * int(ctx.shape[0])),
                                   depth=text_depth)
        target.text_prompts = text_prompts
    report = load_state_dict_strict(target, state, KEYMAP, what=f"ViFi-CLIP checkpoint {source}")
    model = VideoClipModel(trunk, text, text_prompts=text_prompts, tokenizer=backbone.tokenizer)
    return ViFiClip(model=model.eval(), text_prompts=text_prompts, tokenizer=backbone.tokenizer, report=report)


__all__ = ["KEYMAP", "ViFiClip", "load_vificlip"]
