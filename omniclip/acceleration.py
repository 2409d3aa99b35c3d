"""Two ways to make a training step cheaper without changing what trains.

* ``trainer.frozen_dtype=bf16``: the frozen weights (the trunk, and the image tower it shares)
  are *stored* in bf16 — half the memory and bandwidth of the largest part of a lens model —
  while every trainable parameter stays fp32, so the optimizer updates fp32 master weights.
  The model does the casting at its module boundaries (`omniclip.trunk.ViTTrunk.cast_frozen`);
  a model that cannot is refused.
* ``trainer.compile=true``: ``torch.compile`` of the model's forward (`nn.Module.compile`, in
  place: parameter names, checkpoints and exports are unchanged). The objective stays eager: it
  looks anchors up in a Python-side cache, which would only break the graph.

The trainer and ``tools/bench_lens_step.py`` apply both through these functions.
"""

from __future__ import annotations

import os
import shutil
from typing import Iterable

import torch
from torch import nn

from omniclip.errors import ConfigError

FROZEN_DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16}
#: ``torch.compile`` modes (inductor's); None is inductor's default.
COMPILE_MODES: tuple[str | None, ...] = (None, "default", "reduce-overhead", "max-autotune",
                                         "max-autotune-no-cudagraphs")


def cast_frozen(model: nn.Module, frozen_dtype: str, trainable: Iterable[nn.Module] = ()) -> None:
    """Store ``model``'s frozen weights in ``frozen_dtype`` ("fp32": nothing happens).

    ``trainable``: the modules whose trainable parameters the optimizer will see (model and
    objective); each must still be fp32 afterwards — the master weights the option promises.
    """
    if frozen_dtype not in FROZEN_DTYPES:
        raise ConfigError("trainer.frozen_dtype", f"`{frozen_dtype}` is not one of {tuple(FROZEN_DTYPES)}")
    if frozen_dtype == "fp32":
        return
    if not callable(getattr(model, "cast_frozen", None)):
        raise ConfigError("trainer.frozen_dtype", f"{type(model).__name__} cannot store its frozen weights in "
                          f"{frozen_dtype} (it has no cast_frozen; lens models have): set trainer.frozen_dtype=fp32")
    model.cast_frozen(FROZEN_DTYPES[frozen_dtype])
    for module in (model, *trainable):
        wrong = [f"{name} ({p.dtype})" for name, p in module.named_parameters()
                 if p.requires_grad and p.dtype != torch.float32]
        if wrong:
            raise ConfigError("trainer.frozen_dtype", f"trainable parameters are not fp32 ({', '.join(wrong[:3])}): "
                              "the optimizer keeps fp32 master weights; load the backbone in fp32 "
                              "(backbone.precision=fp32) and let trainer.frozen_dtype store the frozen part")


def frozen_nbytes(module: nn.Module) -> int:
    """Bytes held by ``module``'s frozen parameters and its buffers (shared tensors counted once)."""
    seen: set[int] = set()
    total = 0
    tensors = [p for p in module.parameters() if not p.requires_grad] + list(module.buffers())
    for tensor in tensors:
        if tensor.data_ptr() not in seen:
            seen.add(tensor.data_ptr())
            total += tensor.numel() * tensor.element_size()
    return total


def compile_model(model: nn.Module, backend: str = "inductor", mode: str | None = None,
                  device: torch.device | None = None) -> None:
    """``torch.compile`` ``model``'s forward in place (`nn.Module.compile`), after checking that
    the backend exists and, for inductor on CPU, that a C++ compiler does: otherwise the error
    would come at the first step, from deep inside inductor."""
    import torch._dynamo

    backends = torch._dynamo.list_backends(exclude_tags=())
    if backend not in backends:
        raise ConfigError("trainer.compile_backend", f"`{backend}` is not a torch.compile backend "
                          f"(known: {', '.join(sorted(backends))})")
    if mode not in COMPILE_MODES:
        raise ConfigError("trainer.compile_mode", f"`{mode}` is not one of {COMPILE_MODES}")
    if mode is not None and backend != "inductor":
        raise ConfigError("trainer.compile_mode", f"`{mode}` is an inductor mode; trainer.compile_backend is "
                          f"`{backend}`: set compile_mode=null")
    if backend == "inductor" and (device is None or device.type == "cpu") and not _cpp_compiler():
        raise ConfigError("trainer.compile", "inductor compiles CPU kernels with a C++ compiler and none was "
                          "found (g++, clang++ or $CXX): install one, or set trainer.compile_backend=aot_eager "
                          "(no kernels generated, no speed-up)")
    model.compile(backend=backend, mode=mode)


def _cpp_compiler() -> str | None:
    for name in (os.environ.get("CXX"), "g++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


__all__ = ["COMPILE_MODES", "FROZEN_DTYPES", "cast_frozen", "compile_model", "frozen_nbytes"]
