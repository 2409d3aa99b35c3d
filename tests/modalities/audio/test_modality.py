"""The audio modality plugin: registry, templates, class names, tokenizer from the trunk, collate,
and zero-shot mAP through the whole evaluation path against a hand computation."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch
import torch.nn.functional as F
import torchaudio

from omniclip.anchors import AnchorStore
from omniclip.errors import ConfigError
from omniclip.modalities.audio import AudioTokenizer, collate_clips
from omniclip.modalities.audio.features import normalize_fbank, pad_or_cut
from omniclip.modalities.audio.tokenizer import audio_lens_defaults
from omniclip.modality import TrunkSpec, get_modality
from omniclip.model import build_lens_model
from omniclip.zeroshot import evaluate_task
from tests.modalities.audio.test_datasets import AUDIOSET_LABELS, write_segments

SPEC = TrunkSpec(width=64, patch_size=8, num_positions=17, image_size=32, num_blocks=2, embed_dim=64)


def test_registered_templates_and_class_names():
    audio = get_modality("audio")
    templates = audio.template_set()
    assert len(templates) == 12 and templates[:2] == ["{}.", "An image depicting {}."]
    assert templates.count("{}.") == 3 and templates[-1] == "A bright image of {}."
    assert audio.template_set("sound")[0] == "The sound of {}."
    esc = audio.class_names("esc50")
    assert len(esc) == 50 and esc[:3] == ["dog", "rooster", "pig"] and esc[30] == "door wood knock"
    assert esc[-1] == "hand saw"
    audioset = audio.class_names("audioset")
    assert len(audioset) == 527 and audioset[0] == "speech" and audioset[1] == "male speech, man speaking"
    assert audioset[-1] == "field recording"
    with pytest.raises(ConfigError, match=r"ships no class names for `vggsound`"):
        audio.class_names("vggsound")


def test_tokenizer_from_the_trunk_spec():
    audio = get_modality("audio")
    tok = audio.build_tokenizer({}, SPEC)
    assert isinstance(tok, AudioTokenizer) and tok.out_dim == 64 and tok.conv1.weight.shape == (64, 1, 8, 8)
    assert tok.grid_size == (13, 51) and set(tok.state_dict()) == {"conv1.weight", "pos_emb"}
    tok = audio.build_tokenizer({"patch_size": 16, "num_mel_bins": 64, "target_frames": 128}, SPEC)
    assert tok.grid_size == (5, 12) and tok.pos_emb.shape == (60, 64)
    with pytest.raises(ConfigError, match=r"config `mel_bins`: unknown option for the audio tokenizer"):
        audio.build_tokenizer({"mel_bins": 64}, SPEC)
    with pytest.raises(ConfigError, match=r"config `patch_size`: patch_size 200 exceeds"):
        audio.build_tokenizer({"patch_size": 200}, SPEC)


def test_tokenizer_forward_is_torchaudio_fbank_then_patches_and_augments_only_in_training():
    torch.manual_seed(0)
    tok = AudioTokenizer(width=16, patch_size=8, num_mel_bins=32, target_frames=64).eval()
    waves = torch.randn(2, 8000) * 0.1
    fbank = torch.stack([
        normalize_fbank(pad_or_cut(torchaudio.compliance.kaldi.fbank(
            (w - w.mean())[None], htk_compat=True, sample_frequency=16000, use_energy=False, window_type="hanning",
            num_mel_bins=32, dither=0.0, frame_shift=10), 64))
        for w in waves])
    patches = fbank.transpose(1, 2).unfold(1, 8, 10).unfold(2, 8, 10).reshape(2, 3 * 6, 64)
    expected = patches @ tok.conv1.weight.reshape(16, 64).T + tok.pos_emb
    torch.testing.assert_close(tok(waves), expected, rtol=1e-4, atol=1e-4)
    tok.train()
    torch.manual_seed(1)
    augmented = tok(waves)
    torch.manual_seed(1)
    assert torch.equal(augmented, tok(waves)) and not torch.allclose(augmented, expected, atol=1e-2)
    with pytest.raises(ValueError, match=r"expects waveform clips \[B, T\], got shape \(2, 64, 32\)"):
        tok(fbank)


def test_lens_defaults_and_model(tiny_backbone):
    audio = get_modality("audio")
    assert audio.lens_defaults("ViT-L-14") == {**audio.lens_defaults("default"), **audio_lens_defaults["ViT-L-14"]}
    model, cfg = build_lens_model("audio", tiny_backbone.trunk(), {"num_mel_bins": 32, "target_frames": 64})
    assert cfg["lens"]["input_dim"] == 64 and cfg["lens"]["num_latents"] == 16 and cfg["lens"]["depth"] == 2
    assert len(model.lens.layers[0][2]) == 3  # self_per_cross_attn
    with torch.no_grad():
        emb = model.eval().encode(torch.randn(3, 8000) * 0.1)
    assert emb.shape == (3, 64) and torch.allclose(emb.norm(dim=-1), torch.ones(3))


def test_collate_flattens_evaluation_clips():
    samples = [{"inputs": torch.full((2, 5), float(i)), "label": i, "group_id": i, "path": f"f{i}"} for i in (3, 7)]
    batch = collate_clips(samples)
    assert batch["inputs"][:, 0].tolist() == [3, 3, 7, 7] and batch["labels"].tolist() == [3, 3, 7, 7]
    assert batch["group_ids"] == [3, 3, 7, 7] and batch["paths"] == ["f3", "f3", "f7", "f7"]
    train = collate_clips([{"inputs": torch.zeros(5), "text": "a"}, {"inputs": torch.ones(5), "text": "b"}])
    assert train["inputs"].shape == (2, 5) and train["texts"] == ["a", "b"]


def hand_average_precision(scores: list[float], positives: list[bool]) -> float:
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    hits, precisions = 0, []
    for rank, i in enumerate(order, 1):
        if positives[i]:
            hits += 1
            precisions.append(hits / rank)
    return sum(precisions) / len(precisions)


def test_audioset_map_through_the_zero_shot_path_equals_a_hand_computation(tmp_path, tiny_backbone):
    root = tmp_path / "as"
    (root / "audio").mkdir(parents=True)
    lines = [f'{i},{mid},"{name}"\n' for i, (mid, name) in enumerate(AUDIOSET_LABELS)]
    (root / "class_labels_indices.csv").write_text("index,mid,display_name\n" + "".join(lines))
    mids = [mid for mid, _ in AUDIOSET_LABELS]
    labels = [[0, 2], [1], [3, 0], [2], [1, 3]]
    write_segments(root / "eval_segments.csv", [(f"clip{i}", [mids[j] for j in ls]) for i, ls in enumerate(labels)])
    for i in range(len(labels)):  # a constant level identifies the file in every clip
        sf.write(root / "audio" / f"clip{i}.wav", np.full(16000, 0.1 * (i + 1), np.float32), 16000, subtype="FLOAT")
    table = torch.randn(len(labels), 64, generator=torch.Generator().manual_seed(3))

    def model(batch):  # stands in for a lens model: the file's level picks its embedding
        item = (batch["inputs"][:, 0] * 10).round().long() - 1
        return table[item]

    anchors = AnchorStore(tiny_backbone)
    task = {"type": "classification", "templates": "default",
            "dataset": {"name": "audioset", "root": str(root), "segments": "eval_segments.csv",
                        "clip_seconds": 0.5, "num_clips": 3}}
    metrics = evaluate_task(model, get_modality("audio"), task, anchors, "cpu", batch_size=2)

    templates = get_modality("audio").template_set()
    names = [name.lower() for _, name in AUDIOSET_LABELS]
    classes = []
    for name in names:
        emb = F.normalize(tiny_backbone.encode_text([t.replace("{}", name) for t in templates]).float(), dim=-1)
        classes.append(F.normalize(emb.mean(0), dim=0))
    scores = F.normalize(table, dim=-1) @ torch.stack(classes).T
    aps = [hand_average_precision(scores[:, c].tolist(), [c in ls for ls in labels]) for c in range(4)]
    assert metrics["num_samples"] == 5
    assert metrics["mAP"] == pytest.approx(100 * sum(aps) / 4, abs=1e-4)
