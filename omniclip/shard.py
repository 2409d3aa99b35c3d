"""``omniclip-shard``: write a recipe's dataset as WebDataset shards (`omniclip.shards`).

    omniclip-shard experiment=pointcloud/vitlens_l_shapenet --out shards/ulip --samples-per-shard 1000
    omniclip-shard modality=audio data=audioset data.train.mixup=0 --out shards/as --max-size 1GB
    omniclip-shard experiment=... --dataset eval.tasks.esc50.dataset --split test --out shards/esc50

The recipe's dataset (``data.train`` unless ``--dataset`` names another) is built as training
builds it and written item by item: ``<out>/shard-000000.tar``, ... and ``<out>/index.json``.
Bad samples follow ``trainer.bad_samples`` and ``trainer.max_skip_fraction`` and are reported at
the end. Train from the shards with ``data.train.shards=<out>`` (the dataset's options come with
the index; recipe keys override them).
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from typing import Any

from omegaconf import DictConfig, OmegaConf

from omniclip.cli import hydra_entry
from omniclip.errors import ConfigError

log = logging.getLogger(__name__)

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "kib": 2**10, "m": 10**6, "mb": 10**6, "mib": 2**20,
          "g": 10**9, "gb": 10**9, "gib": 2**30, "t": 10**12, "tb": 10**12, "tib": 2**40}


def parse_size(text: str) -> int:
    """``"1GB"`` -> 10**9, ``"512MiB"`` -> 512 * 2**20, ``"1000"`` -> 1000 bytes."""
    match = _SIZE.match(text)
    unit = (match.group(2) or "").lower() if match else None
    if match is None or unit not in _UNITS:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size such as 1000000, 500MB or 1GiB")
    return int(float(match.group(1)) * _UNITS[unit])


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="omniclip-shard", add_help=False,
                                     description="Write a recipe's dataset as WebDataset .tar shards + index.json.")
    parser.add_argument("--out", help="folder for the shards and index.json (empty or new)")
    parser.add_argument("--samples-per-shard", type=int, default=None,
                        help="samples per shard (default 1000 unless --max-size is given)")
    parser.add_argument("--max-size", type=parse_size, default=None,
                        help="close a shard before it passes this size (e.g. 1GB, 512MiB)")
    parser.add_argument("--dataset", default="data.train",
                        help="recipe key of the dataset to write (default data.train; e.g. eval.tasks.NAME.dataset)")
    parser.add_argument("--split", default=None, help="split to build (default: train for data.train, else the "
                                                       "dataset's split or test)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("-h", "--help", action="store_true", help="show this help and the recipe keys, then exit")
    return parser


_ARGS: argparse.Namespace | None = None


def run(cfg: DictConfig) -> Any:
    """Build the recipe's dataset and write it to shards."""
    from omniclip.recipe import DeferredTransform, build_dataset, config_scope, recipe_modality
    from omniclip.shards import write_shards

    args = _ARGS
    assert args is not None
    node = OmegaConf.select(cfg, args.dataset)
    if node is None:
        raise ConfigError(args.dataset, "the recipe has no dataset under this key (--dataset)")
    dataset_cfg = OmegaConf.to_container(node, resolve=True)
    if dataset_cfg.get("shards") is not None:
        raise ConfigError(f"{args.dataset}.shards", "this dataset already reads shards: name the source dataset")
    split = args.split or ("train" if args.dataset == "data.train" else dataset_cfg.get("split", "test"))
    modality = recipe_modality(cfg)
    # Paired images are stored as their files' bytes: the CLIP preprocessing is never applied
    # here, but a dataset lists its image candidates only when it is given a transform.
    dataset = build_dataset(modality, dataset_cfg, split, args.dataset, image_transform=DeferredTransform())
    with config_scope(args.dataset):
        codec = modality.shard_codec(dataset_cfg, split, None)
    trainer = cfg.get("trainer") or {}
    per_shard = args.samples_per_shard if args.samples_per_shard or args.max_size else 1000
    index, skips = write_shards(dataset, codec, args.out, dataset_cfg=dataset_cfg, split=split,
                                samples_per_shard=per_shard, max_size=args.max_size,
                                policy=trainer.get("bad_samples", "stop"),
                                max_skip_fraction=float(trainer.get("max_skip_fraction", 0.1)),
                                seed=int(trainer.get("seed", 0)), progress=not args.no_progress)
    print(f"omniclip-shard: wrote {index.total} {modality.name} samples in {len(index.shards)} shard(s) to "
          f"{args.out} (index.json); {skips.summary()}")
    return index


_entry = hydra_entry("train", run, preflight=None, description=(
    "Write a recipe's dataset (data.train, or --dataset KEY) as WebDataset .tar shards with an index.json; "
    "train from them with data.train.shards=<out>."))


def main(argv: list[str] | None = None) -> None:
    global _ARGS
    parser = _parser()
    args, rest = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    if args.help:
        from omniclip.cli import help_text

        print(parser.format_help())
        print(help_text("omniclip-shard", "train", "Recipe overrides pick the dataset to write:", rest))
        return
    if not args.out:
        parser.error("--out DIR is required")
    if args.samples_per_shard is not None and args.samples_per_shard < 1:
        parser.error("--samples-per-shard must be >= 1")
    _ARGS = args
    # hydra's run folder (config copy, log) goes into the output folder, not the recipe's run folder
    sys.argv = [sys.argv[0], *rest, f"hydra.run.dir={args.out}", "hydra.output_subdir=null"]
    _entry()


if __name__ == "__main__":
    main()
