"""Checkpoints and RNG state: what a run needs to stop anywhere and resume exactly.

Layout of one checkpoint (all written by `save_checkpoint`)::

    run_dir/checkpoints/step_00001000/
        weights.safetensors   trainable weights only (lens, tokenizer, unlocked blocks)
        training_state.pt     optimizer, scheduler, scaler, RNG, sampler, step, ...
        config.json           the resolved recipe
    run_dir/checkpoints/latest  text file naming the newest complete step directory

A checkpoint directory is assembled under a hidden temporary name and renamed into place, so a
``step_*`` directory is always complete; a process killed mid-save leaves only a temporary
directory, which `latest_checkpoint` ignores and the next save removes.

``training_state.pt`` is loaded with ``torch.load(weights_only=True)``: it may hold only tensors
and plain Python containers/scalars. `save_checkpoint` checks that before writing, so a state
that could not be loaded back safely fails at save time, not at resume time.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import torch
from safetensors.torch import load_file, save_file

CHECKPOINTS = "checkpoints"
LATEST = "latest"
WEIGHTS_FILE = "weights.safetensors"
STATE_FILE = "training_state.pt"
CONFIG_FILE = "config.json"
_STEP_DIR = re.compile(r"step_(\d+)")
_TMP_PREFIX = ".tmp-"


def load_exactly(module: torch.nn.Module, state: Mapping[str, torch.Tensor],
                 expected: Mapping[str, torch.Tensor], what: str) -> None:
    """Copy ``state`` into ``module``'s parameters and buffers of the same names, when its keys
    and shapes are exactly ``expected``'s (what the module's ``trainable_state_dict`` gives);
    otherwise one `CheckpointMismatchError` naming ``what`` and every missing, unexpected and
    mis-shaped key, before anything is copied."""
    from omniclip.errors import CheckpointMismatchError

    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [f"  {k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
              for k in sorted(set(expected) & set(state)) if tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or shapes:
        lines = [f"{what} does not match the model:"]
        lines += [f"missing ({len(missing)}):"] + [f"  {k}" for k in missing] if missing else []
        lines += [f"unexpected ({len(unexpected)}):"] + [f"  {k}" for k in unexpected] if unexpected else []
        lines += [f"shape mismatch ({len(shapes)}):"] + shapes if shapes else []
        raise CheckpointMismatchError("\n".join(lines))
    live = dict(module.named_parameters(remove_duplicate=False))
    live.update(dict(module.named_buffers(remove_duplicate=False)))
    with torch.no_grad():
        for key, value in state.items():
            live[key].copy_(value)


def capture_rng_state() -> dict[str, Any]:
    """State of Python's, NumPy's (global), torch's CPU and every CUDA device's generator.

    NumPy's state is stored as a tensor plus scalars so it survives ``weights_only`` loading.
    """
    np_state = np.random.get_state(legacy=False)
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Inverse of `capture_rng_state`.

    CUDA generators are restored device by device; when the number of visible devices differs
    from the captured one, the common devices are restored and a warning says so (the run goes
    on, but is no longer bit-reproducible).
    """
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np_state = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": "MT19937",
            "state": {"key": np_state["key"].numpy().astype(np.uint32), "pos": np_state["pos"]},
            "has_gauss": np_state["has_gauss"],
            "gauss": np_state["gauss"],
        }
    )
    torch.set_rng_state(state["torch"])
    cuda_states = state.get("cuda", [])
    available = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if len(cuda_states) != available:
        warnings.warn(
            f"RNG state was captured with {len(cuda_states)} CUDA device(s) and {available} are "
            f"visible now: restoring the first {min(len(cuda_states), available)} only",
            stacklevel=2,
        )
    for device, cuda_state in enumerate(cuda_states[:available]):
        torch.cuda.set_rng_state(cuda_state, device)


