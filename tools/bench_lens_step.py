"""Benchmark one lens training step on a frozen ViT-B/16-shaped trunk with a 256-latent lens.

Prints samples/s and peak memory for each setting and the ratios against the baseline
measured in the same run (never absolute targets):

  anchor cache          on vs off   (off: text and image towers run every step)
  grad checkpoint       on vs off
  frozen trunk bf16     vs fp32     (trainer.frozen_dtype: frozen weights stored in bf16, lens fp32)
  torch.compile         vs eager    (trainer.compile, inductor: the model's forward and backward)
  bf16 autocast         vs fp32     (trainer.precision; CUDA only, alone and with the two above)

On CPU, throughput is samples per CPU-second of the benchmark process (robust to other load
on a shared machine); on CUDA, samples per wall-clock second. Each setting runs in its own
subprocess; on CPU, peak memory is the peak RSS during the timed steps (Linux VmHWM, reset
after warm-up), on CUDA the peak allocated GPU memory. The warm-up step (which also compiles)
is not timed. "frozen MiB" is what the frozen trunk parameters and buffers hold. The load
average is printed before and after: read CPU figures next to it.

    python tools/bench_lens_step.py [--device cpu|cuda] [--batch-size 8] [--steps 3] [--repeats 2]
                                    [--only "frozen,compile"] [--backbone ViT-B-16]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchtime, beside this script
from benchtime import peak_rss_mb, reset_peak_rss  # noqa: E402

BASELINE = "baseline (cache on, no ckpt, fp32)"
#: name -> options; "cuda": measured on CUDA only (bf16 autocast on a CPU without bf16 units says
#: nothing about the GPU it is meant for)
SETTINGS: dict[str, dict] = {
    BASELINE: {},
    "anchor cache off": {"cache": False},
    "grad checkpointing on": {"ckpt": True},
    "frozen trunk bf16": {"frozen_bf16": True},
    "torch.compile (inductor)": {"compile": True},
    "frozen trunk bf16 + compile": {"frozen_bf16": True, "compile": True},
    "bf16 autocast": {"bf16": True, "cuda": True},
    "bf16 autocast + frozen trunk bf16": {"bf16": True, "frozen_bf16": True, "cuda": True},
    "bf16 autocast + frozen bf16 + compile": {"bf16": True, "frozen_bf16": True, "compile": True, "cuda": True},
}


def pick_settings(device: str, only: str | None = None) -> dict[str, dict]:
    """The settings this device measures (the baseline always), optionally those whose name
    contains one of the comma-separated words of ``only``."""
    words = [w.strip() for w in only.split(",")] if only else []
    return {name: st for name, st in SETTINGS.items()
            if (not st.get("cuda") or device.startswith("cuda"))
            and (name == BASELINE or not words or any(w in name for w in words))}


def run_setting(device: str, batch_size: int, steps: int, cache: bool = True, ckpt: bool = False,
                bf16: bool = False, frozen_bf16: bool = False, compile: bool = False, cuda: bool = False,
                backbone_name: str = "ViT-B-16", num_latents: int = 256, compile_backend: str = "inductor") -> dict:
    import torch
    from torch import nn

    from omniclip.acceleration import cast_frozen, compile_model, frozen_nbytes
    from omniclip.anchors import AnchorStore
    from omniclip.backbone import load_backbone
    from omniclip.lens import Perceiver
    from omniclip.losses import LogitScale
    from omniclip.model import LensModel
    from omniclip.objective import ContrastiveObjective

    class TokenTokenizer(nn.Module):  # stands in for a modality tokenizer: 512 tokens of width 384
        out_dim = 384

        def __init__(self) -> None:
            super().__init__()
            self.proj = nn.Linear(384, 384)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.proj(x)

    torch.manual_seed(0)
    backbone = load_backbone(backbone_name, device=device)
    trunk = backbone.trunk(interpolate_positions=True)  # 256 latents on a 14x14 grid
    width = trunk.width
    lens = Perceiver(input_dim=384, latent_dim=width, num_latents=num_latents, depth=4,
                     latent_heads=max(1, width // 64), self_per_cross_attn=1)
    model = LensModel(TokenTokenizer(), lens, trunk).to(device)
    model.set_grad_checkpointing(ckpt)
    cast_frozen(model, "bf16" if frozen_bf16 else "fp32")  # what trainer.frozen_dtype does
    if compile:
        compile_model(model, compile_backend, None, torch.device(device))  # what trainer.compile does
    objective = ContrastiveObjective(AnchorStore(backbone, enabled=cache), LogitScale(backbone.logit_scale))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    batch = {
        "inputs": torch.randn(batch_size, 512, 384, device=device),
        "texts": [f"caption number {i}" for i in range(batch_size)],
        "images": torch.randn(batch_size, 3, backbone.visual.image_size[0], backbone.visual.image_size[1],
                              device=device),
        "image_keys": [f"image-{i}" for i in range(batch_size)],
    }

    def step() -> None:
        with torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=bf16):
            loss, _ = objective(model(batch).float(), batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # warm-up (and, with the cache on, the only step that runs the towers)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    else:
        reset_peak_rss()
    start, cpu_start = time.perf_counter(), time.process_time()
    for _ in range(steps):
        step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_mb = peak_rss_mb()
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    # On CPU, throughput per CPU-second of this process (all its threads): the work a step costs,
    # robust to other load on a shared machine; on CUDA, wall-clock throughput.
    per_s = elapsed if device.startswith("cuda") else cpu
    return {"samples_per_s": batch_size * steps / per_s, "peak_mb": peak_mb, "frozen_mb": frozen_nbytes(model) / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2,
                        help="rounds over all settings, interleaved; the best round of each is kept "
                             "(robust to other load on a shared machine)")
    parser.add_argument("--only", help="comma-separated words: measure only the settings whose name contains "
                                       "one (and the baseline), e.g. 'frozen,compile'")
    parser.add_argument("--backbone", default="ViT-B-16", help="open_clip model (random weights)")
    parser.add_argument("--_child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._child:
        options = json.loads(args._child)
        print(json.dumps(run_setting(args.device, args.batch_size, args.steps, backbone_name=args.backbone,
                                     **options)))
        return
    settings = pick_settings(args.device, args.only)
    load_before = os.getloadavg()
    results: dict[str, dict] = {}
    for _ in range(args.repeats):
        for name, setting in settings.items():
            out = subprocess.run(
                [sys.executable, __file__, "--device", args.device, "--batch-size", str(args.batch_size),
                 "--steps", str(args.steps), "--backbone", args.backbone, "--_child", json.dumps(setting)],
                capture_output=True, text=True,
            )
            if out.returncode != 0:
                raise SystemExit(f"setting {name!r} failed:\n{out.stderr[-4000:]}")
            run = json.loads(out.stdout.strip().splitlines()[-1])
            best = results.get(name)
            if best is None or run["samples_per_s"] > best["samples_per_s"]:
                results[name] = run
    print(format_table(results, args.device, args.backbone, args.batch_size, load_before, os.getloadavg()))


def format_table(results: dict[str, dict], device: str, backbone: str, batch_size: int,
                 load_before: tuple[float, ...], load_after: tuple[float, ...]) -> str:
    """The results as text, each figure also as a ratio to the baseline of the same run."""
    base = results[BASELINE]
    memory = "peak GPU memory (MiB)" if device.startswith("cuda") else "peak RSS (MiB)"
    rate = "samples/s" if device.startswith("cuda") else "samples/CPU-s"
    lines = [f"lens training step, {backbone} trunk, 256 latents, batch {batch_size}, device {device}; "
             f"load average {load_before[0]:.2f} before, {load_after[0]:.2f} after",
             f"{'setting':40s} {rate:>13s} {'x baseline':>10s} {memory:>22s} {'x baseline':>10s} "
             f"{'frozen MiB':>10s} {'x baseline':>10s}"]
    for name, r in results.items():
        lines.append(f"{name:40s} {r['samples_per_s']:13.3f} {r['samples_per_s'] / base['samples_per_s']:10.2f} "
                     f"{r['peak_mb']:22.0f} {r['peak_mb'] / base['peak_mb']:10.2f} "
                     f"{r['frozen_mb']:10.1f} {r['frozen_mb'] / base['frozen_mb']:10.2f}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
