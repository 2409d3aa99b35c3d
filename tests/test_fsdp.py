"""``trainer.parallel=fsdp2`` (`omniclip.parallel`): the frozen trunk sharded over 2 gloo ranks.

The two-process runs (module fixture, shared by the slow tests) are a DDP run and an FSDP2 run
of the same toy recipe; the FSDP2 run reads the image anchors the DDP run cached (under fsdp2
they cannot be computed during training). Both strategies all-reduce the trainable gradients
with DDP; FSDP2 only changes where the frozen block weights live, gathered bit for bit before
each use. The runs still differ by ~1e-7 (the block matmuls read the gathered weights from
another buffer), so they are compared with tests/test_ddp.py's tolerances, which sit far below
the training update. An elastic restart must end *exactly* where the uninterrupted FSDP2 run
does: resume is exact.
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module

from omniclip import parallel
from omniclip.errors import ConfigError
from omniclip.resume_rules import ResumeCheck
from omniclip.state import latest_checkpoint, load_checkpoint
from omniclip.trainer import TrainerConfig
from tests.test_ddp import ROOT, assert_same_training, child_env, initial_weights, read_run, run_args

STEPS, CHECKPOINT_EVERY, DIE_AT = 4, 2, 3  # the restart resumes from step 2 and redoes step 3


def torchrun(out: Path, *overrides: str, flags: tuple[str, ...] = (), **env: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", *flags,
           "tests/ddp_train.py", *run_args(out, 4, STEPS, CHECKPOINT_EVERY), "eval=toy", *overrides]
    return subprocess.run(cmd, cwd=ROOT, env=child_env(DDP_TRAIN_REPORT="1", **env), capture_output=True,
                          text=True, timeout=420)


def with_anchor_cache(source: Path, out: Path) -> Path:
    shutil.copytree(source / "anchors", out / "anchors")
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("fsdp")
    ddp = torchrun(root / "ddp")
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    fsdp = torchrun(with_anchor_cache(root / "ddp", root / "fsdp2"), "trainer.parallel=fsdp2")
    assert fsdp.returncode == 0, fsdp.stderr[-3000:]
    return root


def reports(out: Path) -> list[dict]:
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]


def records(out: Path) -> list[dict]:
    """metrics.jsonl without the throughput (a timing)."""
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "samples_per_s"} for line in lines]


def evaluations(out: Path) -> list[dict]:
    return [record for record in records(out) if any(k.startswith("eval/") for k in record)]


@pytest.mark.slow
def test_fsdp2_trains_like_ddp(runs, tmp_path):
    ddp_losses, ddp_weights = read_run(runs / "ddp")
    losses, weights = read_run(runs / "fsdp2")
    assert len(losses) == STEPS
    assert_same_training(losses, weights, ddp_losses, ddp_weights, initial_weights(tmp_path / "init"))
    # eval=toy every 2 steps: under fsdp2 every rank evaluates (rank 0 alone would wait on the blocks' gathers)
    assert [e["step"] for e in evaluations(runs / "fsdp2")] == [2, 4]
    assert evaluations(runs / "fsdp2") == evaluations(runs / "ddp")


@pytest.mark.slow
def test_fsdp2_stores_half_the_frozen_trunk_per_rank(runs):
    full = reports(runs / "ddp")[0]["frozen_block_full_bytes"]
    assert full > 0
    assert [r["frozen_block_bytes"] for r in reports(runs / "ddp")] == [full, full]
    # The toy trunk's block tensors all have an even first dimension: an exact half each.
    assert [r["frozen_block_bytes"] for r in reports(runs / "fsdp2")] == [full // 2, full // 2]


@pytest.mark.slow
def test_fsdp2_checkpoint_loads_in_one_process(runs, tmp_path):
    """The checkpoint holds whole tensors (no shard, no DTensor): one process loads it exactly."""
    weights, _, _ = load_checkpoint(latest_checkpoint(runs / "fsdp2"))
    _, exported = read_run(runs / "fsdp2")
    model_weights = {k.removeprefix("model."): v for k, v in weights.items() if k.startswith("model.")}
    assert set(model_weights) == set(exported)
    from omniclip import train

    with initialize_config_module("omniclip.recipes", version_base="1.3"):
        cfg = compose("train", [f"hydra.searchpath=[file://{ROOT / 'tests' / 'recipes'}]", "modality=toy",
                                "data=toy", "debug=default", f"output_dir={tmp_path}", "trainer.parallel=fsdp2",
                                f"anchors.cache_dir={tmp_path}/anchors"])
    _, model, _ = train.build_trainer(cfg)
    model.load_trainable_state_dict(model_weights)  # every key and shape must match the one-process model
    loaded = model.trainable_state_dict()
    for key, value in exported.items():
        assert type(loaded[key]) is torch.Tensor and torch.equal(loaded[key], value), key


@pytest.mark.slow
def test_elastic_restart_resumes_from_the_last_checkpoint(runs, tmp_path):
    """torchrun --max-restarts 1: rank 1 dies before step 4 on the first attempt; the restarted
    workers resume from the step-2 checkpoint and end exactly where the uninterrupted run ends."""
    out = with_anchor_cache(runs / "ddp", tmp_path / "elastic")
    # torchrun's default shared rendezvous store would hang the restart (omniclip.distributed._check_restart_store)
    proc = torchrun(out, "trainer.parallel=fsdp2", flags=("--max-restarts=1",), DDP_TRAIN_DIE_AT_STEP=str(DIE_AT),
                    TORCH_DISABLE_SHARE_RDZV_TCP_STORE="1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"rank 1 dies before step {DIE_AT + 1}" in proc.stderr  # the fault did happen
    # A fresh start would have appended steps 1.. again; a resume truncates the log to step 2 first.
    assert [r["step"] for r in records(out) if "loss" in r] == list(range(1, STEPS + 1))
    assert records(out) == records(runs / "fsdp2")  # every loss, gradient norm and evaluation
    _, weights = read_run(out)
    _, ref_weights = read_run(runs / "fsdp2")
    for key, value in ref_weights.items():
        assert torch.equal(weights[key], value), key


def test_parallel_is_free_on_resume():
    """Checkpoints hold whole trainable tensors under either strategy: a run may resume under the other."""
    saved, current = TrainerConfig(parallel="ddp").__dict__, TrainerConfig(parallel="fsdp2").__dict__
    check = ResumeCheck(saved, current, {}, {})
    assert check.refusal() is None and check.free == {"parallel": ("ddp", "fsdp2")}
    older = {k: v for k, v in saved.items() if k != "parallel"}  # written before the key existed
    assert ResumeCheck(older, TrainerConfig().__dict__, {}, {}).free == {}


def test_unknown_strategy_names_the_key():
    with pytest.raises(ConfigError, match=r"trainer\.parallel.*`zero3` is not one of \('ddp', 'fsdp2'\)"):
        TrainerConfig(parallel="zero3")


def test_one_process_ignores_the_strategy():
    step = torch.nn.Linear(2, 2)
    assert parallel.wrap(step, step, "fsdp2", torch.device("cpu"), world_size=1) is None


def test_fsdp2_needs_frozen_trunk_blocks():
    with pytest.raises(ConfigError, match=r"trainer\.parallel.*Linear has none; use trainer\.parallel=ddp"):
        parallel.frozen_trunk_blocks(torch.nn.Linear(2, 2))
    model = torch.nn.Module()
    model.trunk = torch.nn.Module()
    model.trunk.blocks = torch.nn.ModuleList([torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)])
    with pytest.raises(ConfigError, match=r"all 2 blocks train"):
        parallel.frozen_trunk_blocks(model)
    model.trunk.blocks[0].requires_grad_(False)
    assert parallel.frozen_trunk_blocks(model) == [model.trunk.blocks[0]]


def test_image_tower_refused_under_fsdp2():
    class Backbone:
        def __init__(self):
            self.fingerprinted = []

        def fingerprint(self, tower):
            self.fingerprinted.append(tower)

        def encode_image(self, images):
            return images

    backbone = Backbone()
    parallel.refuse_image_tower(backbone)
    assert backbone.fingerprinted == ["image"]  # the cache key is taken from the whole weights, first
    with pytest.raises(ConfigError, match=r"trainer\.parallel.*fill the anchor cache first with `omniclip-anchors"):
        backbone.encode_image(torch.zeros(1, 3, 4, 4))