@contextlib.contextmanager
def preserved_rng_state() -> Iterator[None]:
    """Run a block without disturbing the global RNGs (Python, NumPy, torch CPU and CUDA).

    Evaluation inside a training run draws random numbers (loader seeds, augmentation); a run
    resumed from a checkpoint written before that evaluation never ran it, so the training
    streams must not depend on it.
    """
    state = capture_rng_state()
    try:
        yield
    finally:
        restore_rng_state(state)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_save(obj_writer: Callable[[Path], None], path: str | os.PathLike) -> Path:
    """Call ``obj_writer(tmp)`` on a temporary file beside ``path``, then rename it onto ``path``.

    Readers see either the old file or the complete new one, never a partial write. The
    temporary file is removed if the writer fails.
    """
    path = Path(path)
    tmp = path.with_name(f"{_TMP_PREFIX}{path.name}-{os.getpid()}")
    try:
        obj_writer(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


_PLAIN_LEAVES = (
    type(None), bool, int, float, complex, str, bytes, torch.dtype, torch.device, torch.Size,
    torch.Tensor,
)
_PLAIN_CONTAINERS = (dict, OrderedDict, list, tuple, set)


def _check_weights_only_loadable(obj: Any, where: str) -> None:
    """Raise TypeError naming the first entry that ``torch.load(weights_only=True)`` refuses."""
    if isinstance(obj, _PLAIN_LEAVES):
        return
    if type(obj) in _PLAIN_CONTAINERS:  # exact types: subclasses (namedtuple, defaultdict) fail
        if isinstance(obj, dict):
            for key, value in obj.items():
                _check_weights_only_loadable(key, f"{where} key {key!r}")
                _check_weights_only_loadable(value, f"{where}[{key!r}]")
        else:
            for i, value in enumerate(obj):
                _check_weights_only_loadable(value, f"{where}[{i}]")
        return
    raise TypeError(
        f"{where}: {type(obj).__module__}.{type(obj).__qualname__} cannot be loaded with "
        "torch.load(weights_only=True); store tensors, numbers, strings, lists or dicts"
    )


def _complete(step_dir: Path) -> bool:
    return all((step_dir / f).is_file() for f in (WEIGHTS_FILE, STATE_FILE, CONFIG_FILE))


def _step_dirs(ckpt_root: Path) -> list[tuple[int, Path]]:
    """Complete ``step_*`` directories under ``ckpt_root``, sorted by step."""
    found = []
    for child in ckpt_root.iterdir() if ckpt_root.is_dir() else ():
        match = _STEP_DIR.fullmatch(child.name)
        if match and child.is_dir() and _complete(child):
            found.append((int(match.group(1)), child))
    return sorted(found)


def save_checkpoint(
    run_dir: str | os.PathLike,
    step: int,
    weights: Mapping[str, torch.Tensor],
    training_state: Mapping[str, Any],
    config: Mapping[str, Any],
    keep_last: int | None = None,
) -> Path:
    """Write ``run_dir/checkpoints/step_{step:08d}/`` atomically, then point ``latest`` at it.

    ``weights`` are saved as contiguous CPU copies (tied entries become independent copies,
    which safetensors requires). ``training_state`` gets ``"step": step`` added. An existing
    directory for the same step is replaced. With ``keep_last=n`` only the newest ``n`` step
    directories are kept, the one just written always among them. One writer per ``run_dir``:
    leftover temporary directories from killed saves are deleted here.
    """
    if keep_last is not None and keep_last < 1:
        raise ValueError(f"keep_last must be >= 1 or None, got {keep_last}")
    if training_state.get("step", step) != step:
        raise ValueError(
            f"training_state['step'] is {training_state['step']} but the checkpoint is for "
            f"step {step}"
        )
    state = {**training_state, "step": step}
    _check_weights_only_loadable(state, "training_state")
    config_text = json.dumps(config, indent=2, sort_keys=True)  # fails before any write
    cpu_weights = {
        name: t.detach().to("cpu", copy=True).contiguous() for name, t in weights.items()
    }

    root = Path(run_dir) / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    for leftover in root.glob(f"{_TMP_PREFIX}*"):
        if leftover.is_dir():
            shutil.rmtree(leftover)
        else:
            leftover.unlink()
    for child in root.glob("step_*"):  # half-deleted by a kill during an older version's pruning
        if _STEP_DIR.fullmatch(child.name) and child.is_dir() and not _complete(child):
            shutil.rmtree(child)

    name = f"step_{step:08d}"
    final = root / name
    tmp = root / f"{_TMP_PREFIX}{name}-{os.getpid()}"
    tmp.mkdir()
    try:
        save_file(cpu_weights, str(tmp / WEIGHTS_FILE), metadata={"step": str(step)})
        torch.save(state, tmp / STATE_FILE)
        (tmp / CONFIG_FILE).write_text(config_text + "\n")
        for f in (WEIGHTS_FILE, STATE_FILE, CONFIG_FILE):
            with open(tmp / f, "rb") as fh:
                os.fsync(fh.fileno())
        if final.exists():  # re-saving a step (e.g. a run restarted from an older checkpoint)
            old = root / f"{_TMP_PREFIX}old-{name}-{os.getpid()}"
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_dir(root)
    atomic_save(lambda p: p.write_text(name + "\n"), root / LATEST)

    if keep_last is not None:
        older = [d for _, d in _step_dirs(root) if d != final]
        for stale in older[: max(0, len(older) - (keep_last - 1))]:
            _remove_dir(stale)
    return final


def _remove_dir(path: Path) -> None:
    """Delete a checkpoint directory so that a kill at any moment leaves no half-deleted one.

    The directory is first renamed to a temporary name (atomic), so it either is a complete
    ``step_*`` directory or is a leftover that the next save deletes.
    """
    doomed = path.with_name(f"{_TMP_PREFIX}del-{path.name}-{os.getpid()}")
    os.replace(path, doomed)
    shutil.rmtree(doomed)


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint of ``run_dir``, or None when there is none.

    Follows ``checkpoints/latest``; when that file is missing or names a directory that is not a
    complete checkpoint (e.g. a kill between the two renames), takes the highest complete
    ``step_*`` directory. Temporary directories of interrupted saves are never returned.
    """
    root = Path(run_dir) / CHECKPOINTS
    pointer = root / LATEST
    if pointer.is_file():
        named = root / pointer.read_text().strip()
        if _STEP_DIR.fullmatch(named.name) and named.is_dir() and _complete(named):
            return named
    found = _step_dirs(root)
    return found[-1][1] if found else None


def load_checkpoint(
    path: str | os.PathLike,
) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any]]:
    """``(weights, training_state, config)`` of a checkpoint directory, all on CPU."""
    path = Path(path)
    missing = [f for f in (WEIGHTS_FILE, STATE_FILE, CONFIG_FILE) if not (path / f).is_file()]
    if missing:
        raise FileNotFoundError(f"{path}: not a complete checkpoint, missing {', '.join(missing)}")
    weights = load_file(str(path / WEIGHTS_FILE), device="cpu")
    training_state = torch.load(path / STATE_FILE, map_location="cpu", weights_only=True)
    config = json.loads((path / CONFIG_FILE).read_text())
    return weights, training_state, config
