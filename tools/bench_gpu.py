"""One benchmark for a GPU: the lens training step with its MFU, FPS / kNN, batched fbank, video.

    python tools/bench_gpu.py --device cuda --json bench_gpu.json   # one H100/H200: under 8 min
    python tools/bench_gpu.py --tiny --device cpu                   # tiny shapes, seconds (the test's run)

Every figure comes with its ratio against a baseline measured in the same run. Sections (each
guarded: one that fails or lacks a dependency says why, and the others still run; one that
would start after ``--budget-s`` is skipped, saying so):

lens_step  For each trunk (ViT-B/16 with 256 latents on interpolated positions, ViT-L/14 with
           its own 256), the point-cloud lens model as recipes build it (Point-BERT tokenizer
           on 8192-point clouds, the Perceiver of the trunk's point-cloud defaults, the frozen
           trunk), text + image contrastive loss, AdamW. Rows: fp32 (the baseline), bf16
           autocast, + gradient checkpointing, + anchor cache off (both towers run every
           step), + frozen trunk stored in bf16 (``trainer.frozen_dtype``), + torch.compile
           (``trainer.compile``), + both; a setting this checkout lacks is printed as not
           available. Each row builds its model afresh (same seed), runs warm-up steps, then
           times ``--steps`` steps (wall clock). Peak memory: ``torch.cuda.max_memory_allocated``
           on CUDA, the peak RSS on CPU (reset after warm-up).
           MFU = model FLOPs per sample x samples/s / the device's dense bf16 peak: the FLOPs
           are `omniclip.flops.lens_step_flops` of the built model (forward + backward, no
           recomputation, no anchor towers, see there), the peak is `PEAK_BF16_TFLOPS` for the
           device's name or ``--peak-tflops`` (fp32 rows are rated against the bf16 peak too).
pointcloud FPS 8192 -> 512 points, batch 8, and kNN (k 32) through tools/bench_pointcloud.py's
           functions (every FPS checked index-exact first; Triton on CUDA, fpsample on CPU),
           ratios against the torch loop.
fbank      tools/bench_audio.py's `fbank_times` on the device: torchaudio's Kaldi fbank per
           file against ours per file and batched (5 s clips).
video      tools/bench_video.py: decoded frames/s per backend (1 process and workers) and the
           training loader's clips/s, on generated H.264 files.
"""

from __future__ import annotations

import argparse
import gc
import json
import re
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling benchmarks and benchtime

#: Dense (no sparsity) bf16 tensor-core peaks in TFLOP/s, from NVIDIA's product datasheets, whose
#: tables print the "with sparsity" figure, twice these: H100 SXM 1,979 / PCIe 1,513 / NVL 1,671;
#: H200 SXM 1,979 / NVL 1,671; GH200 1,979; A100 624; L40S 733; L4 242; A10 250. V100 has no
#: bf16 tensor cores: its fp16 tensor peak (SXM2 125, PCIe 112) stands in. Matched in order
#: against ``torch.cuda.get_device_name()``, case-insensitively; the first match wins.
PEAK_BF16_TFLOPS: tuple[tuple[str, float, str], ...] = (
    (r"H100.*PCIe", 756.0, "H100 PCIe"),
    (r"H100.*NVL", 835.0, "H100 NVL"),
    (r"GH200", 989.0, "GH200"),
    (r"H100", 989.0, "H100 SXM"),
    (r"H200.*NVL", 835.0, "H200 NVL"),
    (r"H200", 989.0, "H200 SXM"),
    (r"A100", 312.0, "A100"),
    (r"L40S", 362.0, "L40S"),
    (r"\bL4\b", 121.0, "L4"),
    (r"\bA10\b", 125.0, "A10"),
    (r"V100.*PCIE", 112.0, "V100 PCIe (fp16 tensor peak: no bf16)"),
    (r"V100", 125.0, "V100 SXM2 (fp16 tensor peak: no bf16)"),
)


def peak_tflops(device_name: str) -> tuple[float, str] | None:
    """(dense bf16 TFLOP/s, the table's label) for a device name, or None when it is not in the table."""
    for pattern, tflops, label in PEAK_BF16_TFLOPS:
        if re.search(pattern, device_name, re.IGNORECASE):
            return tflops, label
    return None


