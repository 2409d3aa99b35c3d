"""Reading audio files and cutting them into fixed-length clips.

`load_audio` turns any audio file (or the audio track of a video) into one mono float32 waveform
at the target rate, and rejects files that would poison a batch (corrupt, truncated, NaN, silent)
with a `SampleError` naming the file and the problem. `sample_clips` cuts a waveform into the
fixed-length clips the fbank front end expects, the way ViT-Lens does: one random crop for
training, evenly spaced crops for evaluation, short files repeated to length.
"""

from __future__ import annotations

import math
import re
import warnings
from pathlib import Path

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

_FULL_SCALE = 0.999


def load_audio(
    path: str | Path,
    target_sr: int = 16000,
    *,
    allow_silent: bool = False,
    silence_threshold: float = 1e-4,
    clip_warn_fraction: float = 0.01,
) -> torch.Tensor:
    """Decode ``path`` into a mono float32 waveform [T] at ``target_sr`` Hz.

    Channels are averaged; other rates are resampled with ``torchaudio.functional.resample``
    (its defaults, as in the reference). A file whose peak stays below ``silence_threshold`` is
    rejected unless ``allow_silent``; one with more than ``clip_warn_fraction`` of its samples at
    full scale is kept with a warning, since clipping degrades but does not invalidate it.
    """
    path = Path(path)
    if not path.exists():
        raise SampleError(path, "file not found")
    if not path.is_file():
        raise SampleError(path, "not a regular file")
    if path.stat().st_size == 0:
        raise SampleError(path, "file is empty (0 bytes)")

    fmt = _SOUNDFILE_FORMATS.get(path.suffix.lower())
    if fmt is not None and fmt in soundfile.available_formats():
        channels, sr = _decode_soundfile(path, exact_length=fmt != "MP3")
    else:
        channels, sr = _decode_ffmpeg(path)

    if channels.shape[1] == 0:
        raise SampleError(path, "contains no audio samples")
    # One pass finds the peak; NaN and inf make it non-finite, and only then are they counted.
    low, high = torch.aminmax(channels)
    peak = max(-low.item(), high.item())
    if not math.isfinite(peak):
        bad = (~torch.isfinite(channels)).sum().item()
        raise SampleError(path, f"{bad} NaN or infinite samples")
    if peak < silence_threshold and not allow_silent:
        raise SampleError(
            path,
            f"silent (peak amplitude {peak:.3g} < {silence_threshold:g}); "
            "pass allow_silent=True to keep silent files",
        )
    if peak >= _FULL_SCALE:
        clipped = (channels.abs() >= _FULL_SCALE).sum().item() / channels.numel()
        if clipped > clip_warn_fraction:
            warnings.warn(f"{path}: {clipped:.1%} of samples at full scale (clipped recording)", stacklevel=2)

    wave = channels[0] if channels.shape[0] == 1 else channels.mean(dim=0)
    if sr != target_sr:
        wave = AF.resample(wave, orig_freq=sr, new_freq=target_sr)
    return wave


def _decode_soundfile(path: Path, exact_length: bool) -> tuple[torch.Tensor, int]:
    """Channels [C, T] and rate through libsndfile; truncation is an error, not a short read.

    ``exact_length``: the header's frame count is exact, so a shorter read means a cut file
    (MP3 counts are estimates from the bit rate and are not checked).
    """
    try:
        with soundfile.SoundFile(path) as f:
            declared = f.frames
            data = f.read(dtype="float32", always_2d=True)
            sr = f.samplerate
            log = f.extra_info
    except (soundfile.LibsndfileError, RuntimeError) as err:
        raise SampleError(path, f"cannot decode audio (corrupt or truncated file): {err}") from err
    chunk = _DATA_CHUNK_LOG.search(log)
    if chunk is not None:
        declared_bytes, held_bytes = int(chunk.group(1)), int(chunk.group(2))
        if declared_bytes != _UNKNOWN_CHUNK_SIZE and held_bytes < declared_bytes:
            raise SampleError(
                path, f"truncated: data chunk declares {declared_bytes} bytes, file holds {held_bytes}"
            )
    if exact_length and len(data) < declared:
        raise SampleError(path, f"truncated: {len(data)} of {declared} declared frames decoded")
    return torch.from_numpy(data).T, sr


def _decode_ffmpeg(path: Path) -> tuple[torch.Tensor, int]:
    """Channels [C, T] and rate through torchcodec (FFmpeg): mp3, m4a, aac, video files, ..."""
    try:
        from torchcodec.decoders import AudioDecoder
    except (ImportError, RuntimeError, OSError) as err:
        raise SampleError(
            path,
            f"decoding '{path.suffix}' files needs FFmpeg and torchcodec "
            f"(apt-get install ffmpeg; pip install torchcodec): {err}",
        ) from err
    try:
        samples = AudioDecoder(str(path)).get_all_samples()
    except (RuntimeError, ValueError) as err:
        raise SampleError(path, f"cannot decode audio: {err}") from err
    return samples.data.float(), int(samples.sample_rate)


def sample_clips(
    wave: torch.Tensor,
    sr: int,
    clip_seconds: float = 5.0,
    num_clips: int = 1,
    *,
    train: bool,
    generator: torch.Generator | None = None,
    pad: str = "repeat",
) -> torch.Tensor:
    """Cut ``wave`` [T] into ``num_clips`` clips [num_clips, clip_len].

    Training draws each clip's start uniformly. Evaluation starts clip i at
    ``i * (T - clip_len) // num_clips``, the ViT-Lens evaluation sampler (its last clip ends
    short of the file's end; the published numbers were measured that way). A file shorter than
    a clip is repeated to length (``pad="repeat"``, the reference: training rotates it by a
    random offset) or zero-padded at the end (``pad="zeros"``).
    """
    if wave.dim() != 1 or wave.numel() == 0:
        raise ValueError(f"sample_clips expects a non-empty 1-D waveform, got shape {tuple(wave.shape)}")
    if pad not in ("repeat", "zeros"):
        raise ValueError(f"pad must be 'repeat' or 'zeros', got {pad!r}")
    clip_len = int(round(clip_seconds * sr))
    length = wave.numel()

    if length >= clip_len:
        max_start = length - clip_len
        if train:
            starts = torch.randint(0, max_start + 1, (num_clips,), generator=generator)
        else:
            starts = torch.arange(num_clips) * max_start // num_clips
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
