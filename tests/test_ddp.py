"""torchrun with 2 gloo processes trains exactly like one process on the same global batch."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).parents[1]


def launch(out, nproc, batch_size):
    args = [f"output_dir={out}", f"anchors.cache_dir={out}/anchors", "trainer.max_steps=3",
            f"trainer.batch_size={batch_size}", "trainer.checkpoint_every=3"]
    if nproc == 1:
        cmd = [sys.executable, "tests/ddp_train.py", *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               "tests/ddp_train.py", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    losses = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    return losses, load_file(str(out / "lens" / "lens.safetensors"))


@pytest.mark.slow
def test_two_process_ddp_equals_single_process(tmp_path):
    single_losses, single_weights = launch(tmp_path / "single", 1, batch_size=8)
    ddp_losses, ddp_weights = launch(tmp_path / "ddp", 2, batch_size=4)
    assert len(ddp_losses) == 3
    assert ddp_losses == pytest.approx(single_losses, abs=1e-5)
    assert set(ddp_weights) == set(single_weights)
    for key in single_weights:
        torch.testing.assert_close(ddp_weights[key], single_weights[key], atol=1e-5, rtol=1e-4)
