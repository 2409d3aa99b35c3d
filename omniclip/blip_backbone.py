"""An InstructBLIP checkpoint as the backbone of a lens: ``instructblip:<folder or hub id>``.

`omniclip.backbone.load_backbone` hands names with the ``instructblip:`` prefix to
`load_instructblip`, so a lens built or trained on InstructBLIP's vision tower records that name
in its ``config.json`` like any other backbone and `omniclip.model.load_lens_model` rebuilds it.
The loaded `InstructBlipBackbone` gives the vision tower as a `BlipVisionTrunk` (what the lens
feeds), the Q-Former + language model as an `InstructBlipHead` (what reads the tower's
features), and the prompt and decoding of InstructBLIP's processor.

The source is a local folder (``save_pretrained`` of the model and of its processor, or a
downloaded hub repository) or a hub id taken from the Hugging Face cache; a hub id that is not
cached fails at once offline, saying what to download and where to point omniclip.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import nn

from omniclip.blip_trunk import BlipVisionTrunk
from omniclip.errors import ConfigError, WeightsUnavailableError
from omniclip.heads.instructblip import InstructBlipHead

PREFIX = "instructblip:"
#: Load dtypes by the backbone's ``precision`` (the values `omniclip.backbone.load_backbone` takes).
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")


def is_instructblip(name: str) -> bool:
    return name.startswith(PREFIX)


@dataclass
class InstructBlipBackbone:
    """A loaded InstructBLIP model and processor; ``name`` is ``instructblip:<source>``."""

    model: nn.Module
    processor: Any
    name: str
    pretrained: None = None  # the name carries the weights (as `local-dir:` does for open_clip)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def num_query_tokens(self) -> int:
        return int(self.model.config.num_query_tokens)

    def trunk(self, **options: Any) -> BlipVisionTrunk:
        """The vision tower as a lens trunk (options as in `BlipVisionTrunk`)."""
        return BlipVisionTrunk(self.model.vision_model, **options)

    def head(self) -> InstructBlipHead:
        return InstructBlipHead(self.model)

    # A ClipBackbone also embeds anchors (texts, images) for training and zero-shot evaluation;
    # InstructBLIP has no contrastive text tower, so those paths stop here with what to do.
    def encode_text(self, texts: Any, normalize: bool = True) -> torch.Tensor:
        raise self._no_anchors()

    def encode_image(self, images: Any, normalize: bool = True) -> torch.Tensor:
        raise self._no_anchors()

    def fingerprint(self, tower: str) -> str:
        raise self._no_anchors()

    @property
    def logit_scale(self) -> float:
        raise self._no_anchors()

    def _no_anchors(self) -> ConfigError:
        return ConfigError("backbone.name", f"`{self.name}` has no contrastive text or image tower to align a lens "
                           "to or to classify with: anchors come from a CLIP (a lens for InstructBLIP's tower is "
                           "aligned to a CLIP's space); use this backbone to describe (omniclip-describe)")

    def answers(self, generated: torch.Tensor, prompt_length: int) -> list[str]:
        """Decoded new tokens of `InstructBlipHead.generate`'s output (a decoder-only language
        model returns the prompt first; an encoder-decoder one returns only its answer)."""
        if not self.model.language_model.config.is_encoder_decoder:
            generated = generated[:, prompt_length:]
        texts = self.processor.tokenizer.batch_decode(generated, skip_special_tokens=True)
        return [text.strip() for text in texts]


def load_instructblip(
    name: str,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
    cache_dir: str | None = None,
    freeze: bool = True,
) -> InstructBlipBackbone:
    """Load ``instructblip:<folder or hub id>`` (model and processor) in ``precision``."""
    from transformers import InstructBlipForConditionalGeneration, InstructBlipProcessor

    if precision not in DTYPES:
        raise ConfigError("backbone.precision", f"`{precision}` for an InstructBLIP backbone (known: "
                          f"{', '.join(DTYPES)})")

    def wrong_type(model_type: str) -> Exception:
        return ConfigError("backbone.name", f"`{name}` is a `{model_type}` model, not InstructBLIP "
                           "(model_type `instructblip`)")

    model, processor = load_pretrained(name, InstructBlipForConditionalGeneration, InstructBlipProcessor,
                                       "instructblip", wrong_type, "image processor", cache_dir,
                                       DTYPES[precision])
    config = model.config
    if processor.num_query_tokens is None:  # processors saved before transformers recorded the count
        processor.num_query_tokens = config.num_query_tokens
    if processor.num_query_tokens != config.num_query_tokens:
        raise ConfigError("backbone.name", f"`{name}`: the processor puts {processor.num_query_tokens} image "
                          f"tokens in a prompt but the model has {config.num_query_tokens} query tokens")
    image_token = processor.tokenizer.convert_tokens_to_ids(image_token_text(processor))
    if image_token != config.image_token_id:
        raise ConfigError("backbone.name", f"`{name}`: the processor's image token `{image_token_text(processor)}` "
                          f"is id {image_token} but the model's image_token_id is {config.image_token_id} (set "
                          f"image_token_index to {image_token} in its config.json if the tokenizer is the model's)")
    model = model.to(device)
    if freeze:
        model.requires_grad_(False)
        model.eval()
    return InstructBlipBackbone(model, processor, name)


def read_config(name: str, cache_dir: str | None = None) -> tuple[Path, Any]:
    """The local folder of the BLIP-family checkpoint ``name`` (``instructblip:<folder or hub
    id>``) and its config; offline, a hub id that is not cached fails at once naming what to
    download."""
    from transformers import AutoConfig

    source = _resolve(name, cache_dir)
    try:
        return source, AutoConfig.from_pretrained(source, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise _unloadable(name, "its config.json", exc) from exc


def load_pretrained(name: str, model_cls: type, processor_cls: type, model_type: str,
                    wrong_type: Callable[[str], Exception], media_processor: str,
                    cache_dir: str | None = None, dtype: torch.dtype | None = None) -> tuple[Any, Any]:
    """Model and processor of the checkpoint ``name`` from its local folder (see `read_config`).

    The config's ``model_type`` is checked before the weights load (``wrong_type(found)`` is
    raised otherwise), and the processor's ``qformer_tokenizer/`` must be there: without it
    transformers silently gives the Q-Former the language model's tokenizer.
    """
    source, config = read_config(name, cache_dir)
    if config.model_type != model_type:
        raise wrong_type(config.model_type)
    _require_in(name, source, "qformer_tokenizer")
    try:
        with _no_progress_bars():  # loading a backbone prints nothing, as open_clip's does
            model = model_cls.from_pretrained(source, local_files_only=True, **({} if dtype is None else {"dtype": dtype}))
    except OSError as exc:
        raise _unloadable(name, "its weights", exc) from exc
    try:
        processor = processor_cls.from_pretrained(source, local_files_only=True)
    except (OSError, ValueError, TypeError) as exc:
        raise _unloadable(name, f"its processor (tokenizer, qformer_tokenizer, {media_processor}; save it with "
                                "processor.save_pretrained into the model's folder)", exc) from exc
    return model, processor


@contextlib.contextmanager
def _no_progress_bars() -> Iterator[None]:
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


def image_token_text(processor: Any) -> str:
    """The processor's image token as text (an ``AddedToken`` it made, or the tokenizer's string)."""
    token = processor.image_token
    return str(getattr(token, "content", token))


def _resolve(name: str, cache_dir: str | None) -> Path:
    """The local folder ``name`` names: the folder itself, or a hub id's snapshot in the cache
    (downloaded first when it is not there and the hub can be reached).

    Everything then loads from a folder: given a hub id offline, transformers cannot find the
    ``qformer_tokenizer/`` subfolder in the cache and silently gives the Q-Former the language
    model's tokenizer instead (it only logs a warning), which changes every prompt.
    """
    from huggingface_hub import snapshot_download

    from omniclip.backbone import HF_HOST, _cached_hf_file, _require_network

    source = name[len(PREFIX):]
    path = Path(source).expanduser()
    if not path.is_dir():
        if path.exists() or source.startswith(("/", ".", "~")) or not _HUB_ID.fullmatch(source):
            raise FileNotFoundError(f"backbone `{name}`: {path} is not a folder (expected a folder written by "
                                    "save_pretrained, or a hub id such as Salesforce/instructblip-flan-t5-xl)")
        cached = _cached_hf_file(source, "config.json", cache_dir) is not None
        if not cached:
            _require_network(
                f"the files of the InstructBLIP model `{source}`",
                f"the repository https://{HF_HOST}/{source} (`hf download {source} --local-dir DIR`: config, "
                "weights, processor and both tokenizers)",
                "then name the folder instead of the hub id (instructblip:DIR; omniclip-describe --instructblip DIR)")
        # Other frameworks' weights are never read here.
        path = Path(snapshot_download(source, cache_dir=cache_dir, local_files_only=cached,
                                      ignore_patterns=["*.msgpack", "*.h5", "*.ot", "*.onnx"]))
    _require_in(name, path, "config.json")
    return path


def _require_in(name: str, folder: Path, entry: str) -> None:
    if not (folder / entry).exists():
        raise FileNotFoundError(f"backbone `{name}`: {folder} has no {entry} (expected a folder written by the "
                                "model's and its processor's save_pretrained, or a downloaded InstructBLIP repository)")


def _unloadable(name: str, what: str, exc: BaseException) -> WeightsUnavailableError:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return WeightsUnavailableError(f"backbone `{name}`: cannot load {what} ({first})")


__all__ = ["InstructBlipBackbone", "PREFIX", "is_instructblip", "load_instructblip", "load_pretrained", "read_config"]
