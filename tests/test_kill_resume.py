"""A real ``omniclip-train`` process killed with SIGKILL (or stopped with SIGINT) resumes exactly.

The killed runs go through a small launcher that calls the real console entry
(`omniclip.train.main`) after slowing the run down so that the kill lands where the test wants
it: between checkpoints, in the middle of a checkpoint write, in the middle of pruning an old
checkpoint. The math is untouched. Every resumed run is the plain command again, and must end
with the same per-step losses and the same exported lens as a run that was never interrupted.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from tests.modalities.pointcloud.test_datasets import make_ulip_shapenet

pytestmark = pytest.mark.slow

LAUNCHER = r'''
import os, sys, time, shutil
from pathlib import Path
import omniclip.state as state
import omniclip.trainer as trainer_module

marker = Path(os.environ["KILLTEST_MARKER"])
delay = float(os.environ.get("KILLTEST_STEP_DELAY", "0"))
hang_save = int(os.environ.get("KILLTEST_HANG_SAVE", "0"))
hang_prune = os.environ.get("KILLTEST_HANG_PRUNE") == "1"

original_step = trainer_module.Trainer._train_step
def slow_step(self, batches):
    out = original_step(self, batches)
    time.sleep(delay)
    return out
trainer_module.Trainer._train_step = slow_step

calls = {"save": 0}
original_save_file = state.save_file
def save_file(tensors, path, metadata=None):
    original_save_file(tensors, path, metadata=metadata)
    calls["save"] += 1
    if calls["save"] == hang_save:  # the weights are on disk, the checkpoint is not complete
        marker.write_text(path)
        time.sleep(600)
state.save_file = save_file

original_rmtree = shutil.rmtree
def rmtree(path, *args, **kwargs):
    if hang_prune and Path(path).name.startswith(".tmp-del-"):
        for child in sorted(Path(path).iterdir())[:1]:
            child.unlink()  # half deleted
        marker.write_text(str(path))
        time.sleep(600)
    return original_rmtree(path, *args, **kwargs)
state.shutil.rmtree = rmtree

from omniclip.train import main
sys.argv = ["omniclip-train", *sys.argv[1:]]
main()
'''

MAX_STEPS = 8


def recipe(tmp_path: Path, out: Path, workers: int = 0, keep_last: int = 3) -> list[str]:
    return [
        "experiment=pointcloud/vitlens_l_shapenet", "debug=default", f"data.train.root={tmp_path / 'shapenet-55'}",
        "data.train.num_points=48", "data.train.min_points=8", "modality.tokenizer.num_groups=16",
        "modality.tokenizer.group_size=8", "lens.attn_dropout=0.1", "lens.ff_dropout=0.1", "eval=none",
        f"trainer.max_steps={MAX_STEPS}", "trainer.checkpoint_every=2", f"trainer.keep_last={keep_last}",
        f"trainer.num_workers={workers}", f"anchors.cache_dir={tmp_path / 'anchors'}", f"output_dir={out}",
    ]


def env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}


def train(args: list[str]) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "omniclip.train", *args], env=env(), capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def launch(tmp_path: Path, args: list[str], **hooks: str) -> tuple[subprocess.Popen, Path]:
    launcher = tmp_path / "launcher.py"
    launcher.write_text(LAUNCHER)
    marker = tmp_path / f"marker-{time.monotonic_ns()}"
    extra = {"KILLTEST_MARKER": str(marker), "KILLTEST_STEP_DELAY": "0.4", **hooks}
    process = subprocess.Popen([sys.executable, str(launcher), *args], env={**env(), **extra},
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return process, marker


def wait_for(condition, process: subprocess.Popen, what: str, timeout: float = 240.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            raise AssertionError(f"the run ended (rc {process.returncode}) before {what}: {process.stderr.read()[-3000:]}")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def logged_steps(out: Path) -> int:
    path = out / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.is_file() else 0


def losses(out: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())]


def lens_weights(out: Path) -> dict:
    (weights_file,) = (out / "lens").glob("*.safetensors")
    return load_file(str(weights_file))


def kill(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    process.stdout.close()
    process.stderr.close()


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("kill")
    make_ulip_shapenet(tmp_path / "shapenet-55")
    out = tmp_path / "full"
    train(recipe(tmp_path, out))
    return tmp_path, losses(out), lens_weights(out)


def assert_same_run(out: Path, reference) -> None:
    _, expected_losses, expected_lens = reference
    got = losses(out)
    assert [s for s, _ in got] == list(range(1, MAX_STEPS + 1))  # each step once, none repeated
    assert [loss for _, loss in got] == pytest.approx([loss for _, loss in expected_losses], abs=1e-6)
    weights = lens_weights(out)
    assert set(weights) == set(expected_lens)
    for key, value in weights.items():
        assert (value - expected_lens[key]).abs().max() <= 1e-6, key


@pytest.mark.parametrize("after_step, workers", [(3, 2), (6, 0)])
def test_sigkill_between_checkpoints(uninterrupted, after_step, workers):
    tmp_path = uninterrupted[0]
    out = tmp_path / f"between-{after_step}"
    process, _ = launch(tmp_path, recipe(tmp_path, out, workers=workers))
    wait_for(lambda: logged_steps(out) >= after_step, process, f"step {after_step}")
    kill(process)
    train(recipe(tmp_path, out, workers=workers))
    assert_same_run(out, uninterrupted)


def test_sigkill_during_a_checkpoint_write_never_picks_up_the_partial_checkpoint(uninterrupted):
    tmp_path = uninterrupted[0]
    out = tmp_path / "during-write"
    process, marker = launch(tmp_path, recipe(tmp_path, out), KILLTEST_HANG_SAVE="2")  # the step-4 checkpoint
    wait_for(marker.exists, process, "the second checkpoint write")
    kill(process)
    checkpoints = out / "checkpoints"
    assert (checkpoints / "latest").read_text().strip() == "step_00000002"
    assert not (checkpoints / "step_00000004").exists()
    assert [p.name for p in checkpoints.iterdir() if p.name.startswith(".tmp-")]  # the partial write
    done = train(recipe(tmp_path, out))
    output = done.stdout + done.stderr  # hydra's log handler writes to stdout
    assert "resumed from" in output and "step_00000002 at step 2" in output
    assert not [p.name for p in checkpoints.iterdir() if p.name.startswith(".tmp-")]
    assert_same_run(out, uninterrupted)


def test_sigkill_during_pruning_leaves_no_half_deleted_checkpoint(uninterrupted):
    tmp_path = uninterrupted[0]
    out = tmp_path / "during-prune"
    process, marker = launch(tmp_path, recipe(tmp_path, out, keep_last=1), KILLTEST_HANG_PRUNE="1")
    wait_for(marker.exists, process, "pruning of the step-2 checkpoint")
    kill(process)
    steps = sorted(p.name for p in (out / "checkpoints").glob("step_*"))
    assert steps == ["step_00000004"]  # complete; the one being pruned is no longer a step_* folder
    train(recipe(tmp_path, out, keep_last=1))
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["latest", "step_00000008"]
    assert_same_run(out, uninterrupted)


def test_sigint_saves_a_checkpoint_says_how_to_resume_and_exits_130(uninterrupted):
    tmp_path = uninterrupted[0]
    out = tmp_path / "sigint"
    process, _ = launch(tmp_path, recipe(tmp_path, out, workers=2))
    wait_for(lambda: logged_steps(out) >= 3, process, "step 3")
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stdout + stderr
    assert "run the same command again to resume" in stdout + stderr
    latest = (out / "checkpoints" / "latest").read_text().strip()
    stopped_at = int(latest.split("_")[1])
    assert logged_steps(out) == stopped_at >= 3  # the step it was in finished, then it was saved
    train(recipe(tmp_path, out, workers=2))
    assert_same_run(out, uninterrupted)
