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


def _overrides(tmp_path: Path) -> list[str]:
    return [TEST_RECIPES, "modality=toy", "data=toy", "debug=default", "eval=toy", "trainer.max_steps=2",
            f"output_dir={tmp_path / 'run'}", f"anchors.cache_dir={tmp_path / 'anchors'}"]


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


def _run_anchors(tmp_path: Path, seed: str) -> dict[str, int]:
    proc = subprocess.run([sys.executable, "-c", ANCHORS_MAIN, *_overrides(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONHASHSEED": seed, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("anchors computed: "))
    # "anchors computed: {'text': 12, 'image': 4} (cache hits: ...)"
    counts = line.split("anchors computed: ", 1)[1].split(" (cache hits", 1)[0]
    return json.loads(counts.replace("'", '"'))


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
