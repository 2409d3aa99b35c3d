"""Synthetic sound classes for the audio demo: seeded, batched waveforms, captions, spectrogram images.

Each clip is ``seconds`` long at ``sample_rate``: one sound of its class (random onset, duration,
peak amplitude and class parameters: pitch, sweep range, modulation or repetition rate, filter
cutoff) gated by raised-cosine ramps, over a faint white-noise background of random level.
The classes differ in what a spectrogram shows: a horizontal line (tone), a rising or falling
line (chirps), a wavy line (siren), a dashed line (beeps), periodic vertical lines (clicks),
one vertical band (noise burst), a steady band high up (hiss) or low down (rumble), a stack of
harmonics (buzz).

Captions name the class (or a synonym) with attributes read from the same draws (pitch, rate,
duration and loudness, each said when it lies in the lower or upper third of its range), so a
caption always describes its own clip. The image the tiny CLIP sees is the clip's Kaldi log-mel
filterbank (the audio tokenizer's own front end), area-pooled to the CLIP's image size, high
frequencies at the top. Everything is batched per class and drawn from one `torch.Generator`:
same seed and labels, same clips.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from omniclip.modalities.audio.features import fbank_picture, kaldi_fbank
from torch import Tensor

#: Class names, the first synonym of each entry being the name zero-shot prompts use.
SYNONYMS: dict[str, tuple[str, ...]] = {
    "tone": ("tone", "pure tone", "sine tone", "steady whistle"),
    "rising chirp": ("rising chirp", "upward sweep", "upchirp", "rising whistle"),
    "falling chirp": ("falling chirp", "downward sweep", "downchirp", "falling whistle"),
    "siren": ("siren", "wailing tone", "warble", "vibrato tone"),
    "beeps": ("beeps", "beeping", "pulsed tone", "beeper"),
    "clicks": ("clicks", "clicking", "ticking", "drum beat"),
    "noise burst": ("noise burst", "burst of noise", "crack", "pop"),
    "hiss": ("hiss", "hissing", "high noise", "steam"),
    "rumble": ("rumble", "rumbling", "low noise", "thunder"),
    "buzz": ("buzz", "buzzing", "sawtooth", "drone"),
}
CLASS_NAMES: tuple[str, ...] = tuple(SYNONYMS)

#: Zero-shot prompt templates; captions use the same phrasings, so prompts are in-distribution.
PROMPT_TEMPLATES: tuple[str, ...] = ("{}", "the sound of {}.", "a spectrogram of {}.", "a recording of {}.")
_CAPTION_TEMPLATES = PROMPT_TEMPLATES + ("{} in silence.", "i hear {}.")

#: Parameter ranges per class (Hz, Hz, seconds); "pitch" of a chirp is its lower end, "cutoff" of
#: hiss / rumble the edge of its noise band. Caption words come from the thirds of these ranges.
RANGES: dict[str, dict[str, tuple[float, float]]] = {
    "tone": {"pitch": (150.0, 4000.0)},
    "rising chirp": {"pitch": (150.0, 800.0), "sweep": (3.0, 8.0)},
    "falling chirp": {"pitch": (150.0, 800.0), "sweep": (3.0, 8.0)},
    "siren": {"pitch": (400.0, 2000.0), "rate": (1.5, 4.0), "depth": (1.3, 1.8)},
    "beeps": {"pitch": (400.0, 3000.0), "rate": (1.5, 5.0)},
    "clicks": {"rate": (2.0, 8.0)},
    "noise burst": {"duration": (0.05, 0.3)},
    "hiss": {"cutoff": (2000.0, 5000.0)},
    "rumble": {"cutoff": (100.0, 400.0)},
    "buzz": {"pitch": (80.0, 250.0)},
}
_DURATION = (0.5, 1.0)  # of every class but the noise burst
_RAMP = 0.01  # seconds of the raised-cosine fade in and out
_PULSE_RAMP = 0.004  # fades of each beep
_CLICK_DECAY = 0.002  # time constant of a click's exponential decay
_BEEP_DUTY = 0.5
_SWEEPS = ("rising chirp", "falling chirp")  # classes whose pitch is no single caption word

#: Log-mel values mapped to the image's black and white (the background noise sits near the
#: bottom, a loud tone near the top).
IMAGE_LEVELS: tuple[float, float] = (-8.0, 8.0)


@dataclass(frozen=True)
class SoundConfig:
    """How clips are drawn and turned into log-mel features (shared by tokenizer and images)."""

    classes: tuple[str, ...] = CLASS_NAMES
    sample_rate: int = 16000
    seconds: float = 1.0
    amplitude_range: tuple[float, float] = (0.05, 0.5)  # peak, log-uniform
    noise_range: tuple[float, float] = (3e-4, 3e-3)  # background white-noise std, log-uniform
    num_mel_bins: int = 64
    frames: int = 96  # log-mel frames kept (1 s gives 98 at a 10 ms shift)

    def __post_init__(self) -> None:
        unknown = [c for c in self.classes if c not in SYNONYMS]
        if unknown:
            raise ValueError(f"unknown sound classes {unknown} (known: {', '.join(CLASS_NAMES)})")
        if self.seconds < _DURATION[1]:
            raise ValueError(f"clips must last at least {_DURATION[1]} s, got {self.seconds}")

    @property
    def num_samples(self) -> int:
        return round(self.seconds * self.sample_rate)


@dataclass
class SoundBatch:
    """A batch of clips; class parameters are NaN where a class has none."""

    labels: Tensor  # [B] index into SoundConfig.classes
    waves: Tensor  # [B, T] float32
    pitch: Tensor  # [B] Hz at the onset (tone, chirps, siren centre, beeps, buzz fundamental)
    pitch_end: Tensor  # [B] Hz at the end of a chirp (= pitch for steady pitches)
    rate: Tensor  # [B] Hz: siren modulation, beep or click repetition
    cutoff: Tensor  # [B] Hz: lower edge of a hiss, upper edge of a rumble
    onset: Tensor  # [B] seconds
    duration: Tensor  # [B] seconds
    amplitude: Tensor  # [B] peak of the sound before the background is added
    captions: list[str]


def _uniform(generator: torch.Generator, n: int, bounds: tuple[float, float], log: bool = False) -> Tensor:
    low, high = (math.log(bounds[0]), math.log(bounds[1])) if log else bounds
    value = low + (high - low) * torch.rand(n, generator=generator)
    return value.exp() if log else value


def _fade(x: Tensor) -> Tensor:
    """Raised cosine of x clamped to [0, 1]: 0 -> 0, 1 -> 1."""
    return 0.5 - 0.5 * torch.cos(math.pi * x.clamp(0.0, 1.0))


def _gate(tau: Tensor, duration: Tensor, ramp: float) -> Tensor:
    """1 inside [0, duration] of local time ``tau`` [n, T], with raised-cosine fades of ``ramp`` s."""
    return _fade(torch.minimum(tau, duration[:, None] - tau) / ramp)


def _phase(frequency: Tensor, sample_rate: int) -> Tensor:
    """Running phase (radians) of an instantaneous frequency track [n, T] in Hz."""
    # Summed in float64: 16000 float32 additions would drift by a good fraction of a radian.
    return ((2 * math.pi / sample_rate) * torch.cumsum(frequency, dim=1, dtype=torch.float64)).float()


def _band_noise(n: int, length: int, sample_rate: int, low: Tensor, high: Tensor,
                generator: torch.Generator) -> Tensor:
    """White noise band-limited to [low, high] Hz per row (FFT mask), unit standard deviation."""
    spectrum = torch.fft.rfft(torch.randn(n, length, generator=generator), dim=1)
    freqs = torch.fft.rfftfreq(length, 1.0 / sample_rate)
    keep = (freqs >= low[:, None]) & (freqs <= high[:, None])
    noise = torch.fft.irfft(spectrum * keep, n=length, dim=1)
    return noise / noise.std(dim=1, keepdim=True)


@dataclass
class _Drawn:
    """A class's unit-peak signal before gating, and the parameters it was drawn with."""

    signal: Tensor  # [n, T]
    pitch: Tensor | None = None
    pitch_end: Tensor | None = None
    rate: Tensor | None = None
    cutoff: Tensor | None = None


