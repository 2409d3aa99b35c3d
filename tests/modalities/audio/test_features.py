import math

import pytest
import torch
import torchaudio

from omniclip.modalities.audio.features import (
    AUDIOSET_MEAN,
    AUDIOSET_STD,
    AudioFrontend,
    add_noise_and_shift,
    kaldi_fbank,
    mixup,
    normalize_fbank,
    pad_or_cut,
    spec_augment,
)

SR = 16000


def _torchaudio_fbank(wave: torch.Tensor) -> torch.Tensor:
    """The reference's call, on an already mean-free waveform."""
    return torchaudio.compliance.kaldi.fbank(
        wave[None],
        htk_compat=True,
        sample_frequency=SR,
        use_energy=False,
        window_type="hanning",
        num_mel_bins=128,
        dither=0.0,
        frame_shift=10,
    )


def _signals(length: int, dtype: torch.dtype) -> torch.Tensor:
    """Sine sweep 100 Hz -> 6.1 kHz, 440 Hz tone, white noise, sweep + noise: [4, length]."""
    t = torch.arange(length, dtype=torch.float64) / SR
    duration = length / SR
    sweep = 0.5 * torch.sin(2 * math.pi * (100 * t + 3000 * t**2 / duration))
    tone = 0.3 * torch.sin(2 * math.pi * 440 * t) + 0.2  # with a DC offset to remove
    noise = 0.05 * torch.randn(length, generator=torch.Generator().manual_seed(length), dtype=torch.float64)
    return torch.stack([sweep, tone, noise, 0.5 * sweep + noise]).to(dtype)


@pytest.mark.parametrize("length", [400, 12345, 5 * SR])
def test_float64_equals_torchaudio_on_mean_removed_waveform(length):
    waves = _signals(length, torch.float64)
    expected = torch.stack([_torchaudio_fbank(w - w.mean()) for w in waves])
    torch.testing.assert_close(kaldi_fbank(waves), expected, rtol=0, atol=1e-9)


@pytest.mark.parametrize("length", [400, 12345, 5 * SR])
def test_float32_batch_equals_torchaudio_per_clip(length):
    # In fp32 the rounding of the mean alone moves bins ~100 dB below a tone's peak by ~1e-3 in
    # torchaudio itself, so both get the same (float64-accurate) mean-free input here; what is
    # compared is everything after it, computed for the batch at once.
    waves = _signals(length, torch.float32)
    centred = waves - waves.double().mean(dim=1, keepdim=True).float()
    expected = torch.stack([_torchaudio_fbank(w) for w in centred])
    torch.testing.assert_close(kaldi_fbank(waves), expected, rtol=0, atol=1e-4)


def test_batch_equals_one_waveform_at_a_time():
    waves = _signals(5 * SR, torch.float32)
    one_by_one = torch.stack([kaldi_fbank(w) for w in waves])
    torch.testing.assert_close(kaldi_fbank(waves), one_by_one, rtol=0, atol=1e-6)
    assert kaldi_fbank(waves[0]).shape == (498, 128)


def test_five_seconds_give_498_frames_padded_to_512_with_zeros():
    fbank = kaldi_fbank(_signals(5 * SR, torch.float32))
    assert fbank.shape == (4, 498, 128)
    padded = pad_or_cut(fbank, 512)
    assert padded.shape == (4, 512, 128)
    assert torch.equal(padded[:, :498], fbank)
    assert torch.equal(padded[:, 498:], torch.zeros(4, 14, 128))
    assert torch.equal(pad_or_cut(padded, 300), fbank[:, :300])


@pytest.mark.parametrize("target", [512, 300])
def test_target_frames_equals_pad_or_cut(target):
    waves = _signals(5 * SR, torch.float32)
    assert torch.equal(kaldi_fbank(waves, target_frames=target), pad_or_cut(kaldi_fbank(waves), target))


def test_fbank_rejects_waveform_shorter_than_a_frame():
    with pytest.raises(ValueError, match="399 samples is shorter than one 25.0 ms frame"):
        kaldi_fbank(torch.randn(2, 399))


def test_normalize_uses_audioset_statistics():
    x = torch.tensor([0.0, -4.2677393, 1.0])
    expected = torch.tensor([4.2677393 / 4.5689974, 0.0, 5.2677393 / 4.5689974])
    torch.testing.assert_close(normalize_fbank(x), expected)
    assert (AUDIOSET_MEAN, AUDIOSET_STD) == (-4.2677393, 4.5689974)


