"""Benchmark video decoding and the clip loader against what a ViT-B/16 training step consumes.

    python tools/bench_video.py                    # CPU: decoders, loader, 8-frame ViT-B/16 step
    python tools/bench_video.py --device cuda      # the step (and normalisation) on the GPU
    python tools/bench_video.py --files 2 --repeats 2 --no-step   # quicker

Files: generated here with PyAV, 10 s at 25 fps, H.264 with a keyframe every 2 s (as in typical
web video), moving content plus noise, at 320x240 and 640x360. Indices: TSN training indices
(8 and 16 frames) drawn once per file with a fixed seed, the same for every backend.

1. Decoded frames/s per backend (PyAV, torchcodec, decord; whichever are installed): one
   `read_frames` per clip (probe included, as a dataset pays it), in this process (best of
   interleaved rounds, `benchtime.best_times`) and with 2 DataLoader workers (wall time of all
   clips, workers started and warmed up before). Backends are checked to return identical frames before anything is timed.
2. Loader clips/s: the ``list`` dataset over the files, 8 TSN frames, training transforms
   (short side 256, multi-scale crop 224, flip, jitter, grayscale), uint8 to the device and
   normalised there, batches of 8, 2 workers, prefetch 4: the whole decode + sample + transform +
   collate path.
3. Step clips/s: forward + backward + AdamW of open_clip's ViT-B-16 image tower (random weights)
   on 8-frame clips, frame features mean-pooled, a cross-entropy over 400 class embeddings.

The figures are ratios from one run on a shared machine: torchcodec / decord and PyAV / torchcodec
frames/s on the same indices, and loader / step clips/s.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np
import torch
from benchtime import best_times
from torch.utils.data import DataLoader, Dataset

from omniclip.data import ResumableSampler
from omniclip.modalities.video import collate_views
from omniclip.modalities.video.datasets import build_dataset
from omniclip.modalities.video.io import DecodeOptions, available_backends, probe, read_frames
from omniclip.modalities.video.loader import GpuBatch, build_video_loader
from omniclip.modalities.video.sampling import SamplingOptions, sample_indices

SIZES = {"320x240": (320, 240), "640x360": (640, 360)}


def write_file(path: Path, width: int, height: int, seconds: float = 10.0, fps: int = 25, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"x264-params": f"keyint={2 * fps}:min-keyint={2 * fps}:scenecut=0", "preset": "fast"}
        for i in range(int(seconds * fps)):
            base = (xx + 3 * i) % 256 * 0.6 + (yy + i) % 128
            img = np.stack([base, base[::-1] * 0.8, (xx * yy / (width + i + 1)) % 256], -1)
            img = (img + rng.normal(0, 8, img.shape)).clip(0, 255).astype(np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


class Reads(Dataset):
    """One `read_frames` call per item, for the 2-worker decoder figure."""

    def __init__(self, jobs: list[tuple[Path, np.ndarray]], opts: DecodeOptions):
        self.jobs, self.opts = jobs, opts

    def __len__(self) -> int:
        return len(self.jobs)

    def __getitem__(self, index: int) -> int:
        path, indices = self.jobs[index]
        return read_frames(path, indices, self.opts).shape[0]


def decoder_configs(backends: list[str]) -> dict[str, DecodeOptions]:
    """Each backend as the datasets use it; decord also without its forked child (``isolate``),
    to show what the hang protection costs."""
    configs = {b: DecodeOptions(backend=b) for b in backends}
    if "decord" in backends:
        configs["decord-nofork"] = DecodeOptions(backend="decord", isolate=False)
    return configs


def decoder_table(files: dict[str, list[Path]], backends: list[str], repeats: int, workers: int) -> dict:
    results = {}
    for size, paths in files.items():
        for frames in (8, 16):
            np.random.seed(frames)
            jobs = [(p, sample_indices(probe(p).num_frames, SamplingOptions(frames), train=True)[0]) for p in paths]
            reference = [read_frames(p, i, DecodeOptions(backend="pyav")) for p, i in jobs]
            configs = {}
            for name, opts in decoder_configs(backends).items():
                if all(torch.equal(read_frames(p, i, opts), r) for (p, i), r in zip(jobs, reference)):
                    configs[name] = opts
                else:
                    print(f"  note: {name} frames differ from PyAV's on {size} (not timed)")
            fns = {n: (lambda o=o: [read_frames(p, i, o) for p, i in jobs]) for n, o in configs.items()}
            best = best_times(fns, torch.device("cpu"), repeats)
            for name, opts in configs.items():
                loader = DataLoader(Reads(jobs * repeats, opts), batch_size=None, num_workers=workers,
                                    persistent_workers=True)
                sum(loader)  # start the workers and warm them up
                t0 = time.perf_counter()
                decoded = sum(loader)
                parallel = decoded / (time.perf_counter() - t0)
                results[(size, frames, name)] = (frames * len(jobs) / best[name], parallel)
    return results


def loader_clips_per_s(paths: list[Path], device: torch.device, batches: int, workers: int, frames: int = 8,
                       batch_size: int = 8) -> float:
    """Training clips/s of the whole video loader over ``paths`` (a Kinetics-style list, TSN
    sampling, training transforms, uint8 to ``device`` and normalised there), after the first
    batch, which pays the workers' start."""
    root = paths[0].parent
    (root / "bench.txt").write_text("".join(f"{p.name} {i % 400}\n" for i, p in enumerate(paths)))
    data = build_dataset({"name": "list", "root": str(root), "list_file": "bench.txt", "classes": "k400",
                          "num_frames": frames, "normalize": "none"}, "train")
    sampler = ResumableSampler(len(data), batch_size=min(batch_size, len(data)), drop_last=False)
    to_device = GpuBatch(device, "imagenet")
    loader = build_video_loader(data, collate_views, sampler.batch_size, sampler, workers, seed=0, prefetch_factor=4)
    clips, start, epoch = 0, None, 0
    while True:  # epochs over the few files until enough batches were timed (persistent workers)
        sampler.set_epoch(epoch)
        for batch in loader:
            out = to_device(batch)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if start is None:  # the first batch pays the workers' start
                start = time.perf_counter()
                continue
            clips += out["inputs"].shape[0]
            if clips >= batches * sampler.batch_size:
                return clips / (time.perf_counter() - start)
        epoch += 1


