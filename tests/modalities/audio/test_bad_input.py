"""The bad audio files and manifests of issue 7, generated here, each with its exact outcome.

The resampling and long-file cases run under a memory limit, so a missing bound fails the test
rather than the machine.
"""

from __future__ import annotations

import csv
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from omniclip.data import SafeDataset, Skipped, collate_skipping
from omniclip.errors import ConfigError, SampleError
from omniclip.modalities.audio import collate_clips
from omniclip.modalities.audio.datasets import build_dataset
from omniclip.modalities.audio.io import load_audio, sample_clips
from tests.modalities.audio.test_datasets import (
    clip_cfg,
    clotho_with,
    make_audioset,
    make_esc50,
    write_tone,
)
from tests.modalities.limits import memory_limit

SR = 16000


def tone(seconds: float, sr: int = SR, freq: float = 440.0, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(round(seconds * sr))) / sr
    return (amplitude * np.sin(2 * math.pi * freq * t)).astype(np.float32)


def write(path: Path, data: np.ndarray, sr: int = SR, **kwargs) -> Path:
    sf.write(path, data, sr, **{"subtype": "FLOAT", **kwargs})
    return path


def peak_hz(wave: torch.Tensor, sr: int = SR) -> float:
    return torch.fft.rfft(wave.double()).abs().argmax().item() * sr / wave.numel()


# name, writer(folder) -> file, the exact problem
CORPUS = [
    ("float_wav_at_3e29", lambda d: write(d / "huge.wav", tone(0.5) / 0.5 * 3e29),
     "peak amplitude 3e+29 is absurd for audio (float samples lie within +-1; limit 1e+08, max_amplitude): "
     "corrupt or wrongly scaled file"),
    ("antiphase_stereo", lambda d: write(d / "antiphase.wav", np.stack([tone(0.5), -tone(0.5)], axis=1)),
     "silent after averaging its 2 channels to mono (peak amplitude 0 < 0.0001, each channel up to 0.5: "
     "the channels cancel out, antiphase?)"),
    ("all_zero", lambda d: write(d / "zero.wav", np.zeros(SR, np.float32)),
     "silent (peak amplitude 0 < 0.0001); pass allow_silent=True to keep silent files"),
    ("one_hz_header", lambda d: write(d / "one_hz.wav", np.full(100, 0.5, np.float32), sr=1),
     "sample rate 1 Hz in the header is implausible (accepted: 1000 to 1000000 Hz); corrupt header?"),
    ("garbage_mp3", lambda d: (d / "garbage.mp3").write_bytes(bytes(range(256)) * 20) and d / "garbage.mp3",
     "cannot decode audio (corrupt or truncated file): libsndfile found no valid MP3 data in it"),
    ("garbage_wav", lambda d: (d / "garbage.wav").write_bytes(b"RIFF" + bytes(range(256)) * 4) and d / "garbage.wav",
     "cannot decode audio (corrupt or truncated file): Format not recognised."),
]


@pytest.mark.parametrize(("name", "writer", "problem"), CORPUS, ids=[c[0] for c in CORPUS])
def test_bad_audio_file_is_a_sample_error_naming_it(tmp_path, name, writer, problem):
    path = writer(tmp_path)
    with memory_limit(512 << 20), pytest.raises(SampleError) as err:
        load_audio(path)
    assert err.value.path == str(path)
    assert err.value.problem == problem


