"""Reading audio files and cutting them into fixed-length clips.

`load_audio` turns any audio file (or the audio track of a video) into one mono float32 waveform
at the target rate, and rejects files that would poison a batch (corrupt, truncated, NaN, silent,
absurd amplitudes) with a `SampleError` naming the file and the problem. `sample_clips` cuts a
waveform into the fixed-length clips the fbank front end expects, the way ViT-Lens does: one
random crop for training, evenly spaced crops for evaluation, short files repeated to length.
`load_clips` does both, and reads only the clips' stretch of a long file.

Bounds on hostile files: a sample rate outside [`MIN_SAMPLE_RATE`, `MAX_SAMPLE_RATE`] is
refused (a header claiming 1 Hz made a 2 GB waveform); `resample` keeps the polyphase filter
bank to at most `MAX_PHASES` phases (11127 Hz -> 16 kHz, co-prime, took 2.9 GB for 2 s with
torchaudio's exact kernel), approximating the ratio to better than 1e-6 when it must; no read
holds more than `MAX_READ_SAMPLES` samples (frames x channels: a header can claim 65535 channels).
"""

from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import soundfile
import torch
import torchaudio.functional as AF

from omniclip.errors import SampleError

# Suffixes libsndfile decodes without FFmpeg, with the format name it reports for them. A format
# is only used when the installed libsndfile lists it (MP3 needs libsndfile >= 1.1).
_SOUNDFILE_FORMATS = {
    ".wav": "WAV",
    ".flac": "FLAC",
    ".ogg": "OGG",
    ".oga": "OGG",
    ".opus": "OGG",
    ".mp3": "MP3",
    ".aiff": "AIFF",
    ".aif": "AIFF",
}

