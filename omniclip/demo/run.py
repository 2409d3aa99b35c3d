"""``omniclip-demo``: zero-shot 3D classification through a frozen CLIP ViT, end to end, offline.

1. pretrain a tiny CLIP on depth renderings + captions of every class of a synthetic world
   (cached in the output folder);
2. train a Point-BERT + Perceiver lens into its frozen ViT on the seen classes only, with text
   (caption) and image (own rendering) anchors, through the framework's `Trainer`;
3. classify clouds of all classes zero-shot against class-name prompts, seen and held-out classes
   reported apart, beside chance and two controls: the same lens into a random frozen ViT, and
   the same lens pooled straight to the embedding with no ViT;
4. write ``results.json``, ``confusion.png`` and print the table.

``--quick`` is a smoke test of the whole pipeline (tiny sizes, numbers mean nothing);
``--study`` repeats step 2-3 over several held-out splits and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from omniclip.backbone import ClipBackbone
from omniclip.cli import quiet_dependencies
from omniclip.demo.clip_pretrain import ClipPretrainConfig, pretrain_clip
from omniclip.demo import experiment
from omniclip.demo.dataset import make_shape_set, shape_draw
from omniclip.demo.experiment import (
    LensTrainConfig,
    embed_clouds,
    markdown_table,
    plot_confusion,
    results_record,
)
from omniclip.demo.lens import VARIANTS, LensConfig, build_lens
from omniclip.demo.world import PROMPT_TEMPLATES, WorldConfig
from omniclip.evaluation import EvalResult, format_results_table

#: Held-out class triples of the study (indices into the world's classes); the first is the default
#: run's. Together they hold out nine of the ten classes once each.
SPLITS: tuple[tuple[int, ...], ...] = ((4, 6, 9), (1, 3, 8), (0, 2, 7))


@dataclass(frozen=True)
class DemoConfig:
    """Everything one demo run depends on (saved in ``results.json``)."""

    world: WorldConfig = field(default_factory=WorldConfig)
    clip: ClipPretrainConfig = field(default_factory=ClipPretrainConfig)
    lens: LensConfig = field(default_factory=LensConfig)
    train: LensTrainConfig = field(default_factory=LensTrainConfig)
    train_per_class: int = 150
    test_per_class: int = 60
    splits: tuple[tuple[int, ...], ...] = SPLITS[:1]
    variants: tuple[str, ...] = VARIANTS
    seed: int = 0


def preset(name: str, seed: int = 0) -> DemoConfig:
    """``quick`` (smoke test), ``default`` (one split, < 10 min on 2 cores) or ``study`` (all `SPLITS`)."""
    base = DemoConfig(seed=seed, clip=ClipPretrainConfig(seed=seed))
    quick = replace(
        base,
        world=replace(base.world, num_points=64, render_points=1024),
        clip=replace(base.clip, steps=4, batch_size=16, warmup_steps=1, eval_per_class=2),
        lens=replace(base.lens, num_groups=8, group_size=8),
        train=replace(base.train, steps=2, batch_size=8, warmup_steps=1),
        train_per_class=2,
        test_per_class=2,
    )
    return experiment.pick_preset(name, base, quick, replace(base, splits=SPLITS))


def run_split(cfg: DemoConfig, backbone: ClipBackbone, held_out: Sequence[int], out_dir: Path,
              report: Callable[[str], None]) -> dict[str, Any]:
    """Train every variant on the seen classes of one split and score all of them on all classes."""
    classes = cfg.world.classes
    seen = [c for c in range(len(classes)) if c not in held_out]
    split_name = "-".join(classes[c] for c in held_out)
    size = cfg.clip.image_size
    train = make_shape_set(cfg.world, seen, cfg.train_per_class, cfg.seed * 1000 + 11, f"train-{split_name}", size)
    test = make_shape_set(cfg.world, range(len(classes)), cfg.test_per_class, cfg.seed * 1000 + 12, "test", size)
    return experiment.run_split(
        backbone, classes, PROMPT_TEMPLATES, held_out, split_name, train, test, cfg.variants,
        lambda variant: build_lens(variant, backbone, cfg.lens, cfg.seed), embed_clouds, cfg.train, out_dir,
        cfg.seed, report,
    )


def results_table(results: dict[str, Any]) -> str:
    """Per split and variant, through the framework's `format_results_table` (percent)."""
    rows = []
    for split in results["splits"]:
        named = {**split["variants"], "image_tower": split["image_tower"]}
        for variant, record in named.items():
            cal, raw = record["calibrated"], record["raw"]
            metrics = {"all": cal["all"], "seen": cal["seen"], "held_out": cal["held_out"],
                       "held_out_raw": raw["held_out"], "held_out_3way": cal["held_out_among_held_out"]}
            rows.append(EvalResult("zero_shot_classification", "held out: " + ",".join(split["held_out"]),
                                   "pointcloud", variant, None, {k: 100 * v for k, v in metrics.items()},
                                   sum(map(sum, raw["confusion"]))))
    return format_results_table(rows)


