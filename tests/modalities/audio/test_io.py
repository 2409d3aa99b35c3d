import math
import re
import sys

import numpy as np
import pytest
import soundfile as sf
import torch

from omniclip.errors import SampleError
from omniclip.modalities.audio.io import load_audio, sample_clips

SR = 16000


def _tone(freq: float, seconds: float, sr: int, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (amplitude * np.sin(2 * math.pi * freq * t)).astype(np.float32)


def _peak_hz(wave: torch.Tensor, sr: int) -> float:
    spectrum = torch.fft.rfft(wave.double()).abs()
    return spectrum.argmax().item() * sr / wave.numel()


def _raises(path, problem: str):
    """pytest.raises for a SampleError naming ``path`` and matching ``problem`` (a regex)."""
    return pytest.raises(SampleError, match=re.escape(str(path)) + ": " + problem)


@pytest.mark.parametrize(("suffix", "subtype", "tol"), [("wav", "PCM_16", 1e-4), ("flac", "PCM_24", 1e-6)])
def test_lossless_round_trip(tmp_path, suffix, subtype, tol):
    data = _tone(440, 1.0, SR)
    path = tmp_path / f"tone.{suffix}"
    sf.write(path, data, SR, subtype=subtype)
    wave = load_audio(path)
    assert wave.dtype == torch.float32 and wave.shape == (SR,)
    torch.testing.assert_close(wave, torch.from_numpy(data), rtol=0, atol=tol)


@pytest.mark.parametrize("suffix", ["ogg", "mp3"])
def test_lossy_round_trip_keeps_length_and_pitch(tmp_path, suffix):
    if suffix.upper() not in sf.available_formats():
        pytest.skip(f"libsndfile here cannot write {suffix}")
    path = tmp_path / f"tone.{suffix}"
    sf.write(path, _tone(440, 1.0, SR), SR)
    wave = load_audio(path)
    assert wave.shape == (SR,)
    assert _peak_hz(wave, SR) == pytest.approx(440, abs=1)


def test_stereo_is_averaged_to_mono(tmp_path):
    left, right = _tone(300, 0.5, SR), _tone(700, 0.5, SR, amplitude=0.25)
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([left, right], axis=1), SR, subtype="FLOAT")
    torch.testing.assert_close(load_audio(path), torch.from_numpy((left + right) / 2))


def test_resampled_from_44k1_keeps_length_and_frequency(tmp_path):
    path = tmp_path / "cd.wav"
    sf.write(path, _tone(1000, 1.0, 44100), 44100, subtype="FLOAT")
    wave = load_audio(path, target_sr=SR)
    assert wave.shape == (SR,)
    assert _peak_hz(wave, SR) == 1000
    # amplitude kept: a band-limited resampler does not attenuate 1 kHz
    assert wave[1000:-1000].abs().max().item() == pytest.approx(0.5, abs=0.01)


def test_missing_file(tmp_path):
    path = tmp_path / "nope.wav"
    with _raises(path, "file not found"):
        load_audio(path)


def test_directory_is_not_a_file(tmp_path):
    path = tmp_path / "dir.wav"
    path.mkdir()
    with _raises(path, "not a regular file"):
        load_audio(path)


def test_zero_byte_file(tmp_path):
    path = tmp_path / "empty.wav"
    path.touch()
    with _raises(path, r"file is empty \(0 bytes\)"):
        load_audio(path)


def test_header_without_samples(tmp_path):
    path = tmp_path / "no_frames.wav"
    sf.write(path, np.zeros(0, dtype=np.float32), SR)
    with _raises(path, "contains no audio samples"):
        load_audio(path)


def test_garbage_bytes(tmp_path):
    path = tmp_path / "garbage.wav"
    path.write_bytes(b"this is not a wav file at all" * 10)
    with _raises(path, r"cannot decode audio \(corrupt or truncated file\): .*"):
        load_audio(path)


def test_truncated_wav(tmp_path):
    path = tmp_path / "cut.wav"
    sf.write(path, _tone(440, 1.0, SR), SR, subtype="PCM_16")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with _raises(path, r"truncated: data chunk declares 32000 bytes, file holds 15978"):
        load_audio(path)


def test_streamed_wav_with_unknown_size_is_accepted(tmp_path):
    path = tmp_path / "streamed.wav"
    data = _tone(440, 0.1, SR)
    sf.write(path, data, SR, subtype="PCM_16")
    raw = bytearray(path.read_bytes())
    at = raw.find(b"data")
    raw[4:8] = raw[at + 4 : at + 8] = b"\xff\xff\xff\xff"  # sizes a pipe writer leaves unknown
    path.write_bytes(bytes(raw))
    torch.testing.assert_close(load_audio(path), torch.from_numpy(data), rtol=0, atol=1e-4)


