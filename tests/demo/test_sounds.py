import math

import pytest
import torch
import torch.nn.functional as F
from torchaudio.compliance.kaldi import fbank as torchaudio_fbank

from omniclip.demo.sounds import (
    CLASS_NAMES,
    IMAGE_LEVELS,
    RANGES,
    SYNONYMS,
    SoundConfig,
    generate,
    log_mel,
    spectrogram_image,
)

SR = 16000
QUIET = SoundConfig(noise_range=(1e-7, 1e-7))  # background far below every class signal


def clips_of(name, count=6, seed=0, cfg=QUIET):
    labels = torch.full((count,), cfg.classes.index(name))
    return generate(cfg, labels, torch.Generator().manual_seed(seed))


def peak_track(waves, frame=512, hop=128):
    """Per-frame frequency (Hz) of the strongest STFT bin and the frame energy: [B, F] each."""
    spectrum = torch.stft(waves.double(), frame, hop, window=torch.hann_window(frame, dtype=torch.float64),
                          center=False, return_complex=True).abs().square()  # [B, bins, F]
    return spectrum.argmax(dim=1).double() * SR / frame, spectrum.sum(dim=1)


def active_frames(energy, fraction=0.5):
    return energy > fraction * energy.amax(dim=1, keepdim=True)


def onsets(wave, window=80, fraction=0.3, gap=0.03):
    """Sample indices where the smoothed magnitude rises through ``fraction`` of its maximum,
    after ``gap`` seconds below it (a click's noisy decay crosses the threshold more than once)."""
    envelope = F.avg_pool1d(wave.abs()[None, None].double(), window, stride=1)[0, 0]
    above = envelope > fraction * envelope.max()
    rises = (above[1:] & ~above[:-1]).nonzero().squeeze(1) + 1
    falls = (~above[1:] & above[:-1]).nonzero().squeeze(1) + 1
    quiet_before = torch.tensor([r == rises[0] or (r - falls[falls < r].max()) > gap * SR for r in rises])
    return rises[quiet_before]


@pytest.mark.parametrize("name", ["tone", "beeps", "buzz"])
def test_spectrum_peaks_at_the_drawn_pitch(name):
    batch = clips_of(name)
    spectrum = torch.fft.rfft(batch.waves.double(), dim=1).abs()
    peak_hz = spectrum.argmax(dim=1).double() * SR / batch.waves.shape[1]
    assert torch.all((peak_hz - batch.pitch.double()).abs() <= 2.0)  # 1 Hz bins, sub-bin pitch
    low, high = RANGES[name]["pitch"]
    assert torch.all((batch.pitch >= low) & (batch.pitch <= high))


@pytest.mark.parametrize("name,sign", [("rising chirp", 1.0), ("falling chirp", -1.0)])
def test_chirp_sweeps_from_its_start_to_its_end_pitch(name, sign):
    batch = clips_of(name)
    hz, energy = peak_track(batch.waves)
    active = active_frames(energy)
    assert torch.all((batch.pitch_end - batch.pitch) * sign > 0)
    for track, on, start, end in zip(hz, active, batch.pitch, batch.pitch_end):
        log_hz = track[on].log()
        steps = torch.arange(len(log_hz), dtype=torch.float64)
        slope = ((steps - steps.mean()) * (log_hz - log_hz.mean())).sum() / (steps - steps.mean()).square().sum()
        assert slope * sign > 0
        # 32 ms frames smear the ends of the sweep: allow 35 % (the sweep spans 3-8x).
        assert abs(math.log(log_hz[0].exp() / start)) < 0.35
        assert abs(math.log(log_hz[-1].exp() / end)) < 0.35


def test_siren_swings_around_its_centre():
    batch = clips_of("siren")
    hz, energy = peak_track(batch.waves, hop=64)
    max_depth = RANGES["siren"]["depth"][1]
    for track, on, centre, rate, duration in zip(hz, active_frames(energy), batch.pitch, batch.rate, batch.duration):
        log_ratio = (track[on] / centre).log()
        assert log_ratio.abs().max() < math.log(max_depth) + 0.1
        # Above and below the centre in turn: at least one crossing per half period heard.
        crossings = ((log_ratio[1:] > 0) != (log_ratio[:-1] > 0)).sum()
        assert crossings >= int(2 * duration * rate) - 1


@pytest.mark.parametrize("name", ["beeps", "clicks"])
def test_pulses_repeat_at_the_drawn_rate(name):
    batch = clips_of(name, count=12)
    checked = 0
    for wave, rate in zip(batch.waves, batch.rate):
        starts = onsets(wave)[1:]  # the first pulse rises with the clip's slower fade-in
        if len(starts) < 3:
            continue
        checked += 1
        intervals = starts.diff().double() / SR
        assert torch.allclose(intervals, torch.full_like(intervals, 1 / float(rate)), atol=2e-3)
    assert checked >= 3
    low, high = RANGES[name]["rate"]
    assert torch.all((batch.rate >= low) & (batch.rate <= high))


@pytest.mark.parametrize("name,high_pass", [("hiss", True), ("rumble", False)])
def test_noise_bands_stay_on_their_side_of_the_cutoff(name, high_pass):
    batch = clips_of(name)
    power = torch.fft.rfft(batch.waves.double(), dim=1).abs().square()
    freqs = torch.fft.rfftfreq(batch.waves.shape[1], 1 / SR, dtype=torch.float64)
    outside = freqs[None] < batch.cutoff.double()[:, None] * 0.9
    if not high_pass:
        outside = freqs[None] > batch.cutoff.double()[:, None] * 1.1
    assert torch.all((power * outside).sum(1) / power.sum(1) < 0.01)


