"""Benchmark the audio front end: decode + Kaldi fbank, batched against one file at a time.

    python tools/bench_audio.py                      # CPU, 64 wav files of 5 s at 16 kHz
    python tools/bench_audio.py --device cuda        # fbank on the GPU (decode stays on CPU)
    python tools/bench_audio.py --lens-step          # also: audio lens training step, fbank in the model

The lens-step line times forward + backward + AdamW of the audio tokenizer and a ViT-B/16-sized
Perceiver (196 x 768, depth 2, 3 self-attentions per cross-attention; the frozen trunk is left
out, it costs the same either way) fed waveforms, the fbank and its augmentations computed
inside the tokenizer, against the same step fed precomputed fbank.

Baseline, measured in the same run: the reference's path, one file at a time: soundfile read,
``torchaudio.compliance.kaldi.fbank`` on the mean-free clip, zero-pad to 512 frames, normalise.
Ours: `load_audio` (with its checks) per file, on one thread as in a DataLoader worker, then
`AudioFrontend` on the whole batch. The fbank outputs are checked to agree before anything is
timed.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
import soundfile as sf
import torch
import torchaudio
from benchtime import best_times
from omniclip.modalities.audio.features import (
    AudioFrontend,
    normalize_fbank,
    pad_or_cut,
)
from omniclip.modalities.audio.io import load_audio, sample_clips
from omniclip.modalities.audio.tokenizer import AudioPatchTokenizer


def reference_fbank(clip: torch.Tensor) -> torch.Tensor:
    fbank = torchaudio.compliance.kaldi.fbank(
        (clip - clip.mean())[None],
        htk_compat=True,
        sample_frequency=16000,
        use_energy=False,
        window_type="hanning",
        num_mel_bins=128,
        dither=0.0,
        frame_shift=10,
    )
    return normalize_fbank(pad_or_cut(fbank, 512))



def write_files(folder: Path, count: int, seconds: float, sr: int) -> list[Path]:
    """Tones plus noise, 16-bit wav, like a typical dataset file."""
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * sr)) / sr
    paths = []
    for i in range(count):
        wave = 0.3 * np.sin(2 * np.pi * (200 + 50 * i) * t) + 0.05 * rng.standard_normal(t.size)
        path = folder / f"clip_{i:04d}.wav"
        sf.write(path, wave.astype(np.float32), sr, subtype="PCM_16")
        paths.append(path)
    return paths


def fbank_times(
    clips: torch.Tensor, frontend: AudioFrontend, repeats: int, extra: dict[str, Callable[[], object]] | None = None
) -> tuple[dict[str, float], float]:
    """Best seconds of torchaudio's fbank per file, ours per file and ours batched over ``clips``
    [n, T] (on their device), timed interleaved with ``extra``; and the largest difference
    between ours batched and torchaudio's, checked first (SystemExit beyond 1e-3)."""
    per_file_clips = list(clips)
    ours = frontend(clips)
    reference = torch.stack([reference_fbank(c) for c in per_file_clips])
    diff = (ours - reference).abs().max().item()
    if diff > 1e-3:  # normalised units; fp32 rounding in near-empty bins stays far below
        raise SystemExit(f"batched fbank differs from torchaudio's by {diff:.2e}")
    fns = {
        **(extra or {}),
        "fbank: torchaudio per file": lambda: [reference_fbank(c) for c in per_file_clips],
        "fbank: ours per file": lambda: [frontend(c[None]) for c in per_file_clips],
        "fbank: ours batched": lambda: frontend(clips),
    }
    return best_times(fns, clips.device, repeats), diff


def lens_step_times(device: torch.device, batch: int, repeats: int) -> dict[str, float]:
    """Best time of one training step of tokenizer + lens, from waveforms and from fbank."""
    from omniclip.modalities.audio import AudioTokenizer

    from omniclip.lens import Perceiver

    torch.manual_seed(0)
    lens = Perceiver(input_dim=768, latent_dim=768, num_latents=196, depth=2, latent_heads=12,
                     self_per_cross_attn=3).to(device)
    from_waves = AudioTokenizer(768, 16).to(device).train()
    from_fbank = AudioPatchTokenizer(768, 16).to(device)
    waves = 0.1 * torch.randn(batch, 80000, device=device)
    fbank = from_waves.frontend(waves)

    def step(tokenizer: torch.nn.Module, inputs: torch.Tensor) -> Callable[[], None]:
        optimizer = torch.optim.AdamW([*tokenizer.parameters(), *lens.parameters()], lr=1e-4)

        def run() -> None:
            lens(tokenizer(inputs)).square().mean().backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        return run

    return best_times({"lens step: fbank precomputed": step(from_fbank, fbank),
                       "lens step: waveforms (fbank inside)": step(from_waves, waves)}, device, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--files", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--lens-step", action="store_true", help="also time an audio lens training step")
    parser.add_argument("--lens-batch", type=int, default=2)
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda asked for, but CUDA is not available")
    frontend = AudioFrontend().eval().to(device)

    with tempfile.TemporaryDirectory() as tmp:
        paths = write_files(Path(tmp), args.files, args.seconds, 16000)

        def read_plain() -> list[torch.Tensor]:
            return [torch.from_numpy(sf.read(p, dtype="float32")[0]) for p in paths]

        def read_checked() -> list[torch.Tensor]:
            # One intra-op thread, as in a DataLoader worker, where decoding runs.
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                return [load_audio(p) for p in paths]
            finally:
                torch.set_num_threads(threads)

        clips = torch.cat([sample_clips(w, 16000, args.seconds, train=False) for w in read_checked()])
        clips = clips.to(device)
        n = clips.shape[0]
        t, diff = fbank_times(clips, frontend, args.repeats,
                              {"decode: soundfile.read": read_plain, "decode: load_audio (checks)": read_checked})
        baseline = t["decode: soundfile.read"] + t["fbank: torchaudio per file"]
        rows = list(t.items()) + [
            ("decode + fbank: reference", baseline),
            ("decode + fbank: ours", t["decode: load_audio (checks)"] + t["fbank: ours batched"]),
        ]

    print(
        f"{n} clips of {args.seconds:g} s at 16 kHz -> [512, 128] fbank; fbank on {device} "
        f"({torch.get_num_threads()} CPU threads); max |ours - torchaudio| = {diff:.1e}"
    )
    print(f"{'stage':<32}{'ms':>10}{'clips/s':>10}{'vs torchaudio per file':>24}")
    for name, seconds in rows:
        base = baseline if name.startswith("decode + fbank") else t["fbank: torchaudio per file"]
        ratio = f"{base / seconds:.2f}x" if name.startswith(("fbank", "decode + fbank")) else ""
        print(f"{name:<32}{seconds * 1e3:>10.1f}{n / seconds:>10.0f}{ratio:>24}")
    if args.lens_step:
        steps = lens_step_times(device, args.lens_batch, max(2, args.repeats // 4))
        base = steps["lens step: fbank precomputed"]
        print(f"\n{'stage (batch ' + str(args.lens_batch) + ')':<40}{'ms':>10}{'clips/s':>10}{'vs precomputed':>16}")
        for name, seconds in steps.items():
            print(f"{name:<40}{seconds * 1e3:>10.1f}{args.lens_batch / seconds:>10.1f}{base / seconds:>15.2f}x")


if __name__ == "__main__":
    main()