def test_truncated_flac(tmp_path):
    path = tmp_path / "cut.flac"
    sf.write(path, _tone(440, 1.0, SR), SR)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with _raises(path, r"cannot decode audio \(corrupt or truncated file\)"):
        load_audio(path)


def test_nan_and_inf_samples(tmp_path):
    data = _tone(440, 0.1, SR)
    data[[3, 10, 50]] = [np.nan, np.inf, -np.inf]
    path = tmp_path / "nan.wav"
    sf.write(path, data, SR, subtype="FLOAT")
    with _raises(path, "3 NaN or infinite samples"):
        load_audio(path)


def test_silent_file_is_an_error_unless_allowed(tmp_path):
    path = tmp_path / "silence.wav"
    sf.write(path, np.full(SR, 1e-5, dtype=np.float32), SR, subtype="FLOAT")
    with _raises(path, r"silent \(peak amplitude 1e-05 < 0.0001\); pass allow_silent=True"):
        load_audio(path)
    assert load_audio(path, allow_silent=True).shape == (SR,)


def test_clipped_file_warns_with_name_and_fraction(tmp_path):
    data = _tone(440, 1.0, SR)
    data[:800] = 1.0  # 5% at full scale
    path = tmp_path / "loud.wav"
    sf.write(path, data, SR, subtype="FLOAT")
    with pytest.warns(UserWarning, match=re.escape(str(path)) + r": 5\.0% of samples at full scale"):
        wave = load_audio(path)
    assert wave.shape == (SR,)


def test_formats_beyond_libsndfile_need_torchcodec(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torchcodec", None)
    monkeypatch.setitem(sys.modules, "torchcodec.decoders", None)
    path = tmp_path / "clip.m4a"
    path.write_bytes(b"\x00\x00\x00\x20ftypM4A " + bytes(64))
    needs = r"decoding '\.m4a' files needs FFmpeg and torchcodec \(apt-get install ffmpeg; pip install torchcodec\)"
    with _raises(path, needs):
        load_audio(path)


def test_train_clip_is_a_random_crop():
    wave = torch.arange(100, dtype=torch.float32)
    gen = torch.Generator().manual_seed(0)
    clips = sample_clips(wave, sr=10, clip_seconds=3.0, num_clips=64, train=True, generator=gen)
    assert clips.shape == (64, 30)
    starts = clips[:, 0].long()
    torch.testing.assert_close(clips, (starts[:, None] + torch.arange(30)).float())
    assert starts.min() >= 0 and starts.max() <= 70
    assert len(set(starts.tolist())) > 10


def test_eval_clips_use_the_reference_start_times():
    wave = torch.arange(100, dtype=torch.float32)
    clips = sample_clips(wave, sr=10, clip_seconds=4.0, num_clips=3, train=False)
    # starts i * (duration - clip) / n: 0, 2 s, 4 s
    assert clips[:, 0].tolist() == [0.0, 20.0, 40.0]
    torch.testing.assert_close(clips, torch.tensor([0.0, 20.0, 40.0])[:, None] + torch.arange(40))


def test_short_wave_is_repeated_to_length():
    wave = torch.arange(7, dtype=torch.float32)
    eval_clips = sample_clips(wave, sr=10, clip_seconds=2.0, num_clips=3, train=False)
    assert torch.equal(eval_clips, (torch.arange(20) % 7).float().expand(3, 20))
    gen = torch.Generator().manual_seed(0)
    train_clips = sample_clips(wave, sr=10, clip_seconds=2.0, num_clips=16, train=True, generator=gen)
    offsets = train_clips[:, 0].long()
    torch.testing.assert_close(train_clips, ((offsets[:, None] + torch.arange(20)) % 7).float())
    assert len(set(offsets.tolist())) > 1


def test_short_wave_zero_padding():
    wave = torch.arange(1, 8, dtype=torch.float32)
    clips = sample_clips(wave, sr=10, clip_seconds=1.0, num_clips=2, train=True, pad="zeros")
    expected = torch.cat([wave, torch.zeros(3)]).expand(2, 10)
    assert torch.equal(clips, expected)


def test_sample_clips_rejects_empty_wave():
    with pytest.raises(ValueError, match=r"non-empty 1-D waveform, got shape \(0,\)"):
        sample_clips(torch.zeros(0), sr=16000, train=False)
