"""Benchmark the point-cloud ops: batched FPS against per-sample loops, and tokenizer throughput.

    python tools/bench_pointcloud.py                 # CPU, 8 x 8192 points -> 512 centres
    python tools/bench_pointcloud.py --device cuda

Baselines, both measured in the same run and checked to pick the same centres as ours:
- "per-sample loop": one cloud at a time, one iteration per centre, the running minimum updated
  through a boolean mask (how the ViT-Lens datasets run FPS, there in numpy);
- "batched, [B, N, 3]": the ViT-Lens model-side FPS, batched but reducing over the last axis of 3.
"""

from __future__ import annotations

import argparse
from typing import Callable

import torch
from benchtime import best_times
from omniclip.modalities.pointcloud.ops import farthest_point_sample
from omniclip.modalities.pointcloud.tokenizers import (
    PointBertTokenizer,
    PointNet2Tokenizer,
)


def per_sample_loop_fps(xyz: torch.Tensor, npoint: int, start: torch.Tensor) -> torch.Tensor:
    out = torch.empty(xyz.shape[0], npoint, dtype=torch.long, device=xyz.device)
    for b, cloud in enumerate(xyz):
        dist = torch.full((cloud.shape[0],), 1e10, device=xyz.device)
        far = int(start[b])
        for i in range(npoint):
            out[b, i] = far
            d = torch.sum((cloud - cloud[far]) ** 2, -1)
            mask = d < dist
            dist[mask] = d[mask]
            far = int(torch.argmax(dist))
    return out


def batched_last_axis_fps(xyz: torch.Tensor, npoint: int, start: torch.Tensor) -> torch.Tensor:
    batch = xyz.shape[0]
    out = torch.empty(batch, npoint, dtype=torch.long, device=xyz.device)
    dist = torch.full(xyz.shape[:2], 1e10, device=xyz.device)
    far = start.to(xyz.device)
    rows = torch.arange(batch, device=xyz.device)
    for i in range(npoint):
        out[:, i] = far
        d = torch.sum((xyz - xyz[rows, far].unsqueeze(1)) ** 2, -1)
        dist = torch.min(dist, d)
        far = torch.max(dist, -1)[1]
    return out


def timed(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Best wall time of ``repeats`` calls after one warm-up (seconds)."""
    return best_times({"fn": fn}, device, repeats)["fn"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--points", type=int, default=8192)
    parser.add_argument("--centres", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda asked for, but CUDA is not available")

    gen = torch.Generator().manual_seed(0)
    xyz = torch.rand(args.batch, args.points, 3, generator=gen).to(device)
    start = torch.randint(0, args.points, (args.batch,), generator=gen)
    ours = farthest_point_sample(xyz, args.centres, start_idx=start)
    rows = []
    t_ours = timed(lambda: farthest_point_sample(xyz, args.centres, start_idx=start), device, args.repeats)
    for name, fn in [("per-sample loop", per_sample_loop_fps), ("batched, [B, N, 3]", batched_last_axis_fps)]:
        if not torch.equal(fn(xyz, args.centres, start), ours):
            raise SystemExit(f"baseline '{name}' picked different centres")
        rows.append((name, timed(lambda fn=fn: fn(xyz, args.centres, start), device, 1)))

    print(f"FPS {args.points} -> {args.centres}, batch {args.batch}, {device} ({torch.get_num_threads()} threads)")
    print(f"{'implementation':<22}{'ms':>10}{'ours is x faster':>18}")
    print(f"{'ours (batched)':<22}{t_ours * 1e3:>10.1f}{'':>18}")
    for name, t in rows:
        print(f"{name:<22}{t * 1e3:>10.1f}{t / t_ours:>18.1f}")

    print()
    print(f"{'tokenizer (eval, no grad)':<34}{'clouds/s':>10}")
    for name, tok, channels, points in [
        ("PointBertTokenizer 8192 pts", PointBertTokenizer(fps_start=0), 3, args.points),
        ("PointNet2Tokenizer 10000 pts", PointNet2Tokenizer(fps_start=0), 6, 10000),
    ]:
        tok = tok.to(device).eval()
        clouds = torch.rand(args.batch, points, channels, generator=gen).to(device)
        with torch.inference_mode():
            t = timed(lambda tok=tok, clouds=clouds: tok(clouds), device, args.repeats)
        print(f"{name:<34}{args.batch / t:>10.1f}")


if __name__ == "__main__":
    main()