def pretrain_world_clip(world: WorldConfig, cfg: ClipPretrainConfig, out_dir: str | Path,
                        report: Callable[[str], None] = print) -> tuple[ClipBackbone, dict]:
    """`pretrain_clip` on depth renderings + captions of every class of ``world`` (cached as ``clip-<hash>``)."""
    return pretrain_clip("clip", world.classes, PROMPT_TEMPLATES, shape_draw(world, cfg.image_size),
                         {"world": asdict(world)}, cfg, out_dir, report)


def run(cfg: DemoConfig, out_dir: str | Path, report: Callable[[str], None] = print) -> dict[str, Any]:
    """The whole demo; returns what it writes to ``results.json``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    start, cpu_start = time.perf_counter(), time.process_time()
    backbone, clip_info = pretrain_world_clip(cfg.world, cfg.clip, out_dir, report)
    clip_seconds = time.perf_counter() - start
    splits = []
    for held_out in cfg.splits:
        splits.append(run_split(cfg, backbone, held_out, out_dir, report))
    results = results_record(cfg.world.classes, splits, cfg.variants, clip_info, {
        "clip": round(clip_seconds, 1), "total": round(time.perf_counter() - start, 1),
        "cpu": round(time.process_time() - cpu_start, 1)}, asdict(cfg))
    (out_dir / "results.json").write_text(json.dumps(results, indent=2))
    plot_confusion(splits[0], cfg.world.classes, cfg.variants, out_dir / "confusion.png", "3D")
    return results


# Measured on a shared 2-core machine (load average ~4): lens training ran at 3 s/step with two
# threads and 0.13 s/step with one; the tiny models' matmuls gain little from a second thread.
THREADS_HELP = "torch CPU threads (default 1: the tiny models gain little from more, and lose a lot on a busy machine)"


def main(argv: Sequence[str] | None = None) -> int:
    modality = argparse.ArgumentParser(add_help=False)
    modality.add_argument("--modality", choices=("pointcloud", "audio", "video", "describe"), default="pointcloud",
                          help="pointcloud (default): 3D lens into a frozen ViT; audio: the same for sounds; "
                               "video: moving shapes, mean pooling against ILA; describe: point clouds described "
                               "in words by a tiny InstructBLIP (each has its own --help)")
    modality.add_argument("--describe", action="store_const", const="describe", dest="modality",
                          help="the describing demo: the same as --modality describe")
    modality.add_argument("--verbose", action="store_true",
                          help="also show dependencies' log lines (open_clip's model-building messages)")
    chosen, rest = modality.parse_known_args(argv)
    quiet_dependencies(chosen.verbose)  # the tiny CLIP is random by design: no "no pretrained weights" warning
    if chosen.modality == "audio":
        from omniclip.demo import audio_demo

        return audio_demo.main(rest)
    if chosen.modality == "video":
        from omniclip.demo import video_demo

        return video_demo.main(rest)
    if chosen.modality == "describe":
        from omniclip.demo import describe_demo

        return describe_demo.main(rest)
    parser = argparse.ArgumentParser(prog="omniclip-demo", description=__doc__.split("\n\n")[0].replace("``", ""),
                                     parents=[modality])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="smoke test of the pipeline (< 1 min; not evidence)")
    mode.add_argument("--study", action="store_true", help=f"{len(SPLITS)} held-out splits, markdown table")
    parser.add_argument("--out", default=None, help="output folder (the tiny CLIP is cached here; default "
                        "omniclip-demo-out, or omniclip-demo-quick with --quick)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", choices=["cpu"], help="the demo runs on CPU")
    parser.add_argument("--threads", type=int, default=1, help=THREADS_HELP)
    args = parser.parse_args(rest)
    torch.set_num_threads(args.threads)
    cfg = preset("quick" if args.quick else "study" if args.study else "default", args.seed)
    out = experiment.output_folder(args.out, "omniclip-demo", args.quick)
    if args.quick:
        print(experiment.SMOKE_TEST)
    results = run(cfg, out)
    chance = results["chance"]
    print(f"\nchance: {100 * chance['all']:.0f}% over all classes, "
          f"{100 * chance['held_out_among_held_out']:.0f}% among the held-out classes (3-way)\n")
    print(results_table(results))
    print()
    print(markdown_table(results, "renderings"))
    print(f"\nwrote {out / 'results.json'} and {out / 'confusion.png'} in {results['seconds']['total']:.0f} s"
          + (f"  ({experiment.SMOKE_TEST})" if args.quick else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