def mfu(flops_per_sample: float, samples_per_s: float, peak: float | None) -> float | None:
    """Model FLOP utilisation: achieved model FLOP/s over the peak (TFLOP/s); None without a peak."""
    return None if peak is None else flops_per_sample * samples_per_s / (peak * 1e12)


# ------------------------------------------------------------------------------ sizes
@dataclass(frozen=True)
class LensTrunk:
    """A trunk of the lens-step section: open_clip name, lens overrides, trunk options."""

    name: str
    lens: dict[str, Any]
    trunk: dict[str, Any]


@dataclass(frozen=True)
class Sizes:
    trunks: tuple[LensTrunk, ...]
    tokenizer: dict[str, Any]
    points: int
    batch: int
    warmup: int
    steps: int
    fps_batch: int
    fps_points: int
    fps_centres: int
    knn_k: int
    fbank_clips: int
    fbank_seconds: float
    video_files: int
    video_seconds: float
    video_sizes: dict[str, tuple[int, int]]
    video_workers: int
    video_batches: int
    repeats: int


FULL = Sizes(
    trunks=(LensTrunk("ViT-L-14", {"num_latents": 256}, {}),  # the target's trunk first: the budget cuts last
            LensTrunk("ViT-B-16", {"num_latents": 256}, {"interpolate_positions": True})),
    tokenizer={"name": "pointbert"}, points=8192, batch=128, warmup=2, steps=5,
    fps_batch=8, fps_points=8192, fps_centres=512, knn_k=32, fbank_clips=256, fbank_seconds=5.0,
    video_files=2, video_seconds=10.0, video_sizes={"320x240": (320, 240), "640x360": (640, 360)},
    video_workers=4, video_batches=6, repeats=5,
)
TINY = Sizes(
    trunks=(LensTrunk("omniclip-tiny", {}, {}),),
    tokenizer={"name": "pointbert", "num_groups": 8, "group_size": 4}, points=64, batch=2, warmup=1, steps=1,
    fps_batch=2, fps_points=256, fps_centres=16, knn_k=8, fbank_clips=4, fbank_seconds=1.0,
    video_files=1, video_seconds=1.0, video_sizes={"96x64": (96, 64)}, video_workers=1, video_batches=1, repeats=1,
)


# ------------------------------------------------------------------------------ lens step
@dataclass(frozen=True)
class Setting:
    bf16: bool = False
    ckpt: bool = False
    cache: bool = True
    frozen_bf16: bool = False
    compile: bool = False


#: Lens-step rows: key (``--settings``) -> (label, setting); "fp32" is the baseline and always runs.
SETTINGS: dict[str, tuple[str, Setting]] = {
    "fp32": ("fp32 (baseline)", Setting()),
    "bf16": ("bf16 autocast", Setting(bf16=True)),
    "bf16-ckpt": ("bf16 + grad checkpointing", Setting(bf16=True, ckpt=True)),
    "bf16-nocache": ("bf16, anchor cache off", Setting(bf16=True, cache=False)),
    "bf16-compile": ("bf16 + compile", Setting(bf16=True, compile=True)),
    # Frozen-bf16 rows last: they cast the trunk's image tower, shared by the trunk's rows, in place.
    "bf16-frozen": ("bf16 + frozen trunk bf16", Setting(bf16=True, frozen_bf16=True)),
    "bf16-frozen-compile": ("bf16 + frozen bf16 + compile", Setting(bf16=True, frozen_bf16=True, compile=True)),
}
#: The full run's rows: compile once, on top of the best eager setting (each compile costs minutes).
DEFAULT_SETTINGS = [key for key in SETTINGS if key != "bf16-compile"]
#: Seconds one row / section is expected to take on an H100/H200-class GPU at the full shapes
#: (warm-up included; a compile row pays inductor's compilation). A lens-step row starts only if
#: its estimate plus the later sections' estimates fit in what is left of --budget-s (so the step
#: cannot crowd the other sections out); a section starts unless the budget is spent. --tiny
#: ignores the estimates.
ROW_ESTIMATE_S = {"eager": 15.0, "compile": 120.0}
SECTION_ESTIMATE_S = {"lens_step": 330.0, "pointcloud": 20.0, "fbank": 20.0, "video": 90.0}