_Synth = Callable[[Tensor, Tensor, SoundConfig, torch.Generator], _Drawn]


def _tone(tau: Tensor, duration: Tensor, cfg: SoundConfig, g: torch.Generator) -> _Drawn:
    pitch = _uniform(g, len(tau), RANGES["tone"]["pitch"], log=True)
    phase0 = _uniform(g, len(tau), (0.0, 2 * math.pi))
    return _Drawn(torch.sin(2 * math.pi * pitch[:, None] * tau + phase0[:, None]), pitch, pitch)


def _chirp(rising: bool) -> _Synth:
    def synth(tau: Tensor, duration: Tensor, cfg: SoundConfig, g: torch.Generator) -> _Drawn:
        spec = RANGES["rising chirp" if rising else "falling chirp"]
        low = _uniform(g, len(tau), spec["pitch"], log=True)
        high = low * _uniform(g, len(tau), spec["sweep"], log=True)
        start, end = (low, high) if rising else (high, low)
        # Exponential sweep over the sound's duration, held at its end values outside it.
        progress = (tau / duration[:, None]).clamp(0.0, 1.0)
        frequency = start[:, None] * (end / start)[:, None] ** progress
        return _Drawn(torch.sin(_phase(frequency, cfg.sample_rate)), start, end)

    return synth