def step_clips_per_s(device: torch.device, batch: int, repeats: int) -> float:
    import open_clip

    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-16", pretrained=None).visual.to(device).train()
    classes = torch.nn.functional.normalize(torch.randn(400, model.output_dim, device=device), dim=-1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    clips = torch.randn(batch, 8, 3, 224, 224, device=device)
    labels = torch.randint(400, (batch,), device=device)
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    def step():
        with amp:
            frames = model(clips.flatten(0, 1)).view(batch, 8, -1).mean(1)
            logits = 100 * torch.nn.functional.normalize(frames.float(), dim=-1) @ classes.T
            loss = torch.nn.functional.cross_entropy(logits, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return batch / best_times({"step": step}, device, repeats)["step"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--files", type=int, default=4, help="files per size")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batches", type=int, default=6, help="loader batches timed")
    parser.add_argument("--step-batch", type=int, default=None, help="clips per step (default 1 on CPU, 32 on CUDA)")
    parser.add_argument("--no-step", action="store_true")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    backends = available_backends()
    print(f"backends: {', '.join(backends)}; torch threads {torch.get_num_threads()}; device {device}")
    with tempfile.TemporaryDirectory() as tmp:
        files = {size: [write_file(Path(tmp) / f"{size}_{i}.mp4", w, h, seed=i) for i in range(args.files)]
                 for size, (w, h) in SIZES.items()}
        table = decoder_table(files, backends, args.repeats, args.workers)
        print(f"\ndecoded frames/s (TSN indices, probe included): 1 process | {args.workers} workers")
        for (size, frames, backend), (one, two) in table.items():
            print(f"  {size} {frames:2d} frames  {backend:13s} {one:7.0f} | {two:7.0f}")
        for size in SIZES:
            for frames in (8, 16):
                get = lambda b: table.get((size, frames, b), (None, None))[0]  # noqa: E731
                ratios = []
                for decord in ("decord", "decord-nofork"):
                    if get("torchcodec") and get(decord):
                        ratios.append(f"torchcodec/{decord} {get('torchcodec') / get(decord):.2f}x")
                if get("torchcodec") and get("pyav"):
                    ratios.append(f"pyav/torchcodec {get('pyav') / get('torchcodec'):.2f}x")
                print(f"  {size} {frames:2d} frames: {', '.join(ratios) or 'one backend'}")
        loader = loader_clips_per_s(files["320x240"] + files["640x360"], device, args.batches, args.workers)
        print(f"\nloader: {loader:.2f} clips/s (8 frames, train transforms, {args.workers} workers, batch 8, "
              f"uint8 -> {device.type})")
        if not args.no_step:
            batch = args.step_batch or (32 if device.type == "cuda" else 1)
            step = step_clips_per_s(device, batch, max(1, args.repeats - 2) if device.type == "cpu" else args.repeats)
            print(f"ViT-B/16 8-frame training step: {step:.2f} clips/s (batch {batch}, {device.type})")
            print(f"loader / step: {loader / step:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
