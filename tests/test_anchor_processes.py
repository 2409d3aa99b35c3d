"""The anchor cache across processes: `omniclip-anchors` fills it in one process, training in
another never runs a CLIP tower, and cache keys do not depend on the process (PYTHONHASHSEED).

These tests do not trust the store's own counters: the training process's backbone has towers
that raise when called, so any path that computes an anchor instead of reading it fails.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from hydra import compose, initialize_config_module
from safetensors import safe_open

from omniclip import train
from omniclip.anchors import content_key

ROOT = Path(__file__).parents[1]
TEST_RECIPES = f"hydra.searchpath=[file://{Path(__file__).parent / 'recipes'}]"
ANCHORS_MAIN = (
    "from omniclip import registry; from tests.toy_modality import ToyModality;"
    "registry.register('modality', 'toy', ToyModality);"
    "from omniclip.anchors import main; main()"
)


def _overrides(tmp_path: Path, *extra: str) -> list[str]:
    return [TEST_RECIPES, "modality=toy", "data=toy", "debug=default", "eval=toy", "trainer.max_steps=2",
            f"output_dir={tmp_path / 'run'}", f"anchors.cache_dir={tmp_path / 'anchors'}", *extra]


def _probe_hash(seed: str) -> int:
    out = subprocess.run([sys.executable, "-c", "print(hash('omniclip-probe'))"], capture_output=True, text=True,
                         env={**os.environ, "PYTHONHASHSEED": seed}, check=True, timeout=60)
    return int(out.stdout)


def _hash_seeds(count: int) -> list[str]:
    """PYTHONHASHSEED values whose str hashes differ from this process's and from each other, so
    a key built with `hash()` cannot agree by accident (this process may itself run under a
    fixed PYTHONHASHSEED)."""
    seen = {hash("omniclip-probe")}
    seeds = []
    for candidate in range(1, 20):
        value = _probe_hash(str(candidate))
        if value not in seen:
            seen.add(value)
            seeds.append(str(candidate))
        if len(seeds) == count:
            return seeds
    raise AssertionError("could not find distinct hash seeds")


def _run_anchors(tmp_path: Path, seed: str, *extra: str, nproc: int = 1) -> dict[str, int]:
    """Run `omniclip-anchors` in one process, or under torchrun in ``nproc`` (gloo, CPU)."""
    if nproc == 1:
        cmd = [sys.executable, "-c", ANCHORS_MAIN]
    else:
        tmp_path.mkdir(parents=True, exist_ok=True)
        script = tmp_path / "anchors_main.py"
        script.write_text(ANCHORS_MAIN)
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", str(script)]
    proc = subprocess.run([*cmd, *_overrides(tmp_path, *extra)], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONHASHSEED": seed, "HF_HUB_OFFLINE": "1",
                                            "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("anchors computed: "))
    # "anchors computed: {'text': 12, 'image': 4} (cache hits: ...)"
    counts = line.split("anchors computed: ", 1)[1].split(" (cache hits", 1)[0]
    return json.loads(counts.replace("'", '"'))


def _shard_rows(cache: Path) -> dict[str, dict[str, torch.Tensor]]:
    """{tower/folder: {key: feature row}} over all shards, read back with safetensors."""
    rows: dict[str, dict[str, torch.Tensor]] = {}
    for shard in sorted(cache.glob("*/*/shard-*.safetensors")):
        with safe_open(str(shard), framework="pt") as handle:
            for key, row in zip(handle.get_tensor("keys"), handle.get_tensor("features")):
                rows.setdefault(str(shard.parent.relative_to(cache)), {})[bytes(key.tolist()).hex()] = row
    return rows


def _shard_contents(cache: Path) -> dict[str, list[str]]:
    """{tower/folder: sorted row keys over all shards} as written on disk (each shard's ``keys``
    tensor holds the sha1 digests of its rows)."""
    contents: dict[str, list[str]] = {}
    for shard in sorted(cache.glob("*/*/shard-*.safetensors")):
        with safe_open(str(shard), framework="pt") as handle:
            keys = [bytes(row.tolist()).hex() for row in handle.get_tensor("keys")]
        contents.setdefault(str(shard.parent.relative_to(cache)), []).extend(keys)
    return {folder: sorted(keys) for folder, keys in contents.items()}


class _TowerRan(AssertionError):
    pass


def _disable_towers(backbone: Any) -> Any:
    """Make every way into the text and image towers raise, while the trunk (which shares the
    image tower's blocks but not its forward) keeps working. Fingerprints read only weights."""

    def boom(name: str):
        def raiser(*args: Any, **kwargs: Any) -> None:
            raise _TowerRan(f"{name} ran during training although the anchor cache was filled")
        return raiser

    backbone.encode_text = boom("backbone.encode_text")
    backbone.encode_image = boom("backbone.encode_image")
    model = backbone.model
    model.encode_text = boom("model.encode_text")
    model.encode_image = boom("model.encode_image")
    model.visual.forward = boom("model.visual.forward")  # the image tower as a whole
    model.transformer.forward = boom("model.transformer.forward")  # the text transformer
    model.token_embedding.forward = boom("model.token_embedding.forward")
    return backbone


def test_training_after_another_process_precomputed_anchors_never_runs_a_tower(tmp_path, monkeypatch):
    first, second = _hash_seeds(2)
    counts = _run_anchors(tmp_path, first)
    assert counts == {"text": 4 + 4 * 2, "image": 4}  # 4 captions + 4 classes x 2 templates; 4 images
    on_disk = _shard_contents(tmp_path / "anchors")
    assert sorted(f.split("/")[0] for f in on_disk) == ["image", "text"]

    text_keys = next(keys for folder, keys in on_disk.items() if folder.startswith("text/"))
    assert len(set(text_keys)) == 12

    # A second process under another PYTHONHASHSEED finds everything and adds no tower folder.
    assert _run_anchors(tmp_path, second) == {"text": 0, "image": 0}
    assert _shard_contents(tmp_path / "anchors").keys() == on_disk.keys()

    # Training here (a third hash seed), with towers that raise if anything computes an anchor.
    real = train.build_backbone
    monkeypatch.setattr(train, "build_backbone", lambda cfg, device: _disable_towers(real(cfg, device)))
    with initialize_config_module("omniclip.recipes", version_base="1.3"):
        cfg = compose("train", _overrides(tmp_path))
    trainer, _, _ = train.build_trainer(cfg)
    with pytest.raises(_TowerRan):  # the disabled towers really are the ones anchors would use
        trainer.objective.anchors.backbone.encode_text(["a caption nobody cached"])
    result = trainer.fit()
    assert result.step == 2 and len(result.losses) == 2
    assert all(math.isfinite(loss) for loss in result.losses)
    assert result.evals and "toy" in result.evals[-1]  # the zero-shot classifier came from the cache too
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


def test_content_keys_agree_across_hash_seeds():
    """The key of a caption is the same in processes with different PYTHONHASHSEED."""
    code = ("from omniclip.anchors import content_key;"
            "print(content_key('a red toy'), content_key('img/a.png'))")
    outputs = set()
    for seed in _hash_seeds(2):
        proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                              env={**os.environ, "PYTHONHASHSEED": seed}, timeout=120)
        assert proc.returncode == 0, proc.stderr[-2000:]
        outputs.add(proc.stdout.strip())
    assert outputs == {f"{content_key('a red toy')} {content_key('img/a.png')}"}


