"""Benchmark the point-cloud ops: FPS backends against the reference algorithm, kNN, tokenizers.

    python tools/bench_pointcloud.py                 # CPU, 8 x 8192 points -> 512 centres
    python tools/bench_pointcloud.py --fps-only      # the FPS tables only (batch --batch and 1)
    python tools/bench_pointcloud.py --fps-only --points 1024   # dense sampling: little to prune
    python tools/bench_pointcloud.py --device cuda   # adds the Triton kernel

Every implementation is first checked to pick exactly the reference's centres, then all are timed
in the same run with interleaved best-of-N rounds (tools/benchtime.py), so ratios are comparable
on a shared machine. The ratio column is "x faster than the reference algorithm":
- "reference: batched [B, N, 3]": the ViT-Lens model-side FPS, batched over clouds, one Python
  iteration per centre, differences [B, N, 3] reduced over the last axis (1.0x by definition);
- "per-sample loop": one cloud at a time with a masked running-minimum update (how the ViT-Lens
  datasets run FPS, there in numpy);
- "torch loop": ours, backend="torch" (one [B, N] plane per coordinate, buffers reused);
- "numba (pruned)": backend="numba", what backend="auto" runs on CPU (exact FPS that updates only
  the blocks of points near each new centre, clouds in parallel);
- "fpsample": backend="fpsample", what backend="auto" runs on CPU without numba;
- "triton": backend="triton", what backend="auto" runs on CUDA (one launch for all centres).
"""

from __future__ import annotations

import argparse
from typing import Callable

import torch
from benchtime import best_times
from omniclip.modalities.pointcloud.ops import farthest_point_sample, fps_backend, gather_points, knn
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


def fps_times(xyz: torch.Tensor, npoint: int, start: torch.Tensor, repeats: int, per_sample: bool) -> dict[str, float]:
    """Best seconds of every FPS implementation available on ``xyz``'s device, each first checked
    to pick exactly the reference's centres (SystemExit naming the one that does not)."""
    device = xyz.device
    reference = batched_last_axis_fps(xyz, npoint, start)
    fns: dict[str, Callable[[], torch.Tensor]] = {
        "reference: batched [B, N, 3]": lambda: batched_last_axis_fps(xyz, npoint, start),
    }
    if per_sample:
        fns["per-sample loop"] = lambda: per_sample_loop_fps(xyz, npoint, start)
    fns["torch loop (ours)"] = lambda: farthest_point_sample(xyz, npoint, start, backend="torch")
    if device.type == "cpu":
        for name, backend in [("numba (pruned)", "numba"), ("fpsample", "fpsample")]:
            try:
                farthest_point_sample(xyz[:, :npoint], 1, start.clamp(max=npoint - 1), backend=backend)
            except RuntimeError as err:  # not installed, or failed its self-check
                print(f"({name} skipped: {err})")
                continue
            fns[name] = lambda backend=backend: farthest_point_sample(xyz, npoint, start, backend=backend)
    if device.type == "cuda" and fps_backend("cuda") == "triton":
        fns["triton kernel"] = lambda: farthest_point_sample(xyz, npoint, start, backend="triton")
    for name, fn in fns.items():
        if not torch.equal(fn(), reference):
            raise SystemExit(f"FPS '{name}' picked other centres than the reference")
    return best_times(fns, device, repeats)


def fps_table(xyz: torch.Tensor, npoint: int, start: torch.Tensor, repeats: int, per_sample: bool) -> dict[str, float]:
    """Print `fps_times` as a table (ms, x reference); returns the times."""
    device = xyz.device
    best = fps_times(xyz, npoint, start, repeats, per_sample)
    batch, num_points, _ = xyz.shape
    print(f"FPS {num_points} -> {npoint}, batch {batch}, {device} ({torch.get_num_threads()} threads), "
          f"best of {repeats} interleaved rounds; auto backend: {fps_backend(device, batch=batch)}")
    print(f"{'implementation':<30}{'ms':>10}{'x reference':>14}")
    t_ref = best["reference: batched [B, N, 3]"]
    for name, t in best.items():
        print(f"{name:<30}{t * 1e3:>10.1f}{t_ref / t:>14.1f}")
    print()
    return best


def matmul_knn(query: torch.Tensor, points: torch.Tensor, k: int) -> torch.Tensor:
    """The reference's kNN: |c|^2 + |p|^2 - 2 c.p and an unsorted topk (not index-exact to ours)."""
    dist = (query.square().sum(-1, keepdim=True) + points.square().sum(-1).unsqueeze(1)
            - 2 * query @ points.transpose(1, 2))
    return dist.topk(k, dim=-1, largest=False, sorted=False).indices


def knn_times(xyz: torch.Tensor, num_centres: int, start: torch.Tensor, k: int, repeats: int) -> dict[str, float]:
    """Best seconds of our kNN and the reference's matmul kNN, ``k`` neighbours of the FPS centres."""
    centres = gather_points(xyz, farthest_point_sample(xyz, num_centres, start))
    return best_times({
        "ours (exact differences + topk)": lambda: knn(centres, xyz, k),
        "reference (matmul + topk)": lambda: matmul_knn(centres, xyz, k),
    }, xyz.device, repeats)


def timed(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Best wall time of ``repeats`` calls after one warm-up (seconds)."""
    return best_times({"fn": fn}, device, repeats)["fn"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--points", type=int, default=8192)
    parser.add_argument("--centres", type=int, default=512)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads (the numba backend follows it); default: torch's own")
    parser.add_argument("--fps-only", action="store_true", help="only the two FPS tables (no kNN, no tokenizers)")
    parser.add_argument("--no-per-sample", action="store_true",
                        help="leave out the per-sample loop (the slowest row) from the batched table")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda asked for, but CUDA is not available")

    gen = torch.Generator().manual_seed(0)
    xyz = torch.rand(args.batch, args.points, 3, generator=gen).to(device)
    start = torch.randint(0, args.points, (args.batch,), generator=gen)
    fps_table(xyz, args.centres, start, args.repeats, per_sample=not args.no_per_sample)
    # The datasets' path: one cloud at a time (resampling a file to the recipe's point count).
    fps_table(xyz[:1], args.centres, start[:1], args.repeats, per_sample=False)
    if args.fps_only:
        return

    best = knn_times(xyz, args.centres, start, args.k, args.repeats)
    print(f"kNN {args.centres} centres x {args.points} points, k {args.k}, batch {args.batch}, {device}")
    for name, t in best.items():
        print(f"{name:<34}{t * 1e3:>10.1f} ms")
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