def _siren(tau: Tensor, duration: Tensor, cfg: SoundConfig, g: torch.Generator) -> _Drawn:
    spec = RANGES["siren"]
    centre = _uniform(g, len(tau), spec["pitch"], log=True)
    rate = _uniform(g, len(tau), spec["rate"])
    depth = _uniform(g, len(tau), spec["depth"])
    # Pitch swings between centre / depth and centre * depth, sinusoidally in log frequency.
    frequency = centre[:, None] * depth[:, None] ** torch.sin(2 * math.pi * rate[:, None] * tau)
    return _Drawn(torch.sin(_phase(frequency, cfg.sample_rate)), centre, centre, rate)


def _beeps(tau: Tensor, duration: Tensor, cfg: SoundConfig, g: torch.Generator) -> _Drawn:
    spec = RANGES["beeps"]
    pitch = _uniform(g, len(tau), spec["pitch"], log=True)
    rate = _uniform(g, len(tau), spec["rate"])
    cycle = torch.remainder(tau * rate[:, None], 1.0)  # position within each on-off period
    pulse = _fade(torch.minimum(cycle, _BEEP_DUTY - cycle) / (_PULSE_RAMP * rate[:, None]))
    return _Drawn(pulse * torch.sin(2 * math.pi * pitch[:, None] * tau), pitch, pitch, rate)


def _clicks(tau: Tensor, duration: Tensor, cfg: SoundConfig, g: torch.Generator) -> _Drawn:
    rate = _uniform(g, len(tau), RANGES["clicks"]["rate"])
    since = torch.remainder(tau, 1.0 / rate[:, None])  # seconds since the last click
    noise = torch.randn(tau.shape, generator=g) / 3
    return _Drawn(noise * torch.exp(-since / _CLICK_DECAY), rate=rate)


def _noise_burst(tau: Tensor, duration: Tensor, cfg: SoundConfig, g: torch.Generator) -> _Drawn:
    return _Drawn(torch.randn(tau.shape, generator=g) / 3)


def _filtered(high_pass: bool) -> _Synth:
    def synth(tau: Tensor, duration: Tensor, cfg: SoundConfig, g: torch.Generator) -> _Drawn:
        cutoff = _uniform(g, len(tau), RANGES["hiss" if high_pass else "rumble"]["cutoff"], log=True)
        nyquist = torch.full_like(cutoff, cfg.sample_rate / 2)
        low, high = (cutoff, nyquist) if high_pass else (torch.zeros_like(cutoff), cutoff)
        return _Drawn(_band_noise(len(tau), tau.shape[1], cfg.sample_rate, low, high, g) / 3, cutoff=cutoff)

    return synth


def _buzz(tau: Tensor, duration: Tensor, cfg: SoundConfig, g: torch.Generator) -> _Drawn:
    pitch = _uniform(g, len(tau), RANGES["buzz"]["pitch"], log=True)
    # A naive sawtooth: its harmonics above Nyquist fold back, 30-40 dB down for these pitches.
    return _Drawn(2 * torch.remainder(pitch[:, None] * tau, 1.0) - 1, pitch, pitch)


_SYNTHS: dict[str, _Synth] = {
    "tone": _tone,
    "rising chirp": _chirp(rising=True),
    "falling chirp": _chirp(rising=False),
    "siren": _siren,
    "beeps": _beeps,
    "clicks": _clicks,
    "noise burst": _noise_burst,
    "hiss": _filtered(high_pass=True),
    "rumble": _filtered(high_pass=False),
    "buzz": _buzz,
}


def _third(value: float, bounds: tuple[float, float], words: tuple[str, str], log: bool = False) -> str | None:
    """``words[0]`` in the lower third of ``bounds``, ``words[1]`` in the upper third, else None."""
    low, high = (math.log(bounds[0]), math.log(bounds[1])) if log else bounds
    x = ((math.log(value) if log else value) - low) / (high - low)
    return words[0] if x < 1 / 3 else words[1] if x > 2 / 3 else None


