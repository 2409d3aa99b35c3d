"""Process-group setup and the collectives the trainer and the contrastive loss need.

Everything here degrades to the single-process behaviour when no process group exists, so the
same training code runs under ``python`` and under ``torchrun`` unchanged.

`all_gather_with_grad` accepts unequal local batch sizes: it gathers the sizes first and pads to
the largest, so a short last batch on one rank needs no special handling. The sizes exchange is
one tiny collective per call.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor

from omniclip.errors import ConfigError

T = TypeVar("T")

_TORCHRUN_VARS = ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in the job. ``backend`` is None for a single process."""

    rank: int
    local_rank: int
    world_size: int
    backend: str | None
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _resolve_device(device: str | None, local_rank: int) -> torch.device:
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("device", f"`{device}` requested but CUDA is not available")
        if dev.index is None:
            dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    return dev


def init_distributed(device: str | None = None) -> DistEnv:
    """Join the process group torchrun describes in the environment, or run as one process.

    ``WORLD_SIZE`` unset (or 1) means a single process: no process group is created. Otherwise
    ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` must be set too. ``device``
    defaults to CUDA when available; ``"cuda"`` without an index becomes ``cuda:LOCAL_RANK``
    (``RANK`` is global, over all nodes; ``LOCAL_RANK`` counts this node's processes, so the same
    rule serves one node and many). The backend is nccl on CUDA and gloo on CPU. Calling it again
    in an initialised process returns the environment without re-initialising.

    Raises `ConfigError` for a torchrun restart (``--max-restarts``) that would hang: see
    `_check_restart_store`.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        return DistEnv(0, local_rank, 1, None, _resolve_device(device, local_rank))

    missing = [name for name in _TORCHRUN_VARS if name not in os.environ]
    if missing:
        raise ConfigError(
            missing[0],
            f"WORLD_SIZE={world_size} but {', '.join(missing)} not set; launch with torchrun",
        )
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ["LOCAL_RANK"])
    if not dist.is_initialized():
        _check_restart_store()
    dev = _resolve_device(device, local_rank)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, init_method="env://", rank=rank, world_size=world_size)
    return DistEnv(rank, local_rank, world_size, dist.get_backend(), dev)


def _check_restart_store() -> None:
    """Refuse a restarted torchrun attempt whose process group setup would wait forever.

    By default torchrun's workers set up their process group through the store of the agent's
    rendezvous (``TORCHELASTIC_USE_AGENT_STORE=True``), and in torch 2.11 that store is the same
    one for every restart attempt: the restarted workers read the addresses the dead attempt
    left there and wait on them (seen here with gloo: both ranks stuck in ``init_process_group``
    after ``--max-restarts`` restarted them; torch issue #135712 reports the same for nccl).
    ``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1`` makes each attempt use a fresh store.
    """
    restart = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    if restart > 0 and os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
        raise ConfigError(
            "TORCH_DISABLE_SHARE_RDZV_TCP_STORE",
            f"torchrun restarted the workers (attempt {restart + 1}) but shares one rendezvous store across "
            "attempts, where the process group setup would wait forever on the dead attempt's addresses; "
            "launch torchrun with TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 in its environment",
        )


def cleanup(synchronize: bool = False) -> None:
    """Destroy the process group if one exists.

    ``synchronize=True`` (a run that ended normally on every rank) waits at a barrier first.
    Destroying a gloo group joins its worker threads while holding the GIL; a worker still
    releasing the tensors of a finished collective needs the GIL too, and the process hangs at
    exit (seen about once in 50 two-process runs here: the main thread in ``~ProcessGroupGloo``,
    the worker in ``~AsyncWork``). After a barrier every earlier collective's work has been
    released, so the teardown finds the workers idle. A rank that failed must not wait at a
    barrier: the others may be inside a different collective.
    """
    if is_distributed():
        if synchronize:
            dist.barrier()
        dist.destroy_process_group()


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def broadcast_object(obj: T, src: int = 0) -> T:
    """``obj`` from rank ``src`` on every rank (picklable objects only)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(obj: T) -> list[T]:
    """Every rank's ``obj``, in rank order (picklable objects only)."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out


def all_reduce_mean(t: Tensor) -> Tensor:
    """Mean of ``t`` over ranks, as a new detached tensor (for metrics and logging)."""
    out = t.detach().clone()
    if not is_distributed():
        return out
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / get_world_size()


def _gather_sizes(n: int, device: torch.device) -> list[int]:
    size = torch.tensor([n], dtype=torch.long, device=device)
    sizes = torch.empty(get_world_size(), dtype=torch.long, device=device)
    dist.all_gather_into_tensor(sizes, size)
    return sizes.tolist()


def _gather(x: Tensor) -> tuple[Tensor, list[int]]:
    """Concatenate every rank's ``x`` along dim 0; also return each rank's size."""
    x = x.contiguous()
    sizes = _gather_sizes(x.shape[0], x.device)
    largest = max(sizes)
    if largest != x.shape[0]:
        x = torch.cat([x, x.new_zeros((largest - x.shape[0], *x.shape[1:]))])
    buf = x.new_empty((len(sizes) * largest, *x.shape[1:]))
    dist.all_gather_into_tensor(buf, x)
    if all(s == largest for s in sizes):
        return buf, sizes
    parts = buf.split(largest)
    return torch.cat([p[:s] for p, s in zip(parts, sizes)]), sizes


class _AllGatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        out, sizes = _gather(x)
        rank = get_rank()
        ctx.start = sum(sizes[:rank])
        ctx.stop = ctx.start + sizes[rank]
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        # Every rank's loss may depend on this rank's rows: their gradient is the sum over ranks.
        grad = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.start : ctx.stop]


def all_gather_with_grad(x: Tensor) -> Tensor:
    """Concatenate ``x`` [B_r, ...] from every rank into [sum B_r, ...], in rank order.

    Differentiable: the backward sums the incoming gradient over ranks and returns this rank's
    rows. Local sizes may differ between ranks. Identity in a single process.
    """
    if not is_distributed():
        return x
    return _AllGatherWithGrad.apply(x)


def all_gather(x: Tensor) -> Tensor:
    """Like `all_gather_with_grad` but detached: for frozen inputs such as anchor features."""
    if not is_distributed():
        return x.detach()
    return _gather(x.detach())[0]