def test_sound_lies_between_onset_and_end():
    batch = clips_of("noise burst")
    t = torch.arange(batch.waves.shape[1]) / SR
    inside = (t >= batch.onset[:, None]) & (t <= (batch.onset + batch.duration)[:, None])
    energy = batch.waves.double().square()
    assert torch.all((energy * inside).sum(1) / energy.sum(1) > 0.999)
    assert torch.all(batch.onset + batch.duration <= QUIET.seconds + 1e-6)
    low, high = RANGES["noise burst"]["duration"]
    assert torch.all((batch.duration >= low) & (batch.duration <= high))


def test_peak_amplitude_is_the_drawn_one():
    batch = clips_of("tone", count=8)
    peak = batch.waves.abs().amax(dim=1)
    assert torch.allclose(peak, batch.amplitude, rtol=1e-3)


def test_same_seed_same_clips_other_seed_other_clips():
    cfg = SoundConfig()
    labels = torch.arange(len(CLASS_NAMES)).repeat(2)
    a = generate(cfg, labels, torch.Generator().manual_seed(3))
    b = generate(cfg, labels, torch.Generator().manual_seed(3))
    c = generate(cfg, labels, torch.Generator().manual_seed(4))
    assert torch.equal(a.waves, b.waves) and a.captions == b.captions
    assert torch.equal(a.pitch.nan_to_num(-1), b.pitch.nan_to_num(-1))
    assert not torch.equal(a.waves, c.waves)
    assert a.waves.shape == (len(labels), cfg.num_samples) and a.waves.dtype == torch.float32


def test_parameters_are_nan_where_a_class_has_none():
    cfg = SoundConfig()
    batch = generate(cfg, torch.arange(len(CLASS_NAMES)), torch.Generator().manual_seed(0))
    has = {key: [name for name, spec in RANGES.items() if key in spec] for key in ("pitch", "rate", "cutoff")}
    for key, names in has.items():
        defined = ~getattr(batch, key).isnan()
        assert defined.tolist() == [name in names for name in CLASS_NAMES], key


def test_captions_name_the_class_and_describe_the_clip():
    batch = clips_of("tone", count=200, cfg=SoundConfig())
    low, high = (math.log(v) for v in RANGES["tone"]["pitch"])
    said = {"high": 0, "low": 0}
    for caption, pitch in zip(batch.captions, batch.pitch.tolist()):
        assert any(s in caption for s in SYNONYMS["tone"])
        position = (math.log(pitch) - low) / (high - low)
        words = caption.replace(".", "").split()
        if "high" in words:
            said["high"] += 1
            assert position > 2 / 3
        if "low" in words:
            said["low"] += 1
            assert position < 1 / 3
    assert said["high"] > 10 and said["low"] > 10


def test_log_mel_is_torchaudio_kaldi_fbank():
    cfg = SoundConfig()
    batch = generate(cfg, torch.tensor([0, 5, 8]), torch.Generator().manual_seed(1))
    ours = log_mel(batch.waves, cfg)
    for wave, row in zip(batch.waves, ours):
        reference = torchaudio_fbank(
            (wave - wave.mean())[None], htk_compat=True, sample_frequency=SR, use_energy=False,
            window_type="hanning", num_mel_bins=cfg.num_mel_bins, dither=0.0, frame_shift=10,
        )[: cfg.frames]
        torch.testing.assert_close(row, reference, atol=1e-4, rtol=1e-4)


def test_spectrogram_image_puts_high_pitch_on_top_and_time_left_to_right():
    cfg = SoundConfig()
    fbank = log_mel(clips_of("rising chirp", count=4, cfg=cfg).waves, cfg)
    image = spectrogram_image(fbank, 32)
    assert image.shape == (4, 3, 32, 32)
    assert image.min() >= -1 and image.max() <= 1
    assert torch.equal(image[:, 0], image[:, 1]) and torch.equal(image[:, 0], image[:, 2])
    # An independent reference: mean of 2 mel bins x 3 frames per pixel, highest mel in row 0.
    pooled = fbank.reshape(4, 32, 3, 32, 2).mean(dim=(2, 4)).transpose(1, 2).flip(1)
    low, high = IMAGE_LEVELS
    torch.testing.assert_close(image[:, 0], ((pooled - low) / (high - low)).clamp(0, 1) * 2 - 1)
    # The rising chirp: its brightest row moves up (smaller index) from its first to its last column.
    grey = image[:, 0]
    lit = grey.amax(dim=1) > 0
    for picture, columns in zip(grey, lit):
        cols = columns.nonzero().squeeze(1)
        first, last = picture[:, cols[1]].argmax(), picture[:, cols[-2]].argmax()
        assert last < first


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match=r"unknown sound classes \['meow'\]"):
        SoundConfig(classes=("tone", "meow"))
    with pytest.raises(ValueError, match="clips must last at least 1.0 s, got 0.5"):
        SoundConfig(seconds=0.5)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 10\), got \[0, 10\]"):
        generate(SoundConfig(), torch.tensor([0, 10]), torch.Generator())
    with pytest.raises(ValueError, match=r"fbank must have shape \[B, frames, mel\], got \[96, 64\]"):
        spectrogram_image(torch.zeros(96, 64))
