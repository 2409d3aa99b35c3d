"""Benchmark a training step of the two video models against each other and against the loader.

    python tools/bench_video_model.py --device cuda                 # ViT-B/16, 8 and 16 frames, batch 8
    python tools/bench_video_model.py --width 192 --layers 4 --image-size 112 --steps 2   # CPU-sized

Models, on an open_clip ``ViT-B-16``-shaped image tower (width 768, 12 layers, 224 px, patch 16)
with random weights (nothing is downloaded; ``--width/--layers/--image-size`` shrink it):

- **ViFi-CLIP**: `omniclip.video_model.VideoClipModel` over the whole image tower, every weight
  trained (the modality's ``image_tower: whole``), frame embeddings mean-pooled.
- **ILA**: `omniclip.ila.build_ila_model` (frozen tower, ILA blocks in every layer, MIT pooling,
  X-CLIP prompts), its alignment loss added to the class loss.

A step is forward, cross-entropy over 400 fixed random class embeddings (ILA's conditioned on
each clip by its prompt generator), backward and AdamW. ViFi-CLIP's full fine-tune also trains
the text tower on the class prompts every step; that cost depends on the number of classes, not
on the frames, and is left out of both models alike. Each setting is timed with and without
gradient checkpointing and, on CUDA, under bf16 autocast as well as in fp32.

Figures: clips/s over ``--steps`` timed steps after one warm-up step (wall clock; on CPU also
clips per CPU-second of this process, which other load on a shared machine disturbs less), and
the peak memory a setting adds (CUDA: peak allocated; CPU: peak RSS over the RSS before the model
was built). Ratios are against ViFi-CLIP in fp32 without checkpointing at the same frame count,
measured in the same run. The loader row is `tools/bench_video.py`'s loader measurement
(the ``list`` dataset over generated H.264 files, TSN frames, training transforms, uint8 to the
device and normalised there) at this run's frame count and batch size; its ratio is loader
clips/s over the baseline step's, i.e. how many such steps the loader can feed.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchtime, beside this script
from benchtime import peak_rss_mb, release_freed_memory, reset_peak_rss, rss_mb  # noqa: E402

NUM_CLASSES = 400
MODELS = {"vificlip": "ViFi-CLIP", "ila": "ILA"}


@dataclass(frozen=True)
class Setting:
    model: str  # a key of MODELS
    frames: int
    precision: str  # fp32 | bf16
    checkpointing: bool

    @property
    def label(self) -> str:
        return f"{MODELS[self.model]:9s} {self.frames:2d} frames {self.precision} ckpt {'on ' if self.checkpointing else 'off'}"


def settings_for(models: list[str], frames: list[int], device: torch.device) -> list[Setting]:
    """Every combination; the baseline (ViFi-CLIP, fp32, no checkpointing) of each frame count first."""
    precisions = ["fp32", "bf16"] if device.type == "cuda" else ["fp32"]
    return [Setting(m, f, p, c) for f in frames for m in models for p in precisions for c in (False, True)]


# ------------------------------------------------------------------------------------- models


def backbone_name(width: int, layers: int, image_size: int, config_dir: Path) -> str:
    """``ViT-B-16``, or a registered copy of its config with the image tower resized (and the
    text tower shrunk alike: it is built, though no step runs it)."""
    import open_clip

    if (width, layers, image_size) == (768, 12, 224):
        return "ViT-B-16"
    if width % 64:
        raise SystemExit(f"--width must be a multiple of 64 (heads of 64 channels), got {width}")
    cfg = json.loads(json.dumps(open_clip.get_model_config("ViT-B-16")))
    cfg["vision_cfg"].update(width=width, layers=layers, image_size=image_size)
    text_width = min(cfg["text_cfg"]["width"], width)
    cfg["text_cfg"].update(width=text_width, layers=min(cfg["text_cfg"]["layers"], layers),
                           heads=max(1, text_width // 64))
    cfg["embed_dim"] = min(cfg["embed_dim"], width)
    name = f"bench-video-vit-w{width}-l{layers}-s{image_size}"
    path = config_dir / f"{name}.json"
    path.write_text(json.dumps(cfg))
    open_clip.add_model_config(path)
    return name


def build_step(setting: Setting, name: str, device: torch.device, batch_size: int, image_size: int
               ) -> Callable[[], None]:
    """One training step of ``setting`` as a closure over its model, optimizer and batch."""
    from omniclip.backbone import load_backbone
    from omniclip.ila import build_ila_model
    from omniclip.modalities.video import whole_image_tower
    from omniclip.video_model import VideoClipModel

    torch.manual_seed(0)
    backbone = load_backbone(name, device=device)
    if setting.model == "vificlip":
        model = VideoClipModel(whole_image_tower(backbone, {}))
    else:
        model = build_ila_model(backbone, setting.frames)
    model = model.to(device).train()
    model.set_grad_checkpointing(setting.checkpointing)
    embed_dim = backbone.visual.output_dim
    classes = torch.randn(NUM_CLASSES, embed_dim, device=device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    clips = torch.randn(batch_size, setting.frames, 3, image_size, image_size, device=device)
    labels = torch.randint(NUM_CLASSES, (batch_size,), device=device)
    batch = {"inputs": clips, "labels": labels}
    amp = setting.precision == "bf16"

    def loss_of() -> torch.Tensor:
        if setting.model == "vificlip":
            video = model(batch).float()
            return F.cross_entropy(100.0 * video @ F.normalize(classes, dim=-1).T, labels)
        output, aux = model(batch)  # [B, 1 + N, E]: the video embedding, then the prompt context
        video, context = output[:, 0], output[:, 1:]
        per_clip = model.prompts(classes, context)  # [B, C, E]: class text conditioned on each clip
        cosine = torch.einsum("be,bce->bc", F.normalize(video.float(), dim=-1), F.normalize(per_clip.float(), dim=-1))
        return F.cross_entropy(100.0 * cosine, labels) + aux["align"].float()

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = loss_of()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


# ------------------------------------------------------------------------------------- memory


def measure(setting: Setting, name: str, device: torch.device, batch_size: int, image_size: int,
            steps: int) -> dict[str, float]:
    """clips/s (wall and CPU) and the peak memory the setting adds, in this process.

    Settings run one after another here (not one process each: importing torch and open_clip
    costs more than a CPU-sized step on a busy machine); each model is freed, and on CPU its
    pages handed back to the OS, before the next is built, so one setting's memory neither
    counts against the next nor hides what the next allocates.
    """
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        release_freed_memory()
        reset_peak_rss()
        before = rss_mb()
    step = build_step(setting, name, device, batch_size, image_size)
    step()  # warm-up: kernels chosen, optimizer moments allocated
    if device.type == "cuda":
        torch.cuda.synchronize()
    start, cpu_start = time.perf_counter(), time.process_time()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    if device.type == "cuda":
        peak = (torch.cuda.max_memory_allocated() - before) / 2**20
    else:
        peak = peak_rss_mb() - before
    del step
    return {"clips_per_s": batch_size * steps / wall, "clips_per_cpu_s": batch_size * steps / max(cpu, 1e-9),
            "peak_mb": peak}


def table(results: dict[Setting, dict[str, float]], loaders: dict[int, float], device: torch.device) -> list[str]:
    """The printed rows: one per setting, then one loader row per frame count."""
    on_cpu = device.type == "cpu"
    memory = "peak RSS+ MiB" if on_cpu else "peak GPU MiB"
    header = f"{'setting':36s} {'clips/s':>9s} {'x base':>7s}"
    header += f" {'clips/CPU-s':>11s}" if on_cpu else ""
    header += f" {memory:>14s} {'x base':>7s}"
    lines = [header]
    for setting, r in results.items():
        base = results[Setting("vificlip", setting.frames, "fp32", False)]
        line = f"{setting.label:36s} {r['clips_per_s']:9.3f} {r['clips_per_s'] / base['clips_per_s']:6.2f}x"
        line += f" {r['clips_per_cpu_s']:11.3f}" if on_cpu else ""
        line += f" {r['peak_mb']:14.0f} {r['peak_mb'] / max(base['peak_mb'], 1e-9):6.2f}x"
        lines.append(line)
    for frames, rate in loaders.items():
        base = results[Setting("vificlip", frames, "fp32", False)]
        label = f"{'loader':9s} {frames:2d} frames uint8 -> {device.type}"
        lines.append(f"{label:36s} {rate:9.3f} {rate / base['clips_per_s']:6.2f}x")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--frames", type=int, nargs="+", default=[8, 16])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per setting (after one warm-up)")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--width", type=int, default=768, help="image-tower width (768: ViT-B/16)")
    parser.add_argument("--layers", type=int, default=12, help="image-tower layers (12: ViT-B/16)")
    parser.add_argument("--image-size", type=int, default=224, help="frame size in pixels (patch 16)")
    parser.add_argument("--files", type=int, default=4, help="generated videos the loader reads")
    parser.add_argument("--video-seconds", type=float, default=10.0, help="length of each generated video")
    parser.add_argument("--loader-batches", type=int, default=6, help="loader batches timed")
    parser.add_argument("--workers", type=int, default=2, help="loader workers")
    parser.add_argument("--no-loader", action="store_true", help="skip the loader rows")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible")
    if "vificlip" not in args.models:
        raise SystemExit("--models must include vificlip: it is the baseline of the ratios")
    settings = settings_for(args.models, args.frames, device)
    print(f"video model training step: width {args.width}, {args.layers} layers, {args.image_size} px, batch "
          f"{args.batch_size}, {args.steps} timed steps, device {device}, torch threads {torch.get_num_threads()}",
          flush=True)
    results: dict[Setting, dict[str, float]] = {}
    loaders: dict[int, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        name = backbone_name(args.width, args.layers, args.image_size, Path(tmp))
        for index, setting in enumerate(settings, 1):
            print(f"[{index}/{len(settings)}] {setting.label} ...", flush=True)
            results[setting] = measure(setting, name, device, args.batch_size, args.image_size, args.steps)
            r = results[setting]
            print(f"    {r['clips_per_s']:.3f} clips/s, {r['peak_mb']:.0f} MiB", flush=True)
        if not args.no_loader:
            from bench_video import loader_clips_per_s, write_file  # the same files and loader measurement

            print(f"writing {args.files} test videos (320x240, {args.video_seconds:g} s) ...", flush=True)
            paths = [write_file(Path(tmp) / f"clip_{i}.mp4", 320, 240, seconds=args.video_seconds, seed=i)
                     for i in range(args.files)]
            for frames in args.frames:
                print(f"loader, {frames} frames, {args.workers} workers ...", flush=True)
                loaders[frames] = loader_clips_per_s(paths, device, args.loader_batches, args.workers, frames,
                                                     args.batch_size)
                print(f"    {loaders[frames]:.2f} clips/s", flush=True)
    print()
    print("\n".join(table(results, loaders, device)))
    print("x base: against ViFi-CLIP fp32 ckpt off at the same frame count (loader: its clips/s over that step's)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