def test_spec_augment_equals_torchaudio_iid_masks():
    fbank = torch.randn(8, 512, 128)
    ours = spec_augment(fbank, 12, 48, generator=torch.Generator().manual_seed(3))
    torch.manual_seed(3)  # torchaudio draws from the global RNG in the same order
    spec = fbank.transpose(1, 2)  # torchaudio layout [B, freq, time]
    spec = torchaudio.functional.mask_along_axis_iid(spec, 12, 0.0, axis=1)
    spec = torchaudio.functional.mask_along_axis_iid(spec, 48, 0.0, axis=2)
    assert torch.equal(ours, spec.transpose(1, 2))


def test_spec_augment_masks_one_band_up_to_the_configured_width():
    ones = torch.ones(1024, 64, 128)
    masked = spec_augment(ones, 12, 48, generator=torch.Generator().manual_seed(0))
    freq_zero = (masked == 0).all(dim=1)  # mel bins zeroed over all frames [B, 128]
    time_zero = (masked == 0).all(dim=2)  # frames zeroed over all bins [B, 64]
    for band, width in ((freq_zero, 12), (time_zero, 48)):
        widths = band.sum(dim=1)
        # torchaudio semantics: width = floor(u * width) for u in [0, 1), so at most width - 1
        assert widths.max().item() == width - 1
        assert widths.min().item() == 0
        # contiguous: the zeroed positions of each example form one run
        first = band.float().argmax(dim=1)
        for b in torch.nonzero(widths).flatten()[:64]:
            assert band[b, first[b] : first[b] + widths[b]].all()
    # everything not inside one of the two bands is untouched
    outside = ~(freq_zero[:, None, :] | time_zero[:, :, None])
    assert (masked[outside] == 1).all()


def test_noise_and_shift_reproduces_reference_draws():
    fbank = torch.randn(3, 50, 8)
    out = add_noise_and_shift(fbank, max_shift=10, generator=torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(1)
    scale = torch.rand(3, 1, 1, generator=g) / 10
    noise = torch.rand(3, 50, 8, generator=g) * scale
    shifts = torch.randint(-10, 10, (3, 1), generator=g)
    expected = torch.stack([torch.roll(fbank[b] + noise[b], int(shifts[b]), 0) for b in range(3)])
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    rolled = torch.stack([torch.roll(fbank[b], int(shifts[b]), 0) for b in range(3)])
    added = out - rolled
    assert (added >= 0).all() and (added < 0.1).all()
    assert len(set(shifts.flatten().tolist())) > 1  # each example gets its own shift


def test_mixup_p0_is_identity():
    x = torch.randn(6, 100)
    labels = torch.eye(6)
    result = mixup(x, labels, p=0.0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(result.inputs, x)
    assert torch.equal(result.labels, labels)
    assert torch.equal(result.weights, torch.ones(6))
    assert torch.equal(result.partners, torch.arange(6))
    assert not result.mixed.any()


def test_mixup_p1_mixes_every_example_with_returned_weights():
    x = torch.randn(6, 100)
    labels = torch.eye(6)
    result = mixup(x, labels, p=1.0, generator=torch.Generator().manual_seed(0))
    assert result.mixed.all()
    assert (result.partners != torch.arange(6)).all()
    w = result.weights[:, None]
    torch.testing.assert_close(result.inputs, w * x + (1 - w) * x[result.partners])
    # labels: union of both multi-hot sets, as the reference's AudioSet targets
    expected = torch.zeros(6, 6)
    expected[torch.arange(6), torch.arange(6)] = 1
    expected[torch.arange(6), result.partners] = 1
    assert torch.equal(result.labels, expected)


def test_mixup_weights_follow_beta_10_10():
    result = mixup(torch.zeros(4096, 1), p=1.0, generator=torch.Generator().manual_seed(0))
    w = result.weights.double()
    assert abs(w.mean().item() - 0.5) < 0.01
    assert abs(w.var().item() - 1 / 84) < 0.001  # Beta(a, a): 1 / (4 (2a + 1))


def test_mixup_rejects_class_index_labels():
    with pytest.raises(ValueError, match=r"multi-hot \[B, C\] with B = 4, got shape \(4,\)"):
        mixup(torch.zeros(4, 10), torch.arange(4), p=1.0)


def test_frontend_eval_is_fbank_pad_normalise():
    waves = _signals(5 * SR, torch.float32)
    frontend = AudioFrontend().eval()
    expected = normalize_fbank(pad_or_cut(kaldi_fbank(waves), 512))
    assert torch.equal(frontend(waves), expected)


def test_frontend_train_is_reproducible_and_augmented():
    waves = _signals(5 * SR, torch.float32)
    frontend = AudioFrontend().train()
    a = frontend(waves, torch.Generator().manual_seed(5))
    b = frontend(waves, torch.Generator().manual_seed(5))
    assert a.shape == (4, 512, 128)
    assert torch.equal(a, b)
    assert not torch.allclose(a, frontend.eval()(waves))
