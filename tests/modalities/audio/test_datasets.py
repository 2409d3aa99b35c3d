"""Audio datasets on mini copies of the published layouts, generated here; bad files; both skip policies."""

from __future__ import annotations

import csv
import logging
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from omniclip.data import SafeDataset, Skipped, collate_skipping
from omniclip.errors import ConfigError, SampleError
from omniclip.modalities.audio import collate_clips, datasets
from omniclip.modalities.audio.datasets import build_dataset, clean_caption
from omniclip.modalities.audio.io import load_audio, sample_clips
from omniclip.modalities.audio.templates import SOUND_TEMPLATES

SR = 16000
SEC = 0.5  # clip length used throughout (keeps files tiny)


def write_tone(path: Path, seconds: float = 1.0, freq: float = 440.0, sr: int = SR, channels: int = 1,
               amplitude: float = 0.3, subtype: str = "PCM_16") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * sr)) / sr
    wave = amplitude * np.sin(2 * np.pi * freq * t) * np.linspace(0.5, 1.0, t.size)
    data = np.stack([wave * (c + 1) / channels for c in range(channels)], axis=1) if channels > 1 else wave
    sf.write(path, data.astype(np.float32), sr, subtype=subtype)
    return path


def make_esc50(root: Path, rows=((1, 0), (1, 14), (2, 36), (2, 0), (3, 41), (4, 14))) -> Path:
    """``meta/esc50.csv`` with the release's columns and ``audio/<fold>-<id>-A-<target>.wav``."""
    names = datasets.esc50_class_names()
    meta = root / "meta" / "esc50.csv"
    meta.parent.mkdir(parents=True, exist_ok=True)
    with meta.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["filename", "fold", "target", "category", "esc10", "src_file", "take"])
        for i, (fold, target) in enumerate(rows):
            name = f"{fold}-{1000 + i}-A-{target}.wav"
            writer.writerow([name, fold, target, names[target].replace(" ", "_"), "False", 1000 + i, "A"])
            write_tone(root / "audio" / name, 0.8, 200 + 60 * i)
    return root


AUDIOSET_LABELS = [("/m/09x0r", "Speech"), ("/m/0bt9lr", "Dog"), ("/m/04rlf", "Music"), ("/m/07yv9", "Vehicle")]


def write_segments(path: Path, rows) -> Path:
    with path.open("w") as handle:
        handle.write("# Segments csv created Sun Mar  5 10:54:31 2017\n")
        handle.write(f"# num_ytids={len(rows)}, num_segs={len(rows)}, num_unique_labels=4, num_positives=0\n")
        handle.write("# YTID, start_seconds, end_seconds, positive_labels\n")
        for ytid, labels in rows:
            handle.write(f'{ytid}, 30.000, 40.000, "{",".join(labels)}"\n')
    return path


def make_audioset(root: Path, downloaded=("--PJHxphWEs", "-0RWZT-miFs", "-1LrH01Ei1w", "0Aa4_SnLSUU")) -> Path:
    """Label CSV, train/eval segment CSVs (one segment never downloaded) and clips named by YTID."""
    root.mkdir(parents=True, exist_ok=True)
    lines = [f'{i},{mid},"{name}"\n' for i, (mid, name) in enumerate(AUDIOSET_LABELS)]
    (root / "class_labels_indices.csv").write_text("index,mid,display_name\n" + "".join(lines))
    segs = [("--PJHxphWEs", ["/m/09x0r", "/m/04rlf"]), ("-0RWZT-miFs", ["/m/0bt9lr"]),
            ("-1LrH01Ei1w", ["/m/07yv9", "/m/09x0r"]), ("0Aa4_SnLSUU", ["/m/04rlf"]), ("notDownload", ["/m/09x0r"])]
    write_segments(root / "balanced_train_segments.csv", segs)
    write_segments(root / "eval_segments.csv", segs)
    for i, ytid in enumerate(downloaded):
        name = f"Y{ytid}.flac" if i == 1 else f"{ytid}.wav"  # both namings of the common dumps
        write_tone(root / "audio" / name, 1.0, 300 + 100 * i)
    return root