def test_bad_files_are_counted_by_the_skip_policy_in_a_dataset(tmp_path):
    root = tmp_path / "clotho"
    folder = root / "evaluation"
    folder.mkdir(parents=True)
    bad = [writer(folder) for _, writer, _ in CORPUS]
    write_tone(folder / "good.wav")
    ds = build_dataset({"name": "clotho", "root": str(clotho_with(root, ["good.wav", *(p.name for p in bad)])),
                        **clip_cfg(num_clips=2)}, "test")
    samples = [SafeDataset(ds, "skip")[i] for i in range(len(ds))]
    assert [isinstance(s, Skipped) for s in samples] == [False] + [True] * len(bad)
    batch = collate_skipping(collate_clips)(samples)
    assert batch["skipped"] == [(str(p), problem) for p, (_, _, problem) in zip(bad, CORPUS)]
    assert batch["inputs"].shape == (2, SR // 2)


def test_antiphase_stereo_is_kept_with_allow_silent(tmp_path):
    path = write(tmp_path / "antiphase.wav", np.stack([tone(0.5), -tone(0.5)], axis=1))
    wave = load_audio(path, allow_silent=True)
    assert wave.shape == (SR // 2,) and wave.abs().max().item() == 0.0


def test_coprime_rate_resamples_in_bounded_memory(tmp_path):
    # 2 s at 11127 Hz: torchaudio's exact kernel for 11127 -> 16000 (co-prime) took 2.9 GB
    path = write(tmp_path / "mac.wav", tone(2.0, 11127), sr=11127)
    with memory_limit(256 << 20):
        wave = load_audio(path)
    assert wave.shape == (math.ceil(2 * 11127 * 811 / 564),)  # the ratio is 16000/11127 within 3.3e-7
    assert abs(wave.numel() - 32000) <= 1
    assert peak_hz(wave) == pytest.approx(440, abs=0.5)
    assert wave[1000:-1000].abs().max().item() == pytest.approx(0.5, abs=0.01)


def test_common_rates_resample_exactly_as_torchaudio(tmp_path):
    import torchaudio.functional as AF

    data = tone(0.5, 44100)
    wave = load_audio(write(tmp_path / "cd.wav", data, sr=44100))
    torch.testing.assert_close(wave, AF.resample(torch.from_numpy(data), 44100, SR), rtol=0, atol=0)


# ------------------------------------------------------------------------------------- long files


def spy_reads(monkeypatch) -> list[tuple[int, int | None]]:
    from omniclip.modalities.audio import io as audio_io

    reads: list[tuple[int, int | None]] = []
    real = audio_io._read

    def spy(source, start=0, stop=None):
        reads.append((start, stop))
        return real(source, start, stop)

    monkeypatch.setattr(audio_io, "_read", spy)
    return reads


@pytest.mark.parametrize("sr", [SR, 44100, 11127])
@pytest.mark.parametrize("train", [False, True])
def test_long_file_is_read_per_clip_with_the_whole_decode_samples(tmp_path, monkeypatch, sr, train):
    from omniclip.modalities.audio.io import load_clips

    rng = np.random.default_rng(0)
    data = (0.3 * rng.standard_normal(int(12 * sr))).astype(np.float32)  # broadband: any misalignment shows
    path = write(tmp_path / "long.wav", np.stack([data, data * 0.5], axis=1), sr=sr)
    whole = load_audio(path)
    reads = spy_reads(monkeypatch)
    gen = torch.Generator().manual_seed(1)
    clips, centres = load_clips(path, SR, 1.0, 3, train=train, generator=gen, max_decode_seconds=5.0)
    assert clips.shape == (3, SR) and len(reads) == 3
    for start, stop in reads:  # one clip plus the resampler's reach, never the file
        assert stop - start < 1.2 * sr
    starts = torch.round(centres * SR - SR / 2).long()
    expected = sample_clips(whole, SR, 1.0, 3, train=train, starts=starts)
    torch.testing.assert_close(clips, expected, rtol=0, atol=2e-6)
    if not train:
        assert starts.tolist() == (torch.arange(3) * (whole.numel() - SR) // 3).tolist()
    # a short file (or a larger max_decode_seconds) is decoded whole, as before
    reads.clear()
    load_clips(path, SR, 1.0, 3, train=train, max_decode_seconds=60.0)
    assert reads == [(0, None)]


def test_hour_long_file_costs_a_clip_not_the_file(tmp_path, monkeypatch):
    # an hour of 8 kHz int16 silence-free audio is 57 MB on disk; decoded whole at 16 kHz it is
    # 230 MB of float32 per access (3.7 GB for 48 kHz stereo); under a 128 MB limit only per-clip
    # reads fit
    path = tmp_path / "hour.wav"
    with sf.SoundFile(path, "w", 8000, 1, subtype="PCM_16") as f:
        block = (0.2 * np.sin(np.arange(8000 * 60) / 3)).astype(np.float32)
        for _ in range(60):
            f.write(block)
    root = tmp_path / "clotho"
    (root / "evaluation").mkdir(parents=True)
    (root / "evaluation" / "hour.wav").symlink_to(path)
    ds = build_dataset({"name": "clotho", "root": str(clotho_with(root, ["hour.wav"])), "clip_seconds": 5.0,
                        "num_clips": 3}, "test")
    with memory_limit(128 << 20):
        sample = ds[0]
    assert sample["inputs"].shape == (3, 5 * SR) and torch.isfinite(sample["inputs"]).all()


# ------------------------------------------------------------------------------------ decode paths


def test_file_without_suffix_is_read_by_libsndfile_without_ffmpeg(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torchcodec", None)
    monkeypatch.setitem(sys.modules, "torchcodec.decoders", None)
    path = tmp_path / "clip"
    sf.write(path, tone(0.25), SR, format="WAV", subtype="FLOAT")
    torch.testing.assert_close(load_audio(path), torch.from_numpy(tone(0.25)))
    garbage = tmp_path / "noise"
    garbage.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(SampleError) as err:
        load_audio(garbage)
    assert err.value.problem.startswith(
        "cannot decode audio: libsndfile does not recognise this file without a suffix (Format not recognised.), "
        "and other formats need FFmpeg and torchcodec (apt-get install ffmpeg; pip install torchcodec): ")


# ------------------------------------------------------------------------------------------ mixup


def test_mixup_with_a_bad_partner_trains_the_good_clip_and_counts_only_the_bad_file(tmp_path):
    root = make_esc50(tmp_path / "esc", rows=((1, 0), (1, 1), (1, 2), (1, 3)))
    bad = sorted((root / "audio").iterdir())[1:]
    for path in bad:
        path.write_bytes(b"RIFF" + bytes(200))  # three of four files are corrupt
    ds = build_dataset({"name": "esc50", "root": str(root), "clip_seconds": 0.8, "mixup": 1.0}, "train")
    good = load_audio(ds.items[0].path)
    unmixed = 0
    for seed in range(20):
        np.random.seed(seed)
        torch.manual_seed(seed)
        samples = [SafeDataset(ds, "skip")[i] for i in range(len(ds))]
        assert not isinstance(samples[0], Skipped)
        batch = collate_skipping(collate_clips)(samples)
        # each bad file is counted once, as itself; the good clip is never charged for a partner
        assert sorted(p for p, _ in batch["skipped"]) == [str(p) for p in bad]
        assert batch["paths"] == [str(ds.items[0].path)]
        if " and " not in batch["texts"][0]:
            unmixed += 1  # every partner drawn was bad: the clip trains unmixed
            torch.testing.assert_close(batch["inputs"][0], good)
    assert 0 < unmixed < 20  # some draws find the good partner (itself), some find none


# ------------------------------------------------------------------------------------- manifests


@pytest.mark.parametrize(("column", "value"), [("target", "x"), ("fold", "one"), ("target", "")])
def test_esc50_non_integer_target_or_fold_is_a_config_error(tmp_path, column, value):
    root = make_esc50(tmp_path / "esc", rows=((1, 0), (2, 1)))
    meta = root / "meta" / "esc50.csv"
    rows = list(csv.DictReader(meta.open()))
    rows[1][column] = value
    with meta.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    with pytest.raises(ConfigError) as err:
        build_dataset({"name": "esc50", "root": str(root)}, "test")
    assert str(err.value) == f"config `meta`: {meta} line 3: `{column}` is {value!r}, not an integer"


@pytest.mark.parametrize(("labels", "problem"), [
    ('index,mid,display_name\n0,/m/09x0r,"Speech"\nx,/m/0bt9lr,"Dog"\n', "line 3: `index` is 'x', not an integer"),
    ('index,mid,display_name\n0,/m/09x0r,"Speech"\n2,/m/0bt9lr,"Dog"\n',
     "line 3: index 2, expected 1 (indices are 0..1 in order)"),
    ('index,mid,display_name\n0,/m/09x0r,"Speech"\n1\n', "line 3: empty `mid`"),
    ('index,mid,display_name\n0,/m/09x0r,"Speech"\n1,/m/09x0r,"Dog"\n', ": mid `/m/09x0r` is listed twice"),
])
def test_malformed_audioset_class_index_is_a_config_error(tmp_path, labels, problem):
    root = make_audioset(tmp_path / "as")
    (root / "class_labels_indices.csv").write_text(labels)
    with pytest.raises(ConfigError) as err:
        build_dataset({"name": "audioset", "root": str(root), "segments": "eval_segments.csv"}, "test")
    sep = "" if problem.startswith(":") else " "
    assert str(err.value) == f"config `labels`: {root / 'class_labels_indices.csv'}{sep}{problem}"


def outside_message(path: str, how: str, root: Path) -> str:
    return (f"path {path!r} {how}: manifest paths must stay inside the dataset root {root} "
            "(set `allow_outside_root: true` to read files outside it)")


@pytest.mark.parametrize("escape", ["../../etc/passwd", "/etc/passwd"])
def test_manifest_paths_are_confined_to_the_root(tmp_path, escape):
    how = "is absolute" if escape.startswith("/") else "climbs out of the folder with '..'"
    # ESC-50
    esc = make_esc50(tmp_path / "esc", rows=((1, 0), (2, 1)))
    meta = esc / "meta" / "esc50.csv"
    meta.write_text(meta.read_text().replace("2-1001-A-1.wav", escape))
    with pytest.raises(ConfigError) as err:
        build_dataset({"name": "esc50", "root": str(esc)}, "test")
    assert str(err.value) == f"config `meta`: {meta} line 3: {outside_message(escape, how, esc / 'audio')}"
    # Clotho
    clotho = clotho_with(tmp_path / "clotho", ["ok.wav", escape])
    table = clotho / "clotho_captions_evaluation.csv"
    with pytest.raises(ConfigError) as err:
        build_dataset({"name": "clotho", "root": str(clotho)}, "test")
    assert str(err.value) == (f"config `captions_csv`: {table} line 3: "
                              f"{outside_message(escape, how, clotho / 'evaluation')}")
    # AudioSet prepared manifest
    audioset = make_audioset(tmp_path / "as")
    (audioset / "manifest.csv").write_text(f'--PJHxphWEs, 30.0, 40.0, "/m/09x0r", {escape}\n')
    with pytest.raises(ConfigError) as err:
        build_dataset({"name": "audioset", "root": str(audioset), "segments": "manifest.csv"}, "test")
    assert str(err.value) == (f"config `segments`: {audioset / 'manifest.csv'} segment 1: "
                              f"{outside_message(escape, how, audioset)}")


def test_allow_outside_root_reads_a_file_outside(tmp_path):
    outside = write_tone(tmp_path / "shared" / "clip.wav", 1.0, 330)
    audioset = make_audioset(tmp_path / "as")
    (audioset / "manifest.csv").write_text(f'--PJHxphWEs, 30.0, 40.0, "/m/09x0r", {outside}\n')
    ds = build_dataset({"name": "audioset", "root": str(audioset), "segments": "manifest.csv",
                        "allow_outside_root": True, **clip_cfg(num_clips=1)}, "test")
    assert ds[0]["path"] == str(outside) and ds[0]["inputs"].shape == (1, SR // 2)


def write_m4a(path: Path, seconds: float, sr: int = 22050, freq: float = 440.0) -> Path:
    """AAC audio in an MP4 container (PyAV): a format only FFmpeg decodes."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=sr)
        stream.layout = "mono"
        data = tone(seconds, sr, freq, amplitude=0.4)
        for i in range(0, len(data), 1024):
            frame = av.AudioFrame.from_ndarray(data[None, i:i + 1024], format="fltp", layout="mono")
            frame.sample_rate = sr
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def test_long_ffmpeg_file_is_read_per_clip_too(tmp_path, monkeypatch):
    from omniclip.modalities.audio.io import load_clips

    path = write_m4a(tmp_path / "long.m4a", 8.0)
    whole = load_audio(path)
    assert abs(whole.numel() - 8 * SR) < SR // 10 and peak_hz(whole) == pytest.approx(440, abs=0.5)
    reads = spy_reads(monkeypatch)
    clips, centres = load_clips(path, SR, 1.0, 3, train=False, max_decode_seconds=2.0)
    assert len(reads) == 3 and all(stop - start < 1.2 * 22050 for start, stop in reads)
    starts = torch.round(centres * SR - SR / 2).long()
    torch.testing.assert_close(clips, sample_clips(whole, SR, 1.0, 3, train=False, starts=starts), rtol=0, atol=1e-4)


def test_header_length_running_past_the_data(tmp_path):
    """A clip read up to a header's end: an estimated length (MP3, FFmpeg) that runs long ends
    the clip at the real end; an exact one (WAV) that the data does not fill is truncation."""
    from omniclip.modalities.audio import io as audio_io

    checks = dict(allow_silent=False, silence_threshold=1e-4, clip_warn_fraction=0.01, max_amplitude=1e8)
    path = write(tmp_path / "tone.wav", tone(3.0, 22050), sr=22050)
    whole = load_audio(path)
    down, up = audio_io.resample_ratio(22050, SR)
    for exact in (False, True):
        source = audio_io._open(path)
        source.frames += 2205  # the header claims 0.1 s more than the file holds
        source.exact_length = exact
        length = math.ceil(source.frames * up / down)
        if exact:
            with pytest.raises(SampleError) as err:
                audio_io._read_stretch(source, length - SR, SR, down, up, checks)
            assert err.value.problem == "truncated: 20286 of the 22491 frames from 45864 decoded (68355 declared)"
        else:
            out = audio_io._read_stretch(source, length - SR, SR, down, up, checks)
            torch.testing.assert_close(out, whole[-SR:], rtol=0, atol=2e-6)


def test_reads_are_bounded_in_frames_times_channels(tmp_path, monkeypatch):
    from omniclip.modalities.audio import io as audio_io
    from omniclip.modalities.audio.io import load_clips

    path = write(tmp_path / "quad.wav", np.stack([tone(2.0)] * 4, axis=1))  # 2 s x 4 channels = 128000 samples
    monkeypatch.setattr(audio_io, "MAX_READ_SAMPLES", 100_000)
    with pytest.raises(SampleError) as err:
        load_audio(path)
    assert err.value.problem == ("reading 32000 frames x 4 channels is more than 100000 samples (MAX_READ_SAMPLES); "
                                 "too long or too many channels to decode at once")
    # clip by clip it fits, whatever max_decode_seconds says, and gives the whole decode's samples
    clips, _ = load_clips(path, SR, 0.5, 2, train=False, max_decode_seconds=60.0)
    monkeypatch.setattr(audio_io, "MAX_READ_SAMPLES", 1 << 25)
    whole = load_audio(path)
    torch.testing.assert_close(clips, sample_clips(whole, SR, 0.5, 2, train=False), rtol=0, atol=0)
