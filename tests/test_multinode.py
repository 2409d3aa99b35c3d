"""Two torchrun invocations as two "nodes" (c10d rendezvous, gloo on CPU) train exactly like one
process on the same global batch (tolerances: tests/test_ddp.py's module docstring)."""

import json
import socket
import subprocess
import sys
import uuid

import pytest
import torch.distributed

from omniclip.distributed import init_distributed
from omniclip.errors import ConfigError
from tests.test_ddp import ROOT, assert_same_training, child_env, initial_weights, launch, read_run, run_args

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_two_nodes_equal_single_process(tmp_path):
    single_losses, single_weights = launch(tmp_path / "single", 1, batch_size=8)
    out = tmp_path / "nodes"
    rendezvous = ["--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d",
                  "--rdzv-endpoint", f"localhost:{free_port()}", "--rdzv-id", uuid.uuid4().hex[:8]]
    cmd = [sys.executable, "-m", "torch.distributed.run", *rendezvous, "tests/ddp_train.py", *run_args(out, 4)]
    nodes = [subprocess.Popen(cmd, cwd=ROOT, env=child_env(DDP_TRAIN_REPORT="1"), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    try:
        outputs = [node.communicate(timeout=300) for node in nodes]
    finally:
        for node in nodes:
            if node.poll() is None:
                node.kill()
    for node, (_, stderr) in zip(nodes, outputs):
        assert node.returncode == 0, stderr[-3000:]
    reports = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    # Two nodes of one process each: both local rank 0, one per node (torchrun's GROUP_RANK).
    assert [(r["rank"], r["local_rank"], r["world_size"]) for r in reports] == [(0, 0, 2), (1, 0, 2)]
    assert sorted(r["group_rank"] for r in reports) == ["0", "1"]
    losses, weights = read_run(out)
    assert len(losses) == 3
    assert_same_training(losses, weights, single_losses, single_weights, initial_weights(tmp_path / "init"))


def test_restart_on_a_shared_rendezvous_store_is_refused(monkeypatch):
    """A torchrun restart whose workers would read the dead attempt's addresses from the agent's
    store fails at once, naming the switch, instead of waiting forever in init_process_group."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(free_port()))

    def init_process_group(*args, **kwargs):  # where the real restart would hang
        raise AssertionError("init_process_group was reached")

    monkeypatch.setattr(torch.distributed, "init_process_group", init_process_group)
    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "True")
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    with pytest.raises(ConfigError, match=r"config `TORCH_DISABLE_SHARE_RDZV_TCP_STORE`: torchrun restarted the "
                                          r"workers \(attempt 2\).*launch torchrun with "
                                          r"TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1"):
        init_distributed("cpu")
