"""How the trainer spreads one run over several processes: DDP, or DDP over an FSDP2-sharded trunk.

``trainer.parallel=ddp`` (the default) keeps a full copy of every parameter on each rank and
all-reduces the gradients of the trainable ones (`torch.nn.parallel.DistributedDataParallel`).

``trainer.parallel=fsdp2`` first applies `torch.distributed.fsdp.fully_shard` to every *frozen*
block of the model's trunk, so each rank stores only its 1/world_size slice of the frozen trunk
(bigG: 1.8B frozen parameters); a block's whole weights exist only while it runs forward or
backward. The trainable parameters (tokenizer, lens, unlocked blocks, embeddings, objective) stay
whole on every rank and DDP all-reduces their gradients, exactly as under ``ddp``: DDP is told to
leave the sharded blocks alone. The two strategies therefore compute the same update (the
gathered blocks hold the same numbers), and checkpoints, resume and export are unchanged: only
trainable tensors are saved, and none of them is sharded.

Why the trainable weights are not sharded too: an FSDP2 parameter is a DTensor whose
``state_dict`` is a shard, so every reader of the trainable weights (checkpoints, rank 0's
export, evaluation through ``encode``) would have to gather collectively. The frozen trunk is
where the memory is; the trainable weights and their AdamW moments are a small share of it.

Two consequences of sharding the trunk, which the trainer handles:

* every forward through a sharded block is a collective: evaluation runs on every rank under
  fsdp2 (rank 0 alone would wait for the others forever);
* the trunk's frozen blocks are the CLIP image tower's own blocks (shared, not copied), so
  computing an image anchor on one rank is a collective too, which the other ranks do not join.
  Image anchors must come from the cache (``omniclip-anchors``, run before training); a miss is
  refused with that advice instead of hanging (`refuse_image_tower`).
"""

from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from omniclip.errors import ConfigError

STRATEGIES: tuple[str, ...] = ("ddp", "fsdp2")


def is_sharded(tensor: Any) -> bool:
    """True for a DTensor (a parameter of an FSDP2-sharded block)."""
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # a torch built without distributed support
        return False
    return isinstance(tensor, DTensor)


def frozen_trunk_blocks(model: nn.Module) -> list[nn.Module]:
    """The blocks of ``model.trunk`` (`omniclip.trunk.ViTTrunk`, `omniclip.blip_trunk.BlipVisionTrunk`)
    none of whose parameters train: the units fsdp2 shards, one by one."""
    blocks = getattr(getattr(model, "trunk", None), "blocks", None)
    if not isinstance(blocks, nn.ModuleList) or len(blocks) == 0:
        raise ConfigError(
            "trainer.parallel",
            f"fsdp2 shards the frozen blocks of a lens model's trunk (`model.trunk.blocks`), and "
            f"{type(model).__name__} has none; use trainer.parallel=ddp for this model",
        )
    frozen = [block for block in blocks if not any(p.requires_grad for p in block.parameters())]
    if not frozen:
        raise ConfigError("trainer.parallel", f"fsdp2 shards frozen trunk blocks, and all {len(blocks)} blocks "
                          "train (trunk.unlocked_blocks); use trainer.parallel=ddp")
    return frozen


def wrap(train_step: nn.Module, model: nn.Module, strategy: str, device: torch.device,
         world_size: int) -> DistributedDataParallel | None:
    """``train_step`` (model + objective) ready for ``world_size`` ranks: None for one process, else
    the DDP module whose forward the train step must go through.

    Under ``fsdp2`` the frozen trunk blocks of ``model`` (a submodule of ``train_step``) are first
    sharded in place, and DDP ignores their parameters. Call it after freezing (``train_only``)
    and before building the optimizer.
    """
    if strategy not in STRATEGIES:
        raise ConfigError("trainer.parallel", f"`{strategy}` is not one of {STRATEGIES}")
    if world_size <= 1:
        return None
    if strategy == "fsdp2":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh(device.type, (world_size,))
        for block in frozen_trunk_blocks(model):
            fully_shard(block, mesh=mesh)
        # DDP would broadcast rank 0's tensors over every rank's at start: a shard over another shard.
        ignored = [name for name, p in train_step.named_parameters() if is_sharded(p)]
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(train_step, ignored)
    return DistributedDataParallel(train_step, device_ids=[device.index] if device.type == "cuda" else None)


def parameter_bytes(params: Iterable[torch.Tensor]) -> tuple[int, int]:
    """(bytes this rank stores, bytes of the whole tensors) over ``params``: what sharding saves."""
    local = full = 0
    for p in params:
        data = p.to_local() if is_sharded(p) else p
        local += data.numel() * data.element_size()
        full += p.numel() * p.element_size()
    return local, full


def refuse_image_tower(backbone: Any) -> None:
    """Make ``backbone.encode_image`` raise instead of running: under fsdp2 its blocks are the
    sharded trunk's, and one rank computing an image anchor alone would wait forever for the
    others to join each block's gather.

    Call it before sharding: the image cache key (``backbone.fingerprint("image")``, a hash of
    every weight of the tower) is computed first, from the whole weights.
    """
    if hasattr(backbone, "fingerprint"):
        backbone.fingerprint("image")

    def encode_image(*args: Any, **kwargs: Any) -> torch.Tensor:
        raise ConfigError(
            "trainer.parallel",
            "fsdp2 shards the image tower that image anchors come from, so they cannot be computed during "
            "training; fill the anchor cache first with `omniclip-anchors <the same overrides>` (one process), "
            "or train with trainer.parallel=ddp",
        )

    backbone.encode_image = encode_image


__all__ = ["STRATEGIES", "frozen_trunk_blocks", "is_sharded", "parameter_bytes", "refuse_image_tower", "wrap"]
