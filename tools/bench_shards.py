"""Does the sharded reader keep up with the training step? Loader samples/s next to step samples/s.

Generates ULIP-style point-cloud triplets (``--num-points`` xyz per cloud, one 224-px PNG view
per sample, captions), writes them to WebDataset shards with `omniclip.shards.write_shards`,
then measures, in one process and interleaved over ``--repeats`` rounds (best round kept):

  write     samples/s of the shard writer (read the source files, encode the members)
  loader    samples/s of `ShardLoader` over the shards with ``--workers`` worker processes: the
            whole decode / resample / augment / CLIP image preprocessing path, batches collated
  step      samples/s of a point-cloud lens training step (Point-BERT tokenizer, Perceiver lens,
            frozen ``--backbone`` trunk with random weights, contrastive loss against cached
            anchors, AdamW), on one loader batch
  pipeline  samples/s of the two together, as the trainer runs them (loader workers prepare
            batches while the main process steps)

and prints loader / step: at 1 or more the loader keeps up. All figures are wall-clock (the
loader's work happens in other processes); the load average is printed with them.

    python tools/bench_shards.py [--samples 64] [--per-shard 16] [--batch-size 8] [--workers 2]
                                 [--num-points 8192] [--backbone ViT-B-16] [--steps 3] [--repeats 2]
                                 [--num-groups 512] [--group-size 32]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np


def make_triplets(root: Path, count: int, num_points: int, image_size: int = 224) -> Path:
    """``triplets.jsonl`` + ``pc/*.npy`` clouds + ``img/*.png`` views (smooth gradients, so PNGs
    have realistic sizes rather than incompressible noise)."""
    from PIL import Image

    (root / "pc").mkdir(parents=True, exist_ok=True)
    (root / "img").mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 255, image_size, dtype=np.float32)
    lines = []
    for i in range(count):
        np.save(root / "pc" / f"o{i}.npy", rng.normal(size=(num_points, 3)).astype(np.float32))
        picture = np.stack([np.add.outer(ramp, ramp) / 2, np.tile(ramp, (image_size, 1)),
                            np.full((image_size, image_size), 40.0 * (i % 6))], axis=-1)
        Image.fromarray(picture.astype(np.uint8)).save(root / "img" / f"o{i}.png")
        lines.append(json.dumps({"pc": f"pc/o{i}.npy", "images": [f"img/o{i}.png"],
                                 "texts": [f"a point cloud of object {i}"]}))
    (root / "triplets.jsonl").write_text("\n".join(lines) + "\n")
    return root


def run(samples: int = 64, per_shard: int = 16, batch_size: int = 8, workers: int = 2, num_points: int = 8192,
        backbone_name: str = "ViT-B-16", steps: int = 3, repeats: int = 2, num_groups: int = 512,
        group_size: int = 32, folder: Path | None = None) -> dict[str, Any]:
    """Measure write, loader, step and pipeline samples/s (see the module docstring)."""
    import torch

    from omniclip.anchors import AnchorStore
    from omniclip.backbone import load_backbone
    from omniclip.losses import LogitScale
    from omniclip.modality import get_modality
    from omniclip.model import build_lens_model
    from omniclip.objective import ContrastiveObjective
    from omniclip.shards import ShardLoader, build_shard_dataset, write_shards

    torch.manual_seed(0)
    modality = get_modality("pointcloud")
    backbone = load_backbone(backbone_name)
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(folder or tmp)
        root = make_triplets(base / "source", samples, num_points)
        cfg = {"name": "objaverse_triplets", "root": str(root), "num_points": num_points, "min_points": group_size,
               "augment": {}}
        dataset = modality.build_dataset(cfg, "train", image_transform=backbone.preprocess)
        codec = modality.shard_codec(cfg, "train", backbone.preprocess)
        start = time.perf_counter()
        write_shards(dataset, codec, base / "shards", dataset_cfg=cfg, samples_per_shard=per_shard, progress=False)
        write = samples / (time.perf_counter() - start)

        source = build_shard_dataset(modality, {"shards": str(base / "shards"), "shuffle_buffer": per_shard},
                                     "train", image_transform=backbone.preprocess)
        loader = ShardLoader(source, modality.collate, batch_size, seed=0, num_workers=workers)
        trunk = backbone.trunk(interpolate_positions=True)
        tokenizer = {"name": "pointbert", "num_groups": num_groups, "group_size": group_size}
        model, _ = build_lens_model(modality, trunk, tokenizer, {}, backbone.name)
        objective = ContrastiveObjective(AnchorStore(backbone), LogitScale(backbone.logit_scale))
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

        def step(batch: dict[str, Any]) -> None:
            loss, _ = objective(model(batch).float(), batch)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        def epochs() -> Any:
            epoch = 0
            while True:
                loader.set_epoch(epoch)
                yield from loader
                epoch += 1

        def loader_rate() -> float:  # a whole epoch (its worker start-up included, as in training)
            loader.set_epoch(loader.epoch + 1)
            t0, count = time.perf_counter(), 0
            for batch in loader:
                count += len(batch["sample_keys"])
            return count / (time.perf_counter() - t0)

        batch = next(iter(loader))
        step(batch)  # warm-up; caches the anchors of this batch
        rates: dict[str, float] = {}

        def keep(name: str, value: float) -> None:
            rates[name] = max(rates.get(name, 0.0), value)

        stream = epochs()
        for _ in range(repeats):
            keep("loader", loader_rate())
            t0 = time.perf_counter()
            for _ in range(steps):
                step(batch)
            keep("step", batch_size * steps / (time.perf_counter() - t0))
            t0, count = time.perf_counter(), 0
            for _ in range(steps):
                piece = next(stream)
                count += len(piece["sample_keys"])
                step(piece)
            keep("pipeline", count / (time.perf_counter() - t0))
    return {"write": write, **rates, "ratio": rates["loader"] / rates["step"], "samples": samples,
            "batch_size": batch_size, "workers": workers, "num_points": num_points, "backbone": backbone_name}


def format_result(r: dict[str, Any], load_before: tuple[float, ...], load_after: tuple[float, ...]) -> str:
    keeps = "keeps up" if r["ratio"] >= 1 else "does NOT keep up"
    return "\n".join([
        f"shards: {r['samples']} point-cloud triplets ({r['num_points']} points, one 224-px PNG), batch "
        f"{r['batch_size']}, {r['workers']} loader worker(s), {r['backbone']} trunk; load average "
        f"{load_before[0]:.2f} before, {load_after[0]:.2f} after",
        f"  write      {r['write']:10.2f} samples/s",
        f"  loader     {r['loader']:10.2f} samples/s",
        f"  step       {r['step']:10.3f} samples/s",
        f"  pipeline   {r['pipeline']:10.3f} samples/s  (loader and step together)",
        f"  loader / step = {r['ratio']:.2f}: the sharded reader {keeps}",
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--per-shard", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--num-points", type=int, default=8192)
    parser.add_argument("--backbone", default="ViT-B-16", help="open_clip model (random weights) or omniclip-tiny")
    parser.add_argument("--num-groups", type=int, default=512, help="Point-BERT centres")
    parser.add_argument("--group-size", type=int, default=32, help="Point-BERT neighbours per centre")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    load_before = os.getloadavg()
    result = run(args.samples, args.per_shard, args.batch_size, args.workers, args.num_points, args.backbone,
                 args.steps, args.repeats, args.num_groups, args.group_size)
    print(format_result(result, load_before, os.getloadavg()))


if __name__ == "__main__":
    main()