@pytest.mark.slow
def test_two_ranks_split_the_keys_and_build_the_cache_one_process_builds(tmp_path):
    """Under torchrun each missing key is embedded by exactly one rank, into that rank's shards,
    and rank 0's merged index covers them all. ``data.train.size=5`` makes both ranks see item 0
    (the sampler pads rank 1's share with it), so one caption and one image are seen twice."""
    seed = _hash_seeds(1)[0]
    one = _run_anchors(tmp_path / "one", seed, "data.train.size=5")
    two = _run_anchors(tmp_path / "two", seed, "data.train.size=5", nproc=2)
    assert one == two == {"text": 4 + 4 * 2, "image": 4}

    single, split = _shard_contents(tmp_path / "one" / "anchors"), _shard_contents(tmp_path / "two" / "anchors")
    assert split == single  # the same keys per tower folder ...
    assert all(len(keys) == len(set(keys)) for keys in split.values())  # ... each written once
    for folder in split:
        names = [p.name for p in (tmp_path / "two" / "anchors" / folder).glob("shard-*.safetensors")]
        assert any("-r0-" in n for n in names) and any("-r1-" in n for n in names), names  # both ranks wrote
        with safe_open(str(tmp_path / "two" / "anchors" / folder / "index.safetensors"), framework="np") as index:
            assert sorted(n for n, _, _ in json.loads(index.metadata()["shards"])) == sorted(names)
            assert len(index.get_tensor("hash")) == len(split[folder])

    ones, twos = _shard_rows(tmp_path / "one" / "anchors"), _shard_rows(tmp_path / "two" / "anchors")
    for folder, rows in ones.items():
        for key, row in rows.items():
            # Equal up to float summation order: a rank embeds its keys in other batches than one process.
            torch.testing.assert_close(twos[folder][key], row, rtol=0, atol=1e-6)