def build_lens_step(spec: LensTrunk, sizes: Sizes, device: torch.device, backbone: Any = None) -> tuple[Any, Any, dict]:
    """(backbone, point-cloud lens model in training mode, its resolved config), as a recipe builds
    them; ``backbone`` (frozen, random weights) is loaded unless given. On the meta device nothing
    is allocated: what the FLOP count needs."""
    from omniclip.backbone import load_backbone
    from omniclip.model import build_lens_model

    torch.manual_seed(0)
    backbone = backbone if backbone is not None else load_backbone(spec.name, device=device)
    with torch.device(device):
        model, config = build_lens_model("pointcloud", backbone.trunk(**spec.trunk), sizes.tokenizer, spec.lens,
                                         spec.name)
    return backbone, model.to(device).train(), config


def time_lens_step(spec: LensTrunk, setting: Setting, sizes: Sizes, device: torch.device, compile_backend: str,
                   backbone: Any) -> dict[str, float]:
    """samples/s, ms per step and peak memory (MiB) of ``sizes.steps`` timed training steps of a
    lens model built afresh on ``backbone``."""
    from benchtime import peak_rss_mb, reset_peak_rss

    from omniclip.anchors import AnchorStore
    from omniclip.losses import LogitScale
    from omniclip.objective import ContrastiveObjective

    _, model, _ = build_lens_step(spec, sizes, device, backbone)
    model.set_grad_checkpointing(setting.ckpt)
    objective = ContrastiveObjective(AnchorStore(backbone, enabled=setting.cache), LogitScale(backbone.logit_scale))
    if setting.frozen_bf16 or setting.compile:
        from omniclip.acceleration import cast_frozen, compile_model

        if setting.frozen_bf16:
            cast_frozen(model, "bf16", trainable=(objective,))
        if setting.compile:
            compile_model(model, compile_backend, None, device)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    n, size = sizes.batch, model.trunk.image_size
    gen = torch.Generator().manual_seed(0)
    batch = {
        "inputs": torch.rand(n, sizes.points, 3, generator=gen).to(device),
        "texts": [f"a point cloud of object {i}" for i in range(n)],
        "images": torch.randn(n, 3, size, size, generator=gen).to(device),
        "image_keys": [f"image-{i}" for i in range(n)],
    }

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=setting.bf16):
            loss, _ = objective(model(batch).float(), batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    cuda = device.type == "cuda"
    for _ in range(sizes.warmup + (1 if setting.compile else 0)):  # compile: one more, recompiles settle
        step()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    else:
        reset_peak_rss()
    start = time.perf_counter()
    for _ in range(sizes.steps):
        step()
    if cuda:
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else peak_rss_mb()
    return {"samples_per_s": n * sizes.steps / elapsed, "step_ms": 1e3 * elapsed / sizes.steps, "peak_mb": peak}


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def lens_step_section(sizes: Sizes, device: torch.device, peak: float | None, compile_backend: str,
                      out_of_time: Callable[[float], bool], settings: list[str] | None = None) -> dict[str, Any]:
    """Every trunk's FLOPs per sample, its config and one row per setting in ``settings`` (keys
    of `SETTINGS`, `DEFAULT_SETTINGS` by default; the fp32 baseline always runs), keyed by label.
    ``out_of_time(seconds)``: whether a row expected to take that long no longer fits."""
    from omniclip.backbone import load_backbone
    from omniclip.flops import lens_step_flops

    keys = ["fp32"] + [k for k in SETTINGS if k in (settings or DEFAULT_SETTINGS) and k != "fp32"]
    trunks: dict[str, Any] = {}
    for spec in sizes.trunks:
        _, shapes, config = build_lens_step(spec, sizes, torch.device("meta"))
        flops = lens_step_flops(shapes)
        per_sample = flops.total()
        torch.manual_seed(0)
        backbone = load_backbone(spec.name, device=device)  # frozen: shared by this trunk's rows
        rows: dict[str, dict[str, Any]] = {}
        for key in keys:
            name, setting = SETTINGS[key]
            if out_of_time(ROW_ESTIMATE_S["compile" if setting.compile else "eager"]):
                rows[name] = {"available": False, "reason": "would not fit in the time budget (--budget-s)"}
                continue
            try:
                row = time_lens_step(spec, setting, sizes, device, compile_backend, backbone)
            except torch.cuda.OutOfMemoryError:
                rows[name] = {"error": f"out of memory at batch {sizes.batch}"}
            except Exception as exc:  # one setting failing must not hide the others
                rows[name] = {"error": f"{type(exc).__name__}: {exc}".splitlines()[0]}
            else:
                row["mfu"] = mfu(per_sample, row["samples_per_s"], peak)
                rows[name] = row
            finally:
                if setting.compile:
                    torch._dynamo.reset()
                _free(device)
        del backbone
        _free(device)
        base = rows.get("fp32 (baseline)", {})
        for row in rows.values():
            if "samples_per_s" in row and "samples_per_s" in base:
                row["x_baseline"] = row["samples_per_s"] / base["samples_per_s"]
                row["peak_x_baseline"] = row["peak_mb"] / base["peak_mb"]
        trunks[spec.name] = {"config": {**config, "trunk": spec.trunk, "batch": sizes.batch, "points": sizes.points},
                             "flops_per_sample": flops.as_dict(), "rows": rows}
    return {"trunks": trunks}


def print_lens_step(section: dict[str, Any], device: torch.device, peak: float | None) -> None:
    memory = "peak MiB" if device.type == "cuda" else "peak RSS MiB"
    for name, trunk in section["trunks"].items():
        cfg, fl = trunk["config"], trunk["flops_per_sample"]["step"]
        lens = cfg["lens"]
        print(f"lens step, {name} trunk, {lens['num_latents']} latents x {lens['latent_dim']} (depth {lens['depth']}), "
              f"{cfg['tokenizer'].get('name')} on {cfg['points']} points, batch {cfg['batch']}, {device}")
        print(f"model FLOPs per sample: {fl['total'] / 1e9:.2f} G (forward {fl['forward'] / 1e9:.2f} + backward "
              f"{fl['backward'] / 1e9:.2f}); peak {'n/a' if peak is None else f'{peak:g} TFLOP/s bf16'}")
        print(f"{'setting':<30}{'samples/s':>11}{'x base':>8}{'ms/step':>10}{memory:>14}{'x base':>8}{'MFU':>8}")
        for setting, row in trunk["rows"].items():
            if "samples_per_s" not in row:
                print(f"{setting:<30}  {row.get('reason') or row.get('error')}")
                continue
            ratio = f"{row['x_baseline']:.2f}" if "x_baseline" in row else "-"
            mem_ratio = f"{row['peak_x_baseline']:.2f}" if "peak_x_baseline" in row else "-"
            util = "n/a" if row["mfu"] is None else f"{100 * row['mfu']:.1f}%"
            print(f"{setting:<30}{row['samples_per_s']:>11.2f}{ratio:>8}{row['step_ms']:>10.1f}"
                  f"{row['peak_mb']:>14.0f}{mem_ratio:>8}{util:>8}")
        print()


# ------------------------------------------------------------------------------ other sections
def pointcloud_section(sizes: Sizes, device: torch.device) -> dict[str, Any]:
    from bench_pointcloud import fps_times, knn_times

    from omniclip.modalities.pointcloud.ops import fps_backend

    gen = torch.Generator().manual_seed(0)
    xyz = torch.rand(sizes.fps_batch, sizes.fps_points, 3, generator=gen).to(device)
    start = torch.randint(0, sizes.fps_points, (sizes.fps_batch,), generator=gen)
    fps = fps_times(xyz, sizes.fps_centres, start, sizes.repeats, per_sample=False)
    knn = knn_times(xyz, sizes.fps_centres, start, sizes.knn_k, sizes.repeats)
    loop = fps["torch loop (ours)"]
    return {"shape": {"batch": sizes.fps_batch, "points": sizes.fps_points, "centres": sizes.fps_centres,
                      "k": sizes.knn_k}, "auto_backend": fps_backend(device, batch=sizes.fps_batch),
            "fps_ms": {k: 1e3 * v for k, v in fps.items()}, "fps_x_torch_loop": {k: loop / v for k, v in fps.items()},
            "knn_ms": {k: 1e3 * v for k, v in knn.items()}}


def print_pointcloud(section: dict[str, Any], device: torch.device) -> None:
    s = section["shape"]
    print(f"FPS {s['points']} -> {s['centres']}, batch {s['batch']}, {device}; auto backend {section['auto_backend']}")
    print(f"{'implementation':<32}{'ms':>10}{'x torch loop':>14}")
    for name, ms in section["fps_ms"].items():
        print(f"{name:<32}{ms:>10.2f}{section['fps_x_torch_loop'][name]:>14.2f}")
    ref = section["knn_ms"]["reference (matmul + topk)"]
    print(f"kNN k {s['k']} of the {s['centres']} centres:")
    for name, ms in section["knn_ms"].items():
        print(f"{name:<32}{ms:>10.2f}{ref / ms:>14.2f}x reference")
    print()


def fbank_section(sizes: Sizes, device: torch.device) -> dict[str, Any]:
    from bench_audio import fbank_times

    from omniclip.modalities.audio.features import AudioFrontend

    gen = torch.Generator().manual_seed(0)
    clips = (0.1 * torch.randn(sizes.fbank_clips, int(16000 * sizes.fbank_seconds), generator=gen)).to(device)
    times, diff = fbank_times(clips, AudioFrontend().eval().to(device), sizes.repeats)
    base = times["fbank: torchaudio per file"]
    return {"clips": sizes.fbank_clips, "seconds_per_clip": sizes.fbank_seconds, "max_abs_diff": diff,
            "ms": {k: 1e3 * v for k, v in times.items()}, "clips_per_s": {k: sizes.fbank_clips / v for k, v in times.items()},
            "x_torchaudio_per_file": {k: base / v for k, v in times.items()}}


def print_fbank(section: dict[str, Any], device: torch.device) -> None:
    print(f"fbank, {section['clips']} clips of {section['seconds_per_clip']:g} s -> [512, 128], {device}; "
          f"max |ours - torchaudio| {section['max_abs_diff']:.1e}")
    print(f"{'stage':<30}{'ms':>10}{'clips/s':>11}{'x torchaudio':>14}")
    for name, ms in section["ms"].items():
        print(f"{name:<30}{ms:>10.2f}{section['clips_per_s'][name]:>11.0f}{section['x_torchaudio_per_file'][name]:>14.2f}")
    print()


def video_section(sizes: Sizes, device: torch.device) -> dict[str, Any]:
    from bench_video import decoder_table, loader_clips_per_s, write_file

    from omniclip.modalities.video.io import available_backends

    backends = available_backends()
    with tempfile.TemporaryDirectory() as tmp:
        files = {size: [write_file(Path(tmp) / f"{size}_{i}.mp4", w, h, seconds=sizes.video_seconds, seed=i)
                        for i in range(sizes.video_files)] for size, (w, h) in sizes.video_sizes.items()}
        table = decoder_table(files, backends, sizes.repeats, sizes.video_workers)
        loader = loader_clips_per_s([p for paths in files.values() for p in paths], device, sizes.video_batches,
                                    sizes.video_workers)
    rows = [{"size": size, "frames": frames, "backend": backend, "frames_per_s": one, "frames_per_s_workers": many}
            for (size, frames, backend), (one, many) in table.items()]
    return {"backends": backends, "workers": sizes.video_workers, "decode": rows, "loader_clips_per_s": loader}


def print_video(section: dict[str, Any], device: torch.device) -> None:
    print(f"video decode, frames/s (1 process | {section['workers']} workers), backends {', '.join(section['backends'])}")
    base = {(r["size"], r["frames"]): r["frames_per_s"] for r in section["decode"] if r["backend"] == "pyav"}
    print(f"{'file, frames, backend':<34}{'1 proc':>9}{'workers':>9}{'x pyav':>8}")
    for r in section["decode"]:
        ref = base.get((r["size"], r["frames"]))
        ratio = f"{r['frames_per_s'] / ref:.2f}" if ref else "-"
        print(f"{r['size'] + ', ' + str(r['frames']) + ', ' + r['backend']:<34}{r['frames_per_s']:>9.0f}"
              f"{r['frames_per_s_workers']:>9.0f}{ratio:>8}")
    print(f"loader (8 frames, train transforms, {section['workers']} workers, batch 8, -> {device.type}): "
          f"{section['loader_clips_per_s']:.2f} clips/s")
    print()


SECTIONS: dict[str, tuple[Callable[..., dict[str, Any]], Callable[..., None]]] = {
    "lens_step": (lens_step_section, print_lens_step),
    "pointcloud": (pointcloud_section, print_pointcloud),
    "fbank": (fbank_section, print_fbank),
    "video": (video_section, print_video),
}


# ------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tiny", action="store_true", help="tiny shapes (CPU, seconds): the test's run")
    parser.add_argument("--sections", nargs="+", choices=list(SECTIONS), default=list(SECTIONS))
    parser.add_argument("--trunks", nargs="+", choices=[t.name for t in FULL.trunks],
                        help="lens-step trunks of the full run (default all)")
    parser.add_argument("--batch-size", type=int, help=f"lens-step batch (default {FULL.batch}; tiny {TINY.batch})")
    parser.add_argument("--steps", type=int, help=f"timed lens steps per setting (default {FULL.steps})")
    parser.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=DEFAULT_SETTINGS,
                        help="lens-step rows to run (default: all but bf16-compile; fp32, the baseline, always runs)")
    parser.add_argument("--peak-tflops", type=float,
                        help="dense bf16 peak of the device in TFLOP/s (default: PEAK_BF16_TFLOPS by device name)")
    parser.add_argument("--compile-backend", default=None,
                        help="torch.compile backend of the compile rows (default inductor; tiny: eager)")
    parser.add_argument("--budget-s", type=float, default=480.0,
                        help="skip what would start after this many seconds (default 480: the 8-minute run)")
    parser.add_argument("--json", type=Path, help="write every figure to this JSON file")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda asked for, but CUDA is not available (use --device cpu, with --tiny)")
    sizes = TINY if args.tiny else FULL
    if args.trunks and args.tiny:
        raise SystemExit("--trunks picks full-size trunks; --tiny runs the tiny one only")
    trunks = tuple(t for t in sizes.trunks if t.name in args.trunks) if args.trunks else sizes.trunks
    sizes = replace(sizes, trunks=trunks, batch=args.batch_size or sizes.batch, steps=args.steps or sizes.steps)
    compile_backend = args.compile_backend or ("eager" if args.tiny else "inductor")

    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    found = peak_tflops(device_name) if device.type == "cuda" else None
    if args.peak_tflops is not None:
        peak, peak_source = args.peak_tflops, "--peak-tflops"
    elif found is not None:
        peak, peak_source = found[0], f"table: {found[1]}"
    else:
        peak, peak_source = None, f"`{device_name}` is not in PEAK_BF16_TFLOPS: MFU n/a (give --peak-tflops)"
    print(f"device {device} ({device_name}); peak bf16 {'n/a' if peak is None else f'{peak:g} TFLOP/s'} "
          f"({peak_source}); torch {torch.__version__}; {'tiny' if args.tiny else 'full'} shapes\n", flush=True)

    started = time.perf_counter()
    estimates = dict.fromkeys(SECTIONS, 0.0) if args.tiny else SECTION_ESTIMATE_S
    if not args.tiny:
        print("estimated seconds (H100/H200-class): " + ", ".join(f"{s} {estimates[s]:.0f}" for s in args.sections)
              + f"; budget {args.budget_s:g}\n", flush=True)
    results: dict[str, Any] = {}
    for index, name in enumerate(args.sections):
        run, show = SECTIONS[name]
        later = sum(estimates[s] for s in args.sections[index + 1:])

        def out_of_time(need: float, later: float = later) -> bool:
            """Whether ``need`` more seconds, plus the later sections' estimates, overrun the budget."""
            return time.perf_counter() - started + (0.0 if args.tiny else need + later) > args.budget_s

        if time.perf_counter() - started >= args.budget_s:
            results[name] = {"skipped": f"time budget of {args.budget_s:g} s spent"}
            print(f"{name}: skipped, {results[name]['skipped']}\n")
            continue
        t0 = time.perf_counter()
        try:
            extra = (peak, compile_backend, out_of_time, args.settings) if name == "lens_step" else ()
            section = run(sizes, device, *extra)
        except (Exception, SystemExit) as exc:  # a missing dependency or a failed check: say so, go on
            section = {"error": f"{type(exc).__name__}: {exc}".splitlines()[0]}
            print(f"{name}: {section['error']}\n")
        else:
            show(section, device, *((peak,) if name == "lens_step" else ()))
        section["seconds"] = time.perf_counter() - t0
        results[name] = section
        print(f"[{name}: {section['seconds']:.1f} s]\n", flush=True)
    total = time.perf_counter() - started
    print(f"total {total:.1f} s (budget {args.budget_s:g} s)")
    if args.json:
        report = {"device": str(device), "device_name": device_name, "torch": torch.__version__, "tiny": args.tiny,
                  "peak_bf16_tflops": peak, "peak_source": peak_source, "sizes": asdict(sizes),
                  "compile_backend": compile_backend, "seconds": total, "sections": results}
        args.json.write_text(json.dumps(report, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
