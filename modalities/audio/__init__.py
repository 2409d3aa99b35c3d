"""The audio modality: ViT-Lens audio (Kaldi fbank -> AST-style patches -> Perceiver -> frozen CLIP ViT).

Registers the modality ``audio`` and, through `omniclip.modalities.audio.convert`, the checkpoint
converter ``audio.vitlens-l``.

The model input is a batch of waveform clips [B, T] at 16 kHz (``batch["inputs"]``); the
tokenizer computes the fbank itself, batched on the model's device. Where the fbank runs was a
throughput choice: on CPU workers, per file, it is the costliest step of the input pipeline
after decoding (tools/bench_audio.py), while on the accelerator the whole batch takes one
unfold, one FFT and one matmul; the waveform is also no larger than the 512 x 128 fbank it
becomes, so nothing is lost in transfer. SpecAugment and the noise augmentation follow the
tokenizer's training mode, so ``model.encode(waves)`` in eval mode is the plain, deterministic
ViT-Lens forward. Mixup needs the captions, so the datasets do it (see `datasets`).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn
from torch.utils.data import Dataset

from omniclip import registry
from omniclip.errors import ConfigError
from omniclip.modalities.audio import convert as _converters  # noqa: F401  (registers converters)
from omniclip.modalities.audio.datasets import build_dataset
from omniclip.modalities.audio.features import AUDIOSET_MEAN, AUDIOSET_STD, AudioFrontend, fbank_picture
from omniclip.modalities.audio.templates import TEMPLATES
from omniclip.modalities.audio.tokenizer import AudioPatchTokenizer, audio_lens_defaults
from omniclip.modality import Modality, TrunkSpec, collate_views
from omniclip.patch_grid import PatchGridEncoder

_PERCEIVER: dict[str, Any] = {
    "name": "perceiver",
    "input_dim": "auto",
    "latent_dim": "auto",
    "num_latents": "auto",
    "latent_heads": "auto",
    "depth": 2,
    "self_per_cross_attn": 3,
    "cross_heads": 1,
    "cross_dim_head": 64,
    "latent_dim_head": 64,
    "weight_tie_layers": False,
}
#: Lens defaults by backbone name (`audio_lens_defaults`); "default" sizes itself from the trunk.
LENSES: dict[str, dict[str, Any]] = {
    "default": dict(_PERCEIVER),
    **{name: {**_PERCEIVER, **values} for name, values in audio_lens_defaults.items()},
}


class AudioTokenizer(AudioPatchTokenizer):
    """Waveform clips [B, T] -> normalised Kaldi fbank [B, frames, mel] -> patch tokens [B, N, width].

    The fbank runs in float32 with autocast off (log-mel of bf16 spectra loses the quiet bins);
    the patch projection then runs under whatever autocast the caller set. Parameters are those
    of `AudioPatchTokenizer` (``conv1.weight``, ``pos_emb``): the front end has none.
    """

    def __init__(
        self,
        width: int,
        patch_size: int,
        stride: int | tuple[int, int] = 10,
        sample_rate: int = 16000,
        num_mel_bins: int = 128,
        target_frames: int = 512,
        mean: float = AUDIOSET_MEAN,
        std: float = AUDIOSET_STD,
        freq_mask: int = 12,
        time_mask: int = 48,
        noise: bool = True,
    ):
        super().__init__(width, patch_size, stride, num_mel_bins, target_frames)
        self.out_dim = width
        self.frontend = AudioFrontend(sample_rate, num_mel_bins, target_frames, mean, std, freq_mask, time_mask, noise)

    def forward(self, waves: torch.Tensor) -> torch.Tensor:
        if waves.dim() != 2:
            raise ValueError(f"the audio tokenizer expects waveform clips [B, T], got shape {tuple(waves.shape)}")
        with torch.autocast(waves.device.type, enabled=False):
            fbank = self.frontend(waves.float())
        return super().forward(fbank.to(self.conv1.weight.dtype))


class AudioGridTokenizer(nn.Module):
    """Waveform clips [B, T] -> normalised Kaldi fbank -> the fbank laid out as the trunk's picture
    (`fbank_picture`: time left to right, high bands at the top, area-pooled to ``image_size``) ->
    a learned per-patch encoder: one token per patch position of the trunk, [B, (S / p)^2, width].

    For a trunk that was taught on spectrogram pictures, the tokens then sit where its own patches
    do (with `AudioTokenizer` a lens must learn that layout); the lens between may be the identity.
    """

    def __init__(
        self,
        width: int,
        image_size: int,
        patch_size: int,
        hidden_dim: int = 256,
        sample_rate: int = 16000,
        num_mel_bins: int = 128,
        target_frames: int = 512,
        mean: float = AUDIOSET_MEAN,
        std: float = AUDIOSET_STD,
        freq_mask: int = 0,
        time_mask: int = 0,
        noise: bool = False,
    ):
        super().__init__()
        self.frontend = AudioFrontend(sample_rate, num_mel_bins, target_frames, mean, std, freq_mask, time_mask, noise)
        self.encoder = PatchGridEncoder(1, image_size, patch_size, width, hidden_dim)
        self.out_dim = width
        self.num_tokens = self.encoder.num_tokens

    def forward(self, waves: torch.Tensor) -> torch.Tensor:
        if waves.dim() != 2:
            raise ValueError(f"the audio tokenizer expects waveform clips [B, T], got shape {tuple(waves.shape)}")
        with torch.autocast(waves.device.type, enabled=False):
            picture = fbank_picture(self.frontend(waves.float()), self.encoder.image_size)
        return self.encoder(picture)


_TOKENIZER_KEYS = ("patch_size", "stride", "sample_rate", "num_mel_bins", "target_frames", "mean", "std",
                   "freq_mask", "time_mask", "noise")


def build_tokenizer(cfg: Mapping[str, Any], width: int, patch_size: int) -> AudioTokenizer:
    """`AudioTokenizer` of ``width`` with the trunk's ``patch_size`` (``cfg`` may override it)."""
    params = dict(cfg)
    unknown = sorted(set(params) - set(_TOKENIZER_KEYS))
    if unknown:
        raise ConfigError(unknown[0], f"unknown option for the audio tokenizer (known: {', '.join(_TOKENIZER_KEYS)})")
    params.setdefault("patch_size", patch_size)
    if isinstance(params.get("stride"), list):
        params["stride"] = tuple(params["stride"])
    try:
        return AudioTokenizer(width, **params)
    except ValueError as err:
        raise ConfigError("patch_size", str(err)) from None


def collate_clips(samples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Training clips [T] stack; evaluation samples of several clips [n, T] flatten, one row each."""
    return collate_views(samples, sample_dims=1)


class AudioModality(Modality):
    name = "audio"
    default_lens = LENSES
    templates = {name: list(t) for name, t in TEMPLATES.items()}
    class_name_files = {"esc50": "esc50.txt", "audioset": "audioset.txt"}

    def build_tokenizer(self, cfg: Mapping[str, Any], trunk: TrunkSpec) -> nn.Module:
        return build_tokenizer(cfg, trunk.width, trunk.patch_size)

    def build_dataset(
        self, cfg: Mapping[str, Any], split: str, image_transform: Callable[[Any], torch.Tensor] | None = None
    ) -> Dataset:
        return build_dataset(cfg, split, image_transform)

    def collate(self, samples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        return collate_clips(samples)



registry.register("modality", "audio", AudioModality)
