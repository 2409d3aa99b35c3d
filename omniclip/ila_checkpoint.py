"""Import published ILA checkpoints (X-CLIP layout) strictly.

Layout of the published files: a training dict ``{model, optimizer, lr_scheduler, max_accuracy,
epoch, config}`` whose ``config`` is a pickled yacs node (reading it needs ``trust_pickle=True``,
see `omniclip.convert.load_checkpoint_file`); ``model`` keys have no ``module.`` prefix:

- ``visual.*``: CLIP's image tower in the OpenAI layout, and in every block
  ``visual.transformer.resblocks.{i}.{message_fc, message_ln, message_attn.*, temporal_skip_fc,
  temporal_skip_align_fc}`` (`omniclip.ila.ILABlock`; ``message_attn`` is the frame alignment:
  ``interactive_block`` = depthwise-separable conv (``0.depthwise_conv.{0 conv, 1 bn}``,
  ``0.pointwise_conv.{0, 1}``) + ``1`` conv + ``2`` bn; ``prediction_block`` = ``0`` conv, ``1``
  bn, ``4`` conv, ``5`` bn, ``10`` and ``12`` grouped 1-D convs; ``conv`` (3D); ``fc``);
- ``transformer.*``, ``token_embedding.weight``, ``positional_embedding``, ``ln_final.*``,
  ``text_projection``, ``logit_scale``: CLIP's text tower (ILA keeps it fixed);
- ``mit.{positional_embedding, resblocks.{i}.*}``: the multi-frame integration transformer;
- ``prompts_generator.{norm, decoder.{i}.{cross_attn.{q,k,v}_proj, cross_attn.proj, norm1, norm3,
  mlp.0, mlp.3}, alpha}``, ``prompts_visual_ln``, ``prompts_visual_proj``: X-CLIP's prompts.

Every key must be mapped and every tensor of the model filled with its shape, or one
`CheckpointMismatchError` lists every missing, unexpected and mis-shaped key. The towers are loaded
into the given base CLIP (an OpenAI-layout ``ViT-B-16-quickgelu``-style model), as for ViFi-CLIP.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from omniclip.backbone import ClipBackbone
from omniclip.convert import KeyMap, LoadReport, load_state_dict_strict, read_state_dict
from omniclip.errors import CheckpointMismatchError
from omniclip.ila import ILAVideoModel, MultiframeIntegrationTransformer, VideoPromptGenerator, add_ila
from omniclip.text_trunk import TextTrunk

_BLOCK = r"visual\.transformer\.resblocks\.(\d+)\."
_ALIGN = _BLOCK + r"message_attn\."
_DECODER = r"prompts_generator\.decoder\.(\d+)\."

#: Published name -> omniclip name (``ila.{i}`` are the trunk's ILA hooks, ``prompts`` the
#: `VideoPromptGenerator`, ``mit`` the `MultiframeIntegrationTransformer`).
KEYMAP = KeyMap(rules=(
    (_BLOCK + r"(message_fc|message_ln|temporal_skip_fc|temporal_skip_align_fc)\.", r"ila.\1.\2."),
    (_ALIGN + r"interactive_block\.0\.depthwise_conv\.0\.", r"ila.\1.message_attn.pair_dw."),
    (_ALIGN + r"interactive_block\.0\.depthwise_conv\.1\.", r"ila.\1.message_attn.pair_dw_bn."),
    (_ALIGN + r"interactive_block\.0\.pointwise_conv\.0\.", r"ila.\1.message_attn.pair_pw."),
    (_ALIGN + r"interactive_block\.0\.pointwise_conv\.1\.", r"ila.\1.message_attn.pair_pw_bn."),
    (_ALIGN + r"interactive_block\.1\.", r"ila.\1.message_attn.pair_conv."),
    (_ALIGN + r"interactive_block\.2\.", r"ila.\1.message_attn.pair_bn."),
    (_ALIGN + r"prediction_block\.0\.", r"ila.\1.message_attn.point_conv1."),
    (_ALIGN + r"prediction_block\.1\.", r"ila.\1.message_attn.point_bn1."),
    (_ALIGN + r"prediction_block\.4\.", r"ila.\1.message_attn.point_conv2."),
    (_ALIGN + r"prediction_block\.5\.", r"ila.\1.message_attn.point_bn2."),
    (_ALIGN + r"prediction_block\.10\.", r"ila.\1.message_attn.point_fc1."),
    (_ALIGN + r"prediction_block\.12\.", r"ila.\1.message_attn.point_fc2."),
    (_ALIGN + r"conv\.", r"ila.\1.message_attn.temporal_conv."),
    (_ALIGN + r"fc\.", r"ila.\1.message_attn.out_fc."),
    (r"visual\.", "visual."),
    (r"(transformer|ln_final)\.", r"\1."),
    (r"(token_embedding\.weight|positional_embedding|text_projection|logit_scale)$", r"\1"),
    (r"mit\.positional_embedding$", "mit.positional_embedding"),
    (r"mit\.resblocks\.(\d+)\.", r"mit.layers.\1."),
    (_DECODER + r"cross_attn\.proj\.", r"prompts.layers.\1.attn.out_proj."),
    (_DECODER + r"cross_attn\.", r"prompts.layers.\1.attn."),
    (_DECODER + r"norm1\.", r"prompts.layers.\1.ln_1."),
    (_DECODER + r"norm3\.", r"prompts.layers.\1.ln_2."),
    (_DECODER + r"mlp\.0\.", r"prompts.layers.\1.mlp.c_fc."),
    (_DECODER + r"mlp\.3\.", r"prompts.layers.\1.mlp.c_proj."),
    (r"prompts_generator\.(norm\.|alpha$)", r"prompts.\1"),
    (r"prompts_visual_ln\.", "prompts.visual_ln."),
    (r"prompts_visual_proj$", "prompts.visual_proj"),
))


@dataclass
class ILAClip:
    """An imported ILA model: the video model (which holds the CLIP text tower and tokenizer as its
    text side; ``text`` and ``tokenizer`` are the same objects), its logit scale and the load report."""

    model: ILAVideoModel
    text: TextTrunk
    tokenizer: Any
    logit_scale: float
    report: LoadReport

    def class_features(self, class_names: Sequence[str], template: str = "{}") -> torch.Tensor:
        """Text features [C, E] of the class prompts, not normalised (the prompt generator reads
        them so); ILA trains and tests with the bare class name."""
        return self.model.class_features(class_names, template)

    def logits(self, frames: torch.Tensor, class_names: Sequence[str], template: str = "{}") -> torch.Tensor:
        """Clips [B, T, 3, H, W] -> class logits [B, C] as the checkpoint's model computes them."""
        return self.model.class_logits(frames, self.class_features(class_names, template), self.logit_scale)

    def class_probabilities(self, frames: torch.Tensor, class_names: Sequence[str]) -> torch.Tensor:
        """Softmax of `logits` over the classes."""
        return F.softmax(self.logits(frames, class_names), dim=-1)