# libsndfile silently shortens a WAV whose data chunk runs past the end of the file and only
# says so in its log ("data : 32000 (should be 15978)"). Streaming writers leave the size at
# 0xFFFFFFFF ("unknown"); that is not truncation.
_DATA_CHUNK_LOG = re.compile(r"^data\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)
_UNKNOWN_CHUNK_SIZE = 0xFFFFFFFF
# libsndfile's text for every file it cannot parse, even a regular one; it misleads there.
_SNDFILE_PIPE_TEXT = "File does not exist or is not a regular file (possibly a pipe?)."

_FULL_SCALE = 0.999
MIN_SAMPLE_RATE = 1000
MAX_SAMPLE_RATE = 1_000_000
#: Most samples (frames x channels) one read may hold: 128 MB of float32, an hour of 16 kHz mono
#: is 58M. Files longer than that are only read clip by clip (`load_clips`).
MAX_READ_SAMPLES = 1 << 25
MAX_PHASES = 1000
#: Float samples lie within +-1; far beyond it the power spectrum overflows float32 (NaN fbank
#: from about 1e19) and the file is garbage or wrongly scaled. 1e8 still admits int16/int24-
#: scaled floats.
MAX_AMPLITUDE = 1e8
#: Files up to this long are decoded whole (and checked whole); longer ones are read per clip.
MAX_DECODE_SECONDS = 60.0


def resample(wave: torch.Tensor, orig_sr: int, new_sr: int) -> torch.Tensor:
    """``wave`` [..., T] from ``orig_sr`` to ``new_sr`` Hz with torchaudio's windowed sinc.

    Exact (torchaudio's defaults, the reference) whenever the reduced ratio has at most
    `MAX_PHASES` terms, which covers every common rate; otherwise the ratio is the nearest
    fraction with bounded terms (`resample_ratio`), so memory stays bounded.
    """
    down, up = resample_ratio(orig_sr, new_sr)
    if down == up:
        return wave
    return AF.resample(wave, orig_freq=down, new_freq=up)


def resample_ratio(orig_sr: int, new_sr: int) -> tuple[int, int]:
    """(orig, new) phases `resample` uses: ``orig_sr / new_sr`` reduced, or approximated."""
    ratio = Fraction(new_sr, orig_sr)
    if max(ratio.numerator, ratio.denominator) > MAX_PHASES:
        # bound both terms: the denominator directly, the numerator through the ratio
        limit = MAX_PHASES if new_sr <= orig_sr else max(1, MAX_PHASES * orig_sr // new_sr)
        ratio = ratio.limit_denominator(limit)
    return ratio.denominator, ratio.numerator


def _filter_width(down: int, up: int) -> int:
    """Input samples torchaudio's kernel reaches on each side (its formula, lowpass width 6)."""
    return math.ceil(6 * down / (min(down, up) * 0.99))


@dataclass
class _Source:
    """An opened audio file: its rate, declared frame count and how to read a stretch of it."""

    path: Path
    sr: int
    frames: int | None  # None: unknown until decoded (some FFmpeg containers)
    backend: str  # "soundfile" or "ffmpeg"
    channels: int = 1
    exact_length: bool = True  # the header's frame count is exact (not MP3's estimate)
    fmt: str = ""


def _check_rate(path: Path, sr: int) -> None:
    if not MIN_SAMPLE_RATE <= sr <= MAX_SAMPLE_RATE:
        raise SampleError(path, f"sample rate {sr} Hz in the header is implausible (accepted: "
                                f"{MIN_SAMPLE_RATE} to {MAX_SAMPLE_RATE} Hz); corrupt header?")


def _sndfile_reason(err: Exception, path: Path, fmt: str) -> str:
    """libsndfile's complaint without the path it repeats, and without its pipe guess."""
    text = str(err).replace(f"Error opening {str(path)!r}: ", "")
    if _SNDFILE_PIPE_TEXT in text:  # the file is known to be regular here
        text = f"libsndfile found no valid {fmt or 'audio'} data in it"
    return text


def _soundfile_problem(err: Exception, path: Path, fmt: str) -> str:
    return f"cannot decode audio (corrupt or truncated file): {_sndfile_reason(err, path, fmt)}"


def _open(path: Path) -> _Source:
    """Open ``path`` with libsndfile when its suffix (or, without a known suffix, its content)
    is a libsndfile format, else with FFmpeg (torchcodec)."""
    fmt = _SOUNDFILE_FORMATS.get(path.suffix.lower())
    usable = fmt is not None and fmt in soundfile.available_formats()
    if usable or path.suffix.lower() not in _FFMPEG_ONLY:
        try:
            info = soundfile.info(str(path))
        except (soundfile.LibsndfileError, RuntimeError) as err:
            if usable:
                raise SampleError(path, _soundfile_problem(err, path, fmt)) from err
            sniff_error: Exception | None = err  # unknown suffix: maybe FFmpeg can read it
        else:
            _check_rate(path, info.samplerate)
            return _Source(path, info.samplerate, info.frames, "soundfile", max(1, info.channels),
                           info.format != "MP3", info.format)
    else:
        sniff_error = None
    decoder = _ffmpeg_decoder(path, sniff_error)
    meta = decoder.metadata
    sr = int(meta.sample_rate or 0)
    _check_rate(path, sr)
    duration = meta.duration_seconds_from_header
    frames = None if duration is None else int(math.ceil(duration * sr))
    return _Source(path, sr, frames, "ffmpeg", max(1, int(meta.num_channels or 1)), False)


# Suffixes that are never libsndfile's: go straight to FFmpeg.
_FFMPEG_ONLY = {".m4a", ".aac", ".mp4", ".mkv", ".webm", ".avi", ".mov", ".wma", ".3gp"}


def _ffmpeg_decoder(path: Path, sniff_error: Exception | None) -> Any:
    try:
        from torchcodec.decoders import AudioDecoder
    except (ImportError, RuntimeError, OSError) as err:
        if sniff_error is not None:
            what = f"'{path.suffix}' file" if path.suffix else "file without a suffix"
            problem = (f"cannot decode audio: libsndfile does not recognise this {what} "
                       f"({_sndfile_reason(sniff_error, path, '')}), and other formats "
                       f"need FFmpeg and torchcodec (apt-get install ffmpeg; pip install torchcodec): {err}")
        else:
            problem = (f"decoding '{path.suffix}' files needs FFmpeg and torchcodec "
                       f"(apt-get install ffmpeg; pip install torchcodec): {err}")
        raise SampleError(path, problem) from err
    try:
        return AudioDecoder(str(path))
    except (RuntimeError, ValueError) as err:
        raise SampleError(path, f"cannot decode audio: {err}") from err


def _read(source: _Source, start: int = 0, stop: int | None = None) -> torch.Tensor:
    """Channels [C, T] of frames ``start:stop`` (``None``: to the end); truncation is an error.

    A read of more than `MAX_READ_SAMPLES` (by the header) is refused before decoding.
    """
    path = source.path
    end = source.frames if stop is None else stop
    if end is not None and (end - start) * source.channels > MAX_READ_SAMPLES:
        raise SampleError(path, f"reading {end - start} frames x {source.channels} channels is more than "
                                f"{MAX_READ_SAMPLES} samples (MAX_READ_SAMPLES); too long or too many channels "
                                "to decode at once")
    if source.backend == "soundfile":
        try:
            with soundfile.SoundFile(str(path)) as f:
                if start:
                    f.seek(start)
                want = -1 if stop is None else stop - start
                data = f.read(want, dtype="float32", always_2d=True)
                log = f.extra_info
        except (soundfile.LibsndfileError, RuntimeError) as err:
            raise SampleError(path, _soundfile_problem(err, path, source.fmt)) from err
        chunk = _DATA_CHUNK_LOG.search(log)
        if chunk is not None:
            declared_bytes, held_bytes = int(chunk.group(1)), int(chunk.group(2))
            if declared_bytes != _UNKNOWN_CHUNK_SIZE and held_bytes < declared_bytes:
                raise SampleError(
                    path, f"truncated: data chunk declares {declared_bytes} bytes, file holds {held_bytes}"
                )
        expected = (source.frames if stop is None else min(stop, source.frames or stop)) - start
        if source.exact_length and len(data) < expected:
            if stop is None and not start:
                raise SampleError(path, f"truncated: {len(data)} of {source.frames} declared frames decoded")
            raise SampleError(path, f"truncated: {len(data)} of the {expected} frames from {start} decoded "
                                    f"({source.frames} declared)")
        return torch.from_numpy(data).T
    decoder = _ffmpeg_decoder(path, None)
    try:
        if start == 0 and stop is None:
            samples = decoder.get_all_samples()
        else:
            samples = decoder.get_samples_played_in_range(start / source.sr, None if stop is None else stop / source.sr)
    except (RuntimeError, ValueError) as err:
        raise SampleError(path, f"cannot decode audio: {err}") from err
    return samples.data.float()


def _checked_mono(
    source: _Source, channels: torch.Tensor, *, allow_silent: bool, silence_threshold: float,
    clip_warn_fraction: float, max_amplitude: float, span: str = "",
) -> torch.Tensor:
    """Mono [T] of ``channels`` [C, T], after the checks that keep a batch sane.

    The silence check runs on the mono signal (antiphase channels cancel in the average);
    ``span`` names the stretch read when it is not the whole file.
    """
    path = source.path
    if channels.shape[1] == 0:
        raise SampleError(path, f"contains no audio samples{span}")
    # One pass finds the peak; NaN and inf make it non-finite, and only then are they counted.
    low, high = torch.aminmax(channels)
    peak = max(abs(low.item()), abs(high.item()))
    if not math.isfinite(peak):
        bad = (~torch.isfinite(channels)).sum().item()
        raise SampleError(path, f"{bad} NaN or infinite samples{span}")
    if peak > max_amplitude:
        raise SampleError(path, f"peak amplitude {peak:.3g}{span} is absurd for audio (float samples lie "
                                f"within +-1; limit {max_amplitude:g}, max_amplitude): corrupt or wrongly "
                                "scaled file")
    mono = channels[0] if channels.shape[0] == 1 else channels.mean(dim=0)
    mono_peak = mono.abs().max().item()
    if mono_peak < silence_threshold and not allow_silent:
        if peak >= silence_threshold:
            raise SampleError(path, f"silent after averaging its {channels.shape[0]} channels to mono{span} "
                                    f"(peak amplitude {mono_peak:.3g} < {silence_threshold:g}, each channel up to "
                                    f"{peak:.3g}: the channels cancel out, antiphase?)")
        raise SampleError(
            path,
            f"silent{span} (peak amplitude {mono_peak:.3g} < {silence_threshold:g}); "
            "pass allow_silent=True to keep silent files",
        )
    if peak >= _FULL_SCALE:
        clipped = (channels.abs() >= _FULL_SCALE).sum().item() / channels.numel()
        if clipped > clip_warn_fraction:
            warnings.warn(f"{path}: {clipped:.1%} of samples at full scale (clipped recording)", stacklevel=3)
    return mono


def _prepare(path: str | Path) -> _Source:
    path = Path(path)
    if not path.exists():
        raise SampleError(path, "file not found")
    if not path.is_file():
        raise SampleError(path, "not a regular file")
    if path.stat().st_size == 0:
        raise SampleError(path, "file is empty (0 bytes)")
    return _open(path)


def load_audio(
    path: str | Path,
    target_sr: int = 16000,
    *,
    allow_silent: bool = False,
    silence_threshold: float = 1e-4,
    clip_warn_fraction: float = 0.01,
    max_amplitude: float = MAX_AMPLITUDE,
) -> torch.Tensor:
    """Decode ``path`` into a mono float32 waveform [T] at ``target_sr`` Hz.

    Channels are averaged; other rates are resampled with `resample` (torchaudio's defaults, as
    in the reference). A file whose mono signal peaks below ``silence_threshold`` is rejected
    unless ``allow_silent``, and so is one whose peak exceeds ``max_amplitude``; one with more
    than ``clip_warn_fraction`` of its samples at full scale is kept with a warning, since
    clipping degrades but does not invalidate it. A file of more than `MAX_READ_SAMPLES` samples
    (frames x channels) is refused: read it clip by clip with `load_clips`.
    """
    source = _prepare(path)
    mono = _checked_mono(source, _read(source), allow_silent=allow_silent, silence_threshold=silence_threshold,
                         clip_warn_fraction=clip_warn_fraction, max_amplitude=max_amplitude)
    return resample(mono, source.sr, target_sr) if source.sr != target_sr else mono


def load_clips(
    path: str | Path,
    target_sr: int,
    clip_seconds: float,
    num_clips: int = 1,
    *,
    train: bool,
    pad: str = "repeat",
    generator: torch.Generator | None = None,
    max_decode_seconds: float = MAX_DECODE_SECONDS,
    allow_silent: bool = False,
    silence_threshold: float = 1e-4,
    clip_warn_fraction: float = 0.01,
    max_amplitude: float = MAX_AMPLITUDE,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`sample_clips` of `load_audio`: clips [num_clips, clip_len] and their centres [num_clips] (s).

    A file longer than ``max_decode_seconds`` is not decoded whole: each clip's stretch is read
    (plus the resampler's reach, aligned to its phases, so the samples equal those of the whole
    decode) and checked on its own. Shorter files are decoded and checked whole, as by
    `load_audio`.
    """
    checks = dict(allow_silent=allow_silent, silence_threshold=silence_threshold,
                  clip_warn_fraction=clip_warn_fraction, max_amplitude=max_amplitude)
    source = _prepare(path)
    clip_len = int(round(clip_seconds * target_sr))
    down, up = resample_ratio(source.sr, target_sr)
    length = None if source.frames is None else math.ceil(source.frames * up / down)
    small = source.frames is not None and source.frames * source.channels <= MAX_READ_SAMPLES
    if length is None or (source.frames <= max_decode_seconds * source.sr and small) or length <= clip_len:
        mono = _checked_mono(source, _read(source), **checks)
        wave = resample(mono, source.sr, target_sr) if source.sr != target_sr else mono
        if wave.numel() == 0:
            raise SampleError(source.path, "contains no audio samples")
        starts = clip_starts(wave.numel(), clip_len, num_clips, train=train, generator=generator)
        clips = sample_clips(wave, target_sr, clip_seconds, num_clips, train=train, generator=generator, pad=pad,
                             starts=starts)
        centres = (starts.double() + min(clip_len, wave.numel()) / 2) / target_sr
        if wave.numel() < clip_len:
            centres = torch.full((num_clips,), wave.numel() / 2 / target_sr, dtype=torch.float64)
        return clips, centres
    starts = clip_starts(length, clip_len, num_clips, train=train, generator=generator)
    clips = torch.stack([_read_stretch(source, int(a), clip_len, down, up, checks) for a in starts])
    return clips, (starts.double() + clip_len / 2) / target_sr


def _read_stretch(source: _Source, start: int, count: int, down: int, up: int, checks: dict) -> torch.Tensor:
    """Output samples ``start:start+count`` of the whole file's resampled mono signal.

    The resampler maps block ``i`` of ``up`` outputs to inputs ``[i*down - w, (i+1)*down + w)``;
    reading from a multiple of ``down`` keeps the blocks aligned, so the samples equal the
    whole decode's (the file's edges are zero-padded alike).
    """
    width = _filter_width(down, up) if down != up else 0
    first_block, last_block = start // up, (start + count - 1) // up
    first = max(0, first_block - math.ceil(width / down)) * down
    stop = min(source.frames, (last_block + 1) * down + width + down)
    span = f" between {first / source.sr:.2f} s and {stop / source.sr:.2f} s"
    channels = _read(source, first, stop)
    mono = _checked_mono(source, channels, **checks, span=span)
    wave = AF.resample(mono, orig_freq=down, new_freq=up) if down != up else mono
    offset = start - first // down * up
    out = wave[offset:offset + count]
    if out.numel() < count:  # the header promised more frames than the decoder gave
        real_frames = first + channels.shape[1]
        real_length = math.ceil(real_frames * up / down)
        if source.exact_length or real_frames >= source.frames or real_length < count:
            raise SampleError(source.path, f"truncated: {out.numel()} of {count} samples{span} decoded")
        # an estimated length (MP3, FFmpeg) ran long: learn the real one, end the clip there
        source.frames = real_frames
        return _read_stretch(source, real_length - count, count, down, up, checks)
    return out


def clip_starts(
    length: int, clip_len: int, num_clips: int, *, train: bool, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Start indices [num_clips] of clips of ``clip_len`` in a wave of ``length`` (0 when shorter).

    Training draws each start uniformly; evaluation starts clip i at
    ``i * (length - clip_len) // num_clips``, the ViT-Lens evaluation sampler.
    """
    if length < clip_len:
        return torch.zeros(num_clips, dtype=torch.long)
    max_start = length - clip_len
    if train:
        return torch.randint(0, max_start + 1, (num_clips,), generator=generator)
    return torch.arange(num_clips) * max_start // num_clips


def sample_clips(
    wave: torch.Tensor,
    sr: int,
    clip_seconds: float = 5.0,
    num_clips: int = 1,
    *,
    train: bool,
    generator: torch.Generator | None = None,
    pad: str = "repeat",
    starts: torch.Tensor | None = None,
) -> torch.Tensor:
    """Cut ``wave`` [T] into ``num_clips`` clips [num_clips, clip_len].

    Training draws each clip's start uniformly. Evaluation starts clip i at
    ``i * (T - clip_len) // num_clips``, the ViT-Lens evaluation sampler (its last clip ends
    short of the file's end; the published numbers were measured that way). ``starts`` gives
    them instead (`clip_starts`). A file shorter than a clip is repeated to length
    (``pad="repeat"``, the reference: training rotates it by a random offset) or zero-padded at
    the end (``pad="zeros"``).
    """
    if wave.dim() != 1 or wave.numel() == 0:
        raise ValueError(f"sample_clips expects a non-empty 1-D waveform, got shape {tuple(wave.shape)}")
    if pad not in ("repeat", "zeros"):
        raise ValueError(f"pad must be 'repeat' or 'zeros', got {pad!r}")
    clip_len = int(round(clip_seconds * sr))
    length = wave.numel()

    if length >= clip_len:
        if starts is None:
            starts = clip_starts(length, clip_len, num_clips, train=train, generator=generator)
        return wave.unfold(0, clip_len, 1)[starts.to(wave.device)]

    if pad == "zeros":
        clips = wave.new_zeros(num_clips, clip_len)
        clips[:, :length] = wave
        return clips
    if train:
        offsets = torch.randint(0, length, (num_clips, 1), generator=generator)
    else:
        offsets = torch.zeros(num_clips, 1, dtype=torch.long)
    index = (offsets + torch.arange(clip_len)) % length
    return wave[index.to(wave.device)]
