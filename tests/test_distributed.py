"""Two gloo processes on CPU must reproduce the single-process loss and gradients exactly.

The workers run once per module (spawning costs a few seconds); each test checks one result.
"""

import os
import socket
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from omniclip import distributed as odist
from omniclip.errors import ConfigError
from omniclip.losses import ContrastiveLoss, LogitScale

WORLD = 2
GATHER_SIZES = {"equal": [4, 4], "unequal": [3, 5]}
TEXT_KEYS = ["a", "b", "c", "a", "d", "b", "e", "f"]  # duplicates within and across ranks


class TinyModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Linear(8, 16)
        self.logit_scale = LogitScale(10.0, learnable=True)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return F.normalize(self.encoder(x), dim=-1), self.logit_scale()


def _global_batch() -> dict:
    g = torch.Generator().manual_seed(1)
    return {
        "x": torch.randn(8, 8, generator=g),
        "image": F.normalize(torch.randn(8, 16, generator=g), dim=-1),
        "text": F.normalize(torch.randn(8, 16, generator=g), dim=-1),
    }


def _fresh_model() -> TinyModel:
    torch.manual_seed(0)
    return TinyModel()


def _gather_input(rank: int, sizes: list[int]) -> torch.Tensor:
    return torch.arange(sizes[rank] * 3, dtype=torch.float32).reshape(-1, 3) + 100 * rank


def _gather_weight(rank: int, total: int) -> torch.Tensor:
    return torch.randn(total, 3, generator=torch.Generator().manual_seed(10 + rank))


def _loss_step(model: nn.Module, batch: dict, rows: slice, keys: bool) -> tuple[float, dict, dict]:
    feats, scale = model(batch["x"][rows])
    anchors = {"image": batch["image"][rows], "text": batch["text"][rows]}
    anchor_keys = {"text": TEXT_KEYS[rows]} if keys else None
    loss, logs = ContrastiveLoss()(feats, anchors, scale, anchor_keys)
    loss.backward()
    inner = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    return loss.item(), logs, {n: p.grad.clone() for n, p in inner.named_parameters()}


def _worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    env = odist.init_distributed("cpu")
    result: dict = {"env": env, "is_main": odist.is_main_process(), "rank": odist.get_rank()}
    result["broadcast"] = odist.broadcast_object({"from": odist.get_rank()} if rank == 0 else None)
    result["mean"] = odist.all_reduce_mean(torch.tensor([float(rank), 10.0 * rank]))

    for name, sizes in GATHER_SIZES.items():
        x = _gather_input(rank, sizes).requires_grad_()
        y = odist.all_gather_with_grad(x)
        (y * _gather_weight(rank, sum(sizes))).sum().backward()
        result[f"gather_{name}"] = (y.detach(), x.grad)
        result[f"gather_nograd_{name}"] = odist.all_gather(_gather_input(rank, sizes))

    batch = _global_batch()
    for name, (sizes, keys) in {"equal": ([4, 4], False), "unequal_keys": ([3, 5], True)}.items():
        start = sum(sizes[:rank])
        model = nn.parallel.DistributedDataParallel(_fresh_model())
        result[f"loss_{name}"] = _loss_step(model, batch, slice(start, start + sizes[rank]), keys)
    odist.barrier()
    odist.cleanup()
    torch.save(result, Path(out_dir) / f"rank{rank}.pt")
    # Leave without running destructors: freeing the DDP models' gloo group can deadlock over the GIL
    # in torch 2.11 (the result is saved; see tests/ddp_train.py).
    os._exit(0)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("dist")
    ctx = mp.start_processes(
        _worker, args=(_free_port(), str(out)), nprocs=WORLD, join=False, start_method="spawn"
    )
    deadline = time.monotonic() + 120
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail("distributed workers did not finish within 120 s")
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


def test_init_distributed_env_and_helpers(results):
    for rank, res in enumerate(results):
        env = res["env"]
        assert (env.rank, env.local_rank, env.world_size, env.backend) == (rank, rank, WORLD, "gloo")
        assert env.device == torch.device("cpu")
        assert res["rank"] == rank and res["is_main"] == (rank == 0)
        assert res["broadcast"] == {"from": 0}
        torch.testing.assert_close(res["mean"], torch.tensor([0.5, 5.0]))


@pytest.mark.parametrize("name", list(GATHER_SIZES))
def test_all_gather_with_grad_forward_backward(results, name):
    sizes = GATHER_SIZES[name]
    expected = torch.cat([_gather_input(r, sizes) for r in range(WORLD)])
    summed_weight = sum(_gather_weight(r, sum(sizes)) for r in range(WORLD))
    for rank, res in enumerate(results):
        gathered, grad = res[f"gather_{name}"]
        torch.testing.assert_close(gathered, expected)
        torch.testing.assert_close(res[f"gather_nograd_{name}"], expected)
        start = sum(sizes[:rank])
        torch.testing.assert_close(grad, summed_weight[start : start + sizes[rank]])


@pytest.mark.parametrize("name", ["equal", "unequal_keys"])
def test_ddp_contrastive_matches_single_process(results, name):
    ref_loss, ref_logs, ref_grads = _loss_step(_fresh_model(), _global_batch(), slice(None), name == "unequal_keys")
    for res in results:
        loss, logs, grads = res[f"loss_{name}"]
        assert loss == pytest.approx(ref_loss, abs=1e-5)
        assert logs == pytest.approx(ref_logs, abs=1e-5)
        assert grads.keys() == ref_grads.keys()
        for n in ref_grads:
            # the gradients are far above the tolerance, so a missing or partial sync fails here
            assert ref_grads[n].abs().max() > 100 * 1e-6, (n, ref_grads[n].abs().max())
            torch.testing.assert_close(grads[n], ref_grads[n], rtol=0, atol=1e-6, msg=n)


def test_single_process_without_world_size(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    env = odist.init_distributed("cpu")
    assert env == odist.DistEnv(0, 0, 1, None, torch.device("cpu"))
    assert not odist.is_distributed() and odist.get_world_size() == 1 and odist.is_main_process()
    x = torch.randn(3, 2, requires_grad=True)
    assert odist.all_gather_with_grad(x) is x
    assert odist.broadcast_object("obj") == "obj"
    torch.testing.assert_close(odist.all_reduce_mean(x), x.detach())


def test_world_size_without_rank_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    for name in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    message = r"config `RANK`: WORLD_SIZE=2 but RANK, LOCAL_RANK, MASTER_ADDR, MASTER_PORT not set; launch with"
    with pytest.raises(ConfigError, match=message):
        odist.init_distributed("cpu")