def _caption(name: str, pitch: float, rate: float, duration: float, amplitude: float, amplitude_range: tuple[float, float],
             draws: list[float]) -> str:
    """One caption from seven uniform draws (synonym, template, which attributes to say)."""
    synonyms = SYNONYMS[name]
    noun = synonyms[0] if draws[0] < 0.5 else synonyms[1 + int(draws[1] * (len(synonyms) - 1))]
    spec = RANGES[name]
    candidates = [
        _third(amplitude, amplitude_range, ("quiet", "loud"), log=True),
        _third(duration, spec.get("duration", _DURATION), ("short", "long")),
        _third(rate, spec["rate"], ("slow", "fast")) if "rate" in spec else None,
        _third(pitch, spec["pitch"], ("low", "high"), log=True) if "pitch" in spec and name not in _SWEEPS else None,
    ]
    words = [w for w, d in zip(candidates, draws[2:6]) if w and d < 0.6]
    template = _CAPTION_TEMPLATES[int(draws[6] * len(_CAPTION_TEMPLATES))]
    return template.replace("{}", " ".join(words + [noun]))


def generate(cfg: SoundConfig, labels: Tensor, generator: torch.Generator) -> SoundBatch:
    """Draw one clip per label (indices into ``cfg.classes``), with its parameters and caption."""
    labels = torch.as_tensor(labels, dtype=torch.long)
    n, length = labels.shape[0], cfg.num_samples
    if labels.numel() and (labels.min() < 0 or labels.max() >= len(cfg.classes)):
        raise ValueError(f"labels must lie in [0, {len(cfg.classes)}), got {labels.tolist()}")
    t = torch.arange(length) / cfg.sample_rate
    amplitude = _uniform(generator, n, cfg.amplitude_range, log=True)
    noise_std = _uniform(generator, n, cfg.noise_range, log=True)
    nan = torch.full((n,), math.nan)
    params = {key: nan.clone() for key in ("pitch", "pitch_end", "rate", "cutoff")}
    duration, onset = torch.empty(n), torch.empty(n)
    waves = torch.empty(n, length)
    for index, name in enumerate(cfg.classes):  # fixed order: the same seed gives the same clips
        rows = (labels == index).nonzero().squeeze(1)
        if rows.numel() == 0:
            continue
        d = _uniform(generator, rows.numel(), RANGES[name].get("duration", _DURATION))
        start = (cfg.seconds - d) * torch.rand(rows.numel(), generator=generator)
        tau = t - start[:, None]
        drawn = _SYNTHS[name](tau, d, cfg, generator)
        waves[rows] = drawn.signal * _gate(tau, d, _RAMP)
        duration[rows], onset[rows] = d, start
        for key, column in params.items():
            value = getattr(drawn, key)
            if value is not None:
                column[rows] = value
    waves = amplitude[:, None] * waves + noise_std[:, None] * torch.randn(n, length, generator=generator)
    draws = torch.rand(n, 7, generator=generator).tolist()
    captions = [
        _caption(cfg.classes[int(label)], p, r, d, a, cfg.amplitude_range, dr)
        for label, p, r, d, a, dr in zip(labels, params["pitch"].tolist(), params["rate"].tolist(),
                                         duration.tolist(), amplitude.tolist(), draws)
    ]
    return SoundBatch(labels, waves, params["pitch"], params["pitch_end"], params["rate"], params["cutoff"],
                      onset, duration, amplitude, captions)


def log_mel(waves: Tensor, cfg: SoundConfig) -> Tensor:
    """Kaldi log-mel filterbank [B, frames, mel] of clips [B, T]: the audio tokenizer's front end
    without its normalisation."""
    return kaldi_fbank(waves, cfg.sample_rate, cfg.num_mel_bins, target_frames=cfg.frames)


def spectrogram_image(fbank: Tensor, size: int = 32) -> Tensor:
    """CLIP input [B, 3, S, S] in [-1, 1] from log-mel [B, frames, mel]: time left to right, high
    mel bands at the top, `IMAGE_LEVELS` mapped to black and white, area-pooled to S x S (grey,
    the same value in all three channels)."""
    picture = fbank_picture(fbank, size)
    low, high = IMAGE_LEVELS
    grey = ((picture - low) / (high - low)).clamp(0.0, 1.0) * 2 - 1
    return grey.expand(-1, 3, -1, -1).contiguous()