def make_vggsound(root: Path) -> Path:
    rows = [("abc", 10, "dog barking", "train"), ("def", 0, "playing piano", "train"),
            ("ghi", 30, "dog barking", "test"), ("jkl", 5, "female speech, woman speaking", "test")]
    root.mkdir(parents=True, exist_ok=True)
    with (root / "vggsound.csv").open("w", newline="") as handle:
        csv.writer(handle).writerows(rows)
    for i, (ytid, start, _, _) in enumerate(rows):
        write_tone(root / "audio" / f"{ytid}_{start:06d}.wav", 1.0, 250 + 80 * i)
    return root


CLOTHO_EVAL = [("water drops.wav", ["Water drips slowly.", "Drops of water fall, one by one.", "A tap drips.",
                                     "Water is dripping into a sink.", "Slow drips of water."]),
               ("city street.wav", ["Cars pass by on a busy street.", "Traffic noise in a city.", "Cars drive by.",
                                     "A busy road with many cars.", "Vehicles pass on the street."]),
               ("birds, morning.wav", ["Birds chirp in the morning.", "Many birds are singing.", "Birdsong.",
                                        "Birds sing loudly outside.", "Small birds chirping."])]


def make_clotho(root: Path, splits=("evaluation", "development")) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for split in splits:
        with (root / f"clotho_captions_{split}.csv").open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["file_name", *(f"caption_{i}" for i in range(1, 6))])
            for i, (name, captions) in enumerate(CLOTHO_EVAL):
                writer.writerow([name, *captions])
                write_tone(root / split / name, 1.2, 350 + 90 * i)
    return root


def make_audiocaps(root: Path) -> Path:
    rows = [(1, "aaa", 30, "A dog barks twice"), (2, "aaa", 30, "A dog is barking"),
            (3, "bbb", 0, "Rain falls on a roof"), (4, "ccc", 10, "Missing clip"), (5, "bbb", 0, "Heavy rain")]
    for split in ("test", "train"):
        (root / split).mkdir(parents=True, exist_ok=True)
        with (root / f"{split}.csv").open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["audiocap_id", "youtube_id", "start_time", "caption"])
            writer.writerows(rows)
        write_tone(root / split / "aaa.wav", 1.0, 500)
        write_tone(root / split / "Ybbb.flac", 1.0, 700)
    return root


def clip_cfg(**extra):
    return {"clip_seconds": SEC, **extra}


# ------------------------------------------------------------------------------------------ ESC-50