def _indices(state: Mapping[str, torch.Tensor], pattern: str) -> list[int]:
    found = {int(m.group(1)) for k in state if (m := re.match(pattern, k))}
    return sorted(found)


def _tensor(state: Mapping[str, torch.Tensor], key: str, source: str) -> torch.Tensor:
    if key not in state:
        raise CheckpointMismatchError(f"{source} is not an ILA / X-CLIP checkpoint: it has no `{key}`, which "
                                      "gives the model's layout")
    return state[key]


def load_ila(checkpoint: str | Path | Mapping[str, Any], backbone: ClipBackbone, trust_pickle: bool = False,
             align_weight: float = 1.0, ignore: Sequence[str] = ()) -> ILAClip:
    """Load an ILA checkpoint into ``backbone`` (its towers are overwritten) and return the model.

    The layout is read from the checkpoint's own keys: frames from ``mit.positional_embedding``,
    ILA hidden channels from the first block's pointwise conv, MIT and prompt layers by count.
    ``trust_pickle`` is needed for the published files (pickled yacs config, see module doc).
    The load is strict; ``ignore`` adds regexes (matched at a key's start) for checkpoint keys to
    skip deliberately, e.g. ``("transformer\\.", ...)`` to keep the base CLIP's text tower; a
    module tensor they leave unfilled is still an error.
    """
    source, state = read_state_dict(checkpoint, trust_pickle)
    what = f"ILA checkpoint {source}"
    num_frames = int(_tensor(state, "mit.positional_embedding", what).shape[1])
    pointwise = "visual.transformer.resblocks.0.message_attn.interactive_block.0.pointwise_conv.0.weight"
    hidden = int(_tensor(state, pointwise, what).shape[0])
    mit_layers = len(_indices(state, r"mit\.resblocks\.(\d+)\."))
    prompt_layers = len(_indices(state, _DECODER))
    has_prompts = any(k.startswith("prompts_generator.") for k in state)

    clip = backbone.model
    trunk = backbone.trunk()
    hooks = add_ila(trunk, num_frames, hidden)
    mit = MultiframeIntegrationTransformer(num_frames, trunk.embed_dim, mit_layers)
    prompts = VideoPromptGenerator(trunk.width, trunk.embed_dim, prompt_layers) if has_prompts else None
    text = TextTrunk(clip)

    target = nn.Module()
    target.visual = clip.visual
    target.ila = nn.ModuleDict({str(i): hook for i, hook in enumerate(hooks)})
    target.transformer = clip.transformer
    target.token_embedding = clip.token_embedding
    target.ln_final = clip.ln_final
    target.register_parameter("positional_embedding", clip.positional_embedding)
    target.register_parameter("text_projection", clip.text_projection)
    target.register_parameter("logit_scale", clip.logit_scale)
    target.mit = mit
    if prompts is not None:
        target.prompts = prompts
    keymap = KeyMap(rules=KEYMAP.rules, ignore=tuple(ignore)) if ignore else KEYMAP
    report = load_state_dict_strict(target, state, keymap, what=what)
    model = ILAVideoModel(trunk, num_frames, mit, prompts, align_weight, text=text, tokenizer=backbone.tokenizer)
    return ILAClip(model=model.eval(), text=text, tokenizer=backbone.tokenizer,
                   logit_scale=float(clip.logit_scale.detach().exp()), report=report)


__all__ = ["ILAClip", "KEYMAP", "load_ila"]
