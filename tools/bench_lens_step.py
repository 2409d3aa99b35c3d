"""Benchmark one lens training step on a frozen ViT-B/16-shaped trunk with a 256-latent lens.

Prints samples/s and peak memory for each setting and the ratios against the baseline
measured in the same run (never absolute targets):

  anchor cache      on vs off   (off: text and image towers run every step)
  grad checkpoint   on vs off
  bf16 autocast     vs fp32     (CUDA only)

On CPU, throughput is samples per CPU-second of the benchmark process (robust to other load
on a shared machine); on CUDA, samples per wall-clock second. Each setting runs in its own
subprocess; on CPU, peak memory is the peak RSS during the
timed steps (Linux VmHWM, reset after warm-up), on CUDA the peak allocated GPU memory.

    python tools/bench_lens_step.py [--device cpu|cuda] [--batch-size 8] [--steps 3]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

SETTINGS = {
    "baseline (cache on, no ckpt, fp32)": {"cache": True, "ckpt": False, "bf16": False},
    "anchor cache off": {"cache": False, "ckpt": False, "bf16": False},
    "grad checkpointing on": {"cache": True, "ckpt": True, "bf16": False},
    "bf16 autocast": {"cache": True, "ckpt": False, "bf16": True},
}


def _reset_peak_rss() -> None:
    """Reset the kernel's peak-RSS counter (VmHWM) so it covers the timed steps only."""
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")


def _peak_rss_mb() -> float:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_setting(device: str, batch_size: int, steps: int, cache: bool, ckpt: bool, bf16: bool) -> dict:
    import torch
    from torch import nn

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
    backbone = load_backbone("ViT-B-16", device=device)
    trunk = backbone.trunk(interpolate_positions=True)  # 256 latents on a 14x14 grid
    lens = Perceiver(input_dim=384, latent_dim=768, num_latents=256, depth=4, latent_heads=12,
                     self_per_cross_attn=1)
    model = LensModel(TokenTokenizer(), lens, trunk).to(device)
    model.set_grad_checkpointing(ckpt)
    objective = ContrastiveObjective(AnchorStore(backbone, enabled=cache), LogitScale(backbone.logit_scale))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    batch = {
        "inputs": torch.randn(batch_size, 512, 384, device=device),
        "texts": [f"caption number {i}" for i in range(batch_size)],
        "images": torch.randn(batch_size, 3, 224, 224, device=device),
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
        _reset_peak_rss()
    start, cpu_start = time.perf_counter(), time.process_time()
    for _ in range(steps):
        step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_mb = _peak_rss_mb()
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    # On CPU, throughput per CPU-second of this process (all its threads): the work a step costs,
    # robust to other load on a shared machine; on CUDA, wall-clock throughput.
    per_s = elapsed if device.startswith("cuda") else cpu
    return {"samples_per_s": batch_size * steps / per_s, "peak_mb": peak_mb}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2,
                        help="rounds over all settings, interleaved; the best round of each is kept "
                             "(robust to other load on a shared machine)")
    parser.add_argument("--_child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._child:
        print(json.dumps(run_setting(args.device, args.batch_size, args.steps, **json.loads(args._child))))
        return
    settings = {n: st for n, st in SETTINGS.items() if not st["bf16"] or args.device.startswith("cuda")}
    results: dict[str, dict] = {}
    for _ in range(args.repeats):
        for name, setting in settings.items():
            out = subprocess.run(
                [sys.executable, __file__, "--device", args.device, "--batch-size", str(args.batch_size),
                 "--steps", str(args.steps), "--_child", json.dumps(setting)],
                capture_output=True, text=True, check=True,
            )
            run = json.loads(out.stdout.strip().splitlines()[-1])
            best = results.get(name)
            if best is None or run["samples_per_s"] > best["samples_per_s"]:
                results[name] = run
    base = results["baseline (cache on, no ckpt, fp32)"]
    memory = "peak GPU memory (MiB)" if args.device.startswith("cuda") else "peak RSS (MiB)"
    print(f"lens training step, ViT-B/16 trunk, 256 latents, batch {args.batch_size}, device {args.device}")
    rate = "samples/s" if args.device.startswith("cuda") else "samples/CPU-s"
    print(f"{'setting':38s} {rate:>13s} {'x baseline':>10s} {memory:>22s} {'x baseline':>10s}")
    for name, r in results.items():
        print(f"{name:38s} {r['samples_per_s']:13.3f} {r['samples_per_s'] / base['samples_per_s']:10.2f} "
              f"{r['peak_mb']:22.0f} {r['peak_mb'] / base['peak_mb']:10.2f}")


if __name__ == "__main__":
    main()