def test_esc50_eval_samples_are_evenly_spaced_clips(tmp_path):
    root = make_esc50(tmp_path / "esc")
    ds = build_dataset({"name": "esc50", "root": str(root), **clip_cfg(num_clips=3)}, "test")
    assert len(ds) == 6 and len(ds.class_names) == 50 and not ds.multilabel
    sample = ds[2]
    wave = load_audio(root / "audio" / "2-1002-A-36.wav")
    clip = int(SEC * SR)
    starts = [i * (wave.numel() - clip) // 3 for i in range(3)]
    expected = torch.stack([wave[s:s + clip] for s in starts])
    assert torch.equal(sample["inputs"], expected)
    assert sample["label"] == 36 and ds.class_names[36] == "vacuum cleaner" and sample["group_id"] == 2
    folds = build_dataset({"name": "esc50", "root": str(root), "folds": [1, 2], **clip_cfg()}, "test")
    assert [ds_item.labels[0] for ds_item in folds.items] == [0, 14, 36, 0]


def test_esc50_train_sample_has_a_templated_caption(tmp_path):
    root = make_esc50(tmp_path / "esc")
    ds = build_dataset({"name": "esc50", "root": str(root), **clip_cfg()}, "train")
    np.random.seed(3)
    sample = ds[1]
    assert sample["inputs"].shape == (int(SEC * SR),)
    allowed = {clean_caption(t.replace("{}", "chirping birds")) for t in SOUND_TEMPLATES}
    assert sample["text"] in allowed and "image" not in sample and "label" not in sample
    assert clean_caption("An image depicting Chirping birds.") == "an image depicting chirping birds"


def test_mixup_mixes_waveforms_and_joins_captions(tmp_path):
    root = make_esc50(tmp_path / "esc", rows=((1, 0), (1, 1)))
    ds = build_dataset({"name": "esc50", "root": str(root), "clip_seconds": 0.8, "mixup": 1.0}, "train")
    waves = [load_audio(item.path) for item in ds.items]
    seen = set()
    for seed in range(12):
        np.random.seed(seed)
        torch.manual_seed(seed)
        sample = ds[0]
        own, rest = sample["text"].split(" and ")
        assert own in {clean_caption(t.replace("{}", "dog")) for t in SOUND_TEMPLATES}
        partner = {"dog": 0, "rooster": 1}[rest]
        seen.add(partner)
        a, b = waves[0], waves[partner]
        if partner == 0:
            torch.testing.assert_close(sample["inputs"], a)
            continue
        weight = torch.dot(sample["inputs"] - b, a - b) / torch.dot(a - b, a - b)
        assert 0.1 < weight < 0.9  # Beta(10, 10)
        torch.testing.assert_close(sample["inputs"], weight * a + (1 - weight) * b, rtol=0, atol=1e-6)
    assert seen == {0, 1}


# ---------------------------------------------------------------------------------------- AudioSet


def test_audioset_multi_hot_labels_and_missing_segments(tmp_path, caplog):
    root = make_audioset(tmp_path / "as")
    with caplog.at_level(logging.WARNING):
        ds = build_dataset({"name": "audioset", "root": str(root), "segments": "eval_segments.csv",
                            **clip_cfg(num_clips=2)}, "test")
    assert "1 of 5 clips are not in" in caplog.text and ds.missing == ["notDownload"]
    assert ds.multilabel and ds.class_names == ["speech", "dog", "music", "vehicle"]
    assert len(ds) == 4 and ds.items[1].path.name == "Y-0RWZT-miFs.flac"
    assert torch.equal(ds[0]["label"], torch.tensor([1.0, 0, 1, 0])) and ds[0]["inputs"].shape == (2, SR // 2)
    assert torch.equal(ds[2]["label"], torch.tensor([1.0, 0, 0, 1]))
    batch = collate_clips([ds[0], ds[2]])
    assert batch["inputs"].shape == (4, SR // 2) and batch["group_ids"] == [0, 0, 2, 2]
    assert torch.equal(batch["labels"], torch.tensor([[1.0, 0, 1, 0]] * 2 + [[1.0, 0, 0, 1]] * 2))
    train = build_dataset({"name": "audioset", "root": str(root), **clip_cfg()}, "train")
    np.random.seed(0)
    text = train[0]["text"]
    assert text in {clean_caption(t.replace("{}", "speech, music")) for t in SOUND_TEMPLATES}


def test_audioset_unknown_label_and_manifest_naming_a_missing_file(tmp_path):
    root = make_audioset(tmp_path / "as")
    write_segments(root / "bad.csv", [("--PJHxphWEs", ["/m/nothere"])])
    with pytest.raises(ConfigError, match=r"config `segments`: .*bad.csv: segment 1 \(--PJHxphWEs\) has label "
                                          r"`/m/nothere`, which is not in class_labels_indices.csv"):
        build_dataset({"name": "audioset", "root": str(root), "segments": "bad.csv"}, "test")
    (root / "manifest.csv").write_text('# manifest\n--PJHxphWEs, 30.0, 40.0, "/m/09x0r", audio/gone.wav\n')
    ds = build_dataset({"name": "audioset", "root": str(root), "segments": ["manifest.csv"], **clip_cfg()}, "test")
    with pytest.raises(SampleError, match=re.escape(str(root / "audio" / "gone.wav")) + ": file not found"):
        ds[0]


# ------------------------------------------------------------------------------ VGGSound, Clotho, AudioCaps


def test_vggsound_naming_classes_and_splits(tmp_path):
    root = make_vggsound(tmp_path / "vgg")
    ds = build_dataset({"name": "vggsound", "root": str(root), **clip_cfg()}, "test")
    assert ds.class_names == ["dog barking", "female speech, woman speaking", "playing piano"]
    assert [item.path.name for item in ds.items] == ["ghi_000030.wav", "jkl_000005.wav"]
    assert [ds[i]["label"] for i in range(2)] == [0, 1]
    train = build_dataset({"name": "vggsound", "root": str(root), **clip_cfg()}, "train")
    assert [item.labels for item in train.items] == [[0], [2]]


def test_clotho_captions_for_retrieval(tmp_path):
    root = make_clotho(tmp_path / "clotho")
    ds = build_dataset({"name": "clotho", "root": str(root), **clip_cfg(num_clips=4)}, "test")
    assert ds.captions == [c for _, c in CLOTHO_EVAL]
    assert ds.items[2].path == root / "evaluation" / "birds, morning.wav"
    sample = ds[1]
    assert sample["inputs"].shape == (4, SR // 2) and sample["group_id"] == 1 and "label" not in sample
    train = build_dataset({"name": "clotho", "root": str(root), **clip_cfg()}, "train")
    np.random.seed(1)
    assert train[0]["text"] in {clean_caption(c) for c in CLOTHO_EVAL[0][1]}
    with pytest.raises(ConfigError, match=r"clotho_captions_validation.csv not found"):
        build_dataset({"name": "clotho", "root": str(root)}, "val")


def test_audiocaps_groups_captions_by_clip(tmp_path, caplog):
    root = make_audiocaps(tmp_path / "ac")
    with caplog.at_level(logging.WARNING):
        ds = build_dataset({"name": "audiocaps", "root": str(root), **clip_cfg()}, "test")
    assert ds.captions == [["A dog barks twice", "A dog is barking"], ["Rain falls on a roof", "Heavy rain"]]
    assert ds.missing == ["ccc"] and "1 of 3 clips" in caplog.text
    assert ds.items[1].path.stem == "Ybbb"


# -------------------------------------------------------------------------------------- config errors


def test_config_errors_name_keys_relative_to_the_dataset(tmp_path):
    with pytest.raises(ConfigError, match=r"config `root`: folder .*nope does not exist"):
        build_dataset({"name": "esc50", "root": str(tmp_path / "nope")}, "test")
    with pytest.raises(ConfigError, match=r"config `root`: .*esc50.csv not found \(expected the ESC-50 layout"):
        build_dataset({"name": "esc50", "root": str(tmp_path)}, "test")
    with pytest.raises(ConfigError, match=r"config `root`: missing"):
        build_dataset({"name": "clotho"}, "test")
    with pytest.raises(ConfigError, match=r"config `clip_sec`: unknown option for dataset `esc50`"):
        build_dataset({"name": "esc50", "root": str(tmp_path), "clip_sec": 1}, "test")
    with pytest.raises(ConfigError, match=r"config `mixup`: is a probability, got 2"):
        build_dataset({"name": "esc50", "root": str(tmp_path), "mixup": 2}, "test")
    with pytest.raises(ConfigError, match=r"config `name`: unknown audio dataset `esc` \(known: esc50, audioset"):
        build_dataset({"name": "esc"}, "test")
    with pytest.raises(ConfigError, match=r"config `audio_dir`: folder .*wav does not exist"):
        build_dataset({"name": "vggsound", "root": str(make_vggsound(tmp_path / "v")), "audio_dir": "wav"}, "test")
    (tmp_path / "esc" / "meta").mkdir(parents=True)
    (tmp_path / "esc" / "meta" / "esc50.csv").write_text("filename,fold,target,category\nx.wav,1,3,dog\n")
    with pytest.raises(ConfigError, match=r"config `meta`: .*line 2: category `dog` with target 3 is not"):
        build_dataset({"name": "esc50", "root": str(tmp_path / "esc")}, "test")


def test_concat_scopes_its_errors_and_concatenates(tmp_path):
    vgg = make_vggsound(tmp_path / "vgg")
    audioset = make_audioset(tmp_path / "as")
    parts = [{"name": "audioset", "root": str(audioset), **clip_cfg()}, {"name": "vggsound", "root": str(vgg),
                                                                          **clip_cfg()}]
    ds = build_dataset({"name": "concat", "datasets": parts}, "train")
    assert len(ds) == 4 + 2
    assert set(collate_clips([ds[0], ds[5]])) == {"inputs", "texts", "paths"}
    parts[1] = {**parts[1], "root": str(tmp_path / "none")}
    with pytest.raises(ConfigError, match=r"config `datasets.1.root`: folder .*none does not exist"):
        build_dataset({"name": "concat", "datasets": parts}, "train")


# ---------------------------------------------------------------------------------------- bad files


def bad_files(folder: Path) -> dict[str, tuple[Path, str]]:
    """name -> (file, expected problem) for every kind of bad input of the issue."""
    folder.mkdir(parents=True, exist_ok=True)
    empty = folder / "empty.wav"
    empty.write_bytes(b"")
    no_frames = folder / "no_frames.wav"
    sf.write(no_frames, np.zeros(0, np.float32), SR)
    silent = folder / "silent.wav"
    sf.write(silent, np.zeros(SR, np.float32), SR)
    nan = folder / "nan.wav"
    data = np.full(SR, 0.1, np.float32)
    data[5] = np.nan
    sf.write(nan, data, SR, subtype="FLOAT")
    truncated = write_tone(folder / "truncated.wav")
    truncated.write_bytes(truncated.read_bytes()[:20000])
    corrupt = folder / "corrupt.wav"
    corrupt.write_bytes(b"RIFF" + bytes(range(256)) * 4)
    return {
        "empty": (empty, "file is empty"),
        "no_frames": (no_frames, "contains no audio samples"),
        "silent": (silent, "silent"),
        "nan": (nan, "1 NaN or infinite samples"),
        "truncated": (truncated, "truncated"),
        "corrupt": (corrupt, "cannot decode audio"),
        "missing": (folder / "missing.wav", "file not found"),
    }


def clotho_with(root: Path, names: list[str]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    with (root / "clotho_captions_evaluation.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file_name", *(f"caption_{i}" for i in range(1, 6))])
        writer.writerows([name, "a sound", "", "", "", ""] for name in names)
    return root


@pytest.mark.parametrize("split", ["train", "test"])
def test_every_bad_file_is_a_sample_error_naming_it_under_both_policies(tmp_path, split):
    root = tmp_path / "clotho"
    bad = bad_files(root / "evaluation")
    write_tone(root / "evaluation" / "good.wav")
    names = ["good.wav", *(path.name for path, _ in bad.values())]
    # both splits read the same files (the train split would read development/ by default)
    ds = build_dataset({"name": "clotho", "root": str(clotho_with(root, names)), "audio_dir": "evaluation",
                        "captions_csv": "clotho_captions_evaluation.csv", **clip_cfg()}, split)
    for i, (path, problem) in enumerate(bad.values(), 1):
        with pytest.raises(SampleError, match=re.escape(str(path)) + ": .*" + problem):
            SafeDataset(ds, "stop")[i]
    safe = SafeDataset(ds, "skip")
    samples = [safe[i] for i in range(len(ds))]
    assert [type(s) is Skipped for s in samples] == [False] + [True] * len(bad)
    batch = collate_skipping(collate_clips)(samples)
    assert [p for p, _ in batch["skipped"]] == [str(path) for path, _ in bad.values()]
    assert batch["inputs"].shape[0] == (1 if split == "train" else 3)


def test_clipped_multichannel_and_other_rates_are_kept(tmp_path):
    root = tmp_path / "clotho"
    write_tone(root / "evaluation" / "stereo44k.wav", 1.0, 1000, sr=44100, channels=2, subtype="FLOAT")
    clipped = root / "evaluation" / "clipped.wav"
    sf.write(clipped, np.clip(2 * np.sin(np.arange(SR) / 5), -1, 1).astype(np.float32), SR, subtype="FLOAT")
    ds = build_dataset({"name": "clotho", "root": str(clotho_with(root, ["stereo44k.wav", "clipped.wav"])),
                        **clip_cfg(num_clips=1)}, "test")
    mono = torch.from_numpy(sf.read(root / "evaluation" / "stereo44k.wav", dtype="float32")[0].mean(axis=1))
    import torchaudio.functional as AF

    expected = AF.resample(mono, 44100, SR)
    torch.testing.assert_close(ds[0]["inputs"][0], expected[: SR // 2])
    with pytest.warns(UserWarning, match=r"clipped.wav: .* of samples at full scale"):
        assert ds[1]["inputs"].shape == (1, SR // 2)


# -------------------------------------------------------------------------------------------- video


def test_video_frames_need_a_decoder(tmp_path, monkeypatch):
    import builtins

    root = make_audioset(tmp_path / "as")
    (root / "video").mkdir()
    real_import = builtins.__import__

    def no_decoders(name, *args, **kwargs):
        if name in ("av", "torchcodec"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_decoders)
    with pytest.raises(ConfigError, match=r"config `video_dir`: reading video frames needs PyAV \(pip install av\)"):
        build_dataset({"name": "audioset", "root": str(root), "video_dir": "video"}, "train", lambda img: img)
    # evaluation and runs without image anchors never need one
    assert len(build_dataset({"name": "audioset", "root": str(root), "video_dir": "video"}, "test")) == 4


def write_video(path: Path, seconds: float = 2.0, fps: int = 10, size: int = 32) -> Path:
    """A real MPEG-4 video (PyAV) whose frame i is red level 12 * i: the colour tells the time."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for i in range(int(seconds * fps)):
            rgb = np.zeros((size, size, 3), np.uint8)
            rgb[..., 0] = 12 * i
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def red_frame_index(image) -> float:
    return image.convert("RGB").getpixel((16, 16))[0] / 12


def test_read_video_frame_decodes_a_real_video_with_pyav(tmp_path):
    path = write_video(tmp_path / "clip.mp4")
    assert datasets.video_backend() == "av"
    for seconds, frame in ((0.0, 0), (0.5, 5), (1.0, 10), (1.5, 15), (9.0, 19)):  # past the end: the last frame
        image = datasets.read_video_frame(path, seconds)
        assert image.size == (32, 32)
        assert red_frame_index(image) == pytest.approx(frame, abs=0.35)
    (tmp_path / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(100))
    with pytest.raises(SampleError, match=r"broken\.mp4: cannot decode a video frame at 1\.0 s: "):
        datasets.read_video_frame(tmp_path / "broken.mp4", 1.0)


def test_video_frame_at_the_clip_centre_is_the_image_anchor(tmp_path):
    root = make_audioset(tmp_path / "as")
    (root / "video").mkdir()
    for ytid in ("--PJHxphWEs", "-0RWZT-miFs"):
        write_video(root / "video" / f"{ytid}.mp4")
    ds = build_dataset({"name": "audioset", "root": str(root), "video_dir": "video", **clip_cfg()}, "train",
                       lambda img: torch.tensor(img.getpixel((16, 16)), dtype=torch.float32))
    for seed in range(8):
        torch.manual_seed(seed)
        np.random.seed(seed)
        sample = ds[1]
        # a 0.5 s clip of a 1 s file is centred between 0.25 s and 0.75 s: rounded to 0.5 s
        at = float(sample["image_key"].rsplit("@", 1)[1].removesuffix("s"))
        assert sample["image_key"] == f"video/-0RWZT-miFs.mp4@{at:.1f}s" and at == 0.5
        assert sample["image"][0].item() / 12 == pytest.approx(5, abs=0.35)  # the frame shown at 0.5 s
    with pytest.raises(SampleError, match=r"-1LrH01Ei1w.wav: no video named -1LrH01Ei1w or Y-1LrH01Ei1w"):
        ds[2]


def test_sample_clips_is_what_evaluation_uses(tmp_path):
    """The eval clips are `sample_clips` of the loaded file (short files repeated to length)."""
    root = tmp_path / "clotho"
    write_tone(root / "evaluation" / "short.wav", 0.3)
    ds = build_dataset({"name": "clotho", "root": str(clotho_with(root, ["short.wav"])), **clip_cfg(num_clips=2)},
                       "test")
    wave = load_audio(root / "evaluation" / "short.wav")
    assert torch.equal(ds[0]["inputs"], sample_clips(wave, SR, SEC, 2, train=False))
    assert torch.equal(ds[0]["inputs"][0, wave.numel():2 * wave.numel()], wave[: SR // 2 - wave.numel()])
