"""Data loading that can stop anywhere and resume exactly, with reproducible augmentation.

Three pieces compose into `build_loader`:

- `ResumableSampler` yields ``(epoch, index)`` keys. The order of an epoch depends on
  (seed, epoch) only, each rank takes a fixed slice, and a resumed epoch skips the keys already
  trained on without loading them.
- `SeededDataset` seeds the global RNGs from (seed, epoch, index) before building a sample, so
  augmentation depends on the sample alone: not on the number of workers, nor on which worker
  built it, nor on where the run was resumed. No ``worker_init_fn`` is needed.
- `SafeDataset` + `collate_skipping` turn a `SampleError` into a stop or into a counted skip
  that travels with the batch (``batch["skipped"]``) to the training loop's `SkipCounter`;
  `concat_batches` / `slice_batch` let the loop refill a batch that lost samples.
"""

from __future__ import annotations

import csv
import math
import random
import signal
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, NamedTuple, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, get_worker_info

from omniclip.errors import ConfigError, OmniclipError, SampleError

SampleKey = tuple[int, int]
"""``(epoch, index)``: which sample, and in which epoch it is drawn (for its augmentation)."""

SkipPolicy = Literal["stop", "skip"]


class ResumableSampler(Sampler[SampleKey]):
    """Distributed, resumable sampler of ``(epoch, index)`` keys.

    Order: epoch ``e`` uses a permutation of ``range(num_samples)`` drawn from a generator
    seeded by (seed, e) (identity when ``shuffle=False``). As in `DistributedSampler`, the
    permutation is cut (``drop_last=True``) or padded by repeating its start
    (``drop_last=False``) so every rank gets the same number of keys, and rank ``r`` takes
    positions ``r::world_size``. With ``drop_last=True`` each rank's share is also cut to a
    multiple of ``batch_size``, so all ranks run the same number of full batches.

    Resume protocol:

    1. After each batch the training loop calls ``sampler.advance()`` (one batch; pass ``n`` for
       several). The sampler cannot count by itself: DataLoader workers prefetch keys ahead of
       what the loop has trained on.
    2. The checkpoint stores ``sampler.state_dict()`` = ``{"epoch", "consumed"}``, ``consumed``
       being keys of this rank's share already trained on in that epoch.
    3. On resume, ``load_state_dict(state)`` then the usual ``set_epoch(epoch)`` (a no-op for
       the current epoch: it keeps ``consumed``); the next iteration yields exactly the keys not
       yet consumed and ``len()`` counts only those. ``set_epoch`` to another epoch resets
       ``consumed`` to 0.

    Iteration takes a snapshot of (epoch, consumed) when ``iter()`` is called, so ``advance``
    during an epoch does not shift the keys already being yielded.
    """

    def __init__(
        self,
        num_samples: int,
        shuffle: bool = True,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = True,
        batch_size: int = 1,
    ):
        if num_samples < 1:
            raise ConfigError("num_samples", f"must be >= 1, got {num_samples}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ConfigError("rank", f"must be in [0, {world_size}), got {rank}")
        if batch_size < 1:
            raise ConfigError("batch_size", f"must be >= 1, got {batch_size}")
        if seed < 0:
            raise ConfigError("seed", f"must be >= 0, got {seed}")
        self.num_samples = num_samples
        self.shuffle = shuffle
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.drop_last = drop_last
        self.batch_size = batch_size
        if drop_last:
            self.per_rank = num_samples // world_size // batch_size * batch_size
            if self.per_rank == 0:
                raise ConfigError(
                    "batch_size",
                    f"{num_samples} samples cannot fill one batch of {batch_size} on each of "
                    f"{world_size} rank(s) with drop_last=True",
                )
        else:
            self.per_rank = math.ceil(num_samples / world_size)
        self.epoch = 0
        self.consumed = 0

    def permutation(self, epoch: int) -> torch.Tensor:
        """The full order of ``epoch`` before it is cut or padded and shared out between ranks."""
        if not self.shuffle:
            return torch.arange(self.num_samples)
        # SeedSequence mixes (seed, epoch) so that e.g. (0, 1) and (1, 0) give unrelated orders.
        seed = int(np.random.SeedSequence([self.seed, epoch]).generate_state(1, np.uint64)[0])
        generator = torch.Generator().manual_seed(seed)
        return torch.randperm(self.num_samples, generator=generator)

    def rank_indices(self, epoch: int) -> torch.Tensor:
        """This rank's whole share of ``epoch`` (consumed keys included)."""
        order = self.permutation(epoch)
        total = self.per_rank * self.world_size
        if total > self.num_samples:
            order = order.repeat(math.ceil(total / self.num_samples))
        return order[:total][self.rank :: self.world_size]

    def set_epoch(self, epoch: int) -> None:
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        if epoch != self.epoch:
            self.epoch = epoch
            self.consumed = 0

    def advance(self, num_batches: int = 1) -> None:
        """Mark ``num_batches`` more batches of this epoch as trained on."""
        if num_batches < 0:
            raise ValueError(f"num_batches must be >= 0, got {num_batches}")
        self.consumed = min(self.per_rank, self.consumed + num_batches * self.batch_size)

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "consumed": self.consumed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        epoch, consumed = int(state["epoch"]), int(state["consumed"])
        if epoch < 0 or not 0 <= consumed <= self.per_rank:
            raise ValueError(
                f"sampler state {state} does not fit this sampler ({self.per_rank} keys per rank "
                "per epoch): was the dataset, batch size or world size changed?"
            )
        self.epoch, self.consumed = epoch, consumed

    def __iter__(self) -> Iterator[SampleKey]:
        epoch = self.epoch
        remaining = self.rank_indices(epoch)[self.consumed :].tolist()
        return ((epoch, index) for index in remaining)

    def __len__(self) -> int:
        return self.per_rank - self.consumed


class SeededDataset(Dataset):
    """Index a dataset by `SampleKey`, with the global RNGs seeded from (seed, epoch, index).

    Python's `random`, NumPy's global generator and torch's CPU generator are seeded before
    ``dataset[index]``. In the main process (``num_workers=0``) their previous states are put
    back afterwards, so the training loop's random streams (dropout, ...) are the same whatever
    the number of workers; in a worker process that restore (~90 us, mostly NumPy's) is skipped.
    CUDA generators are never touched.
    """

    def __init__(self, dataset: Dataset, seed: int = 0):
        if seed < 0:
            raise ConfigError("seed", f"must be >= 0, got {seed}")
        self.dataset = dataset
        self.seed = seed

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: SampleKey) -> Any:
        epoch, index = key
        return seeded_call(self.seed, epoch, index, lambda: self.dataset[index])


def seeded_call(seed: int, epoch: int, index: int, build: Callable[[], Any]) -> Any:
    """``build()`` with the global RNGs seeded from (seed, epoch, index), as `SeededDataset` does.

    In the main process the previous RNG states are put back afterwards; in a DataLoader worker
    that restore is skipped (its global RNGs serve nobody else). Shared by the map-style loader
    and the shard reader (`omniclip.shards`), so a sample's augmentation depends on its key alone.
    """
    if get_worker_info() is not None:
        _seed_globals(seed, epoch, index)
        return build()
    saved = random.getstate(), np.random.get_state(), torch.default_generator.get_state()
    _seed_globals(seed, epoch, index)
    try:
        return build()
    finally:
        random.setstate(saved[0])
        np.random.set_state(saved[1])
        torch.default_generator.set_state(saved[2])


def _seed_globals(seed: int, epoch: int, index: int) -> None:
    words = np.random.SeedSequence([seed, epoch, index]).generate_state(3, np.uint64)
    random.seed(int(words[0]))
    np.random.seed(words[1:2].view(np.uint32))  # the 64-bit word as two 32-bit seed words
    # The CPU generator only: torch.manual_seed would also reseed initialised CUDA devices.
    torch.default_generator.manual_seed(int(words[2]))


class Skipped(NamedTuple):
    """Stands in for a sample that `SafeDataset` skipped; `collate_skipping` removes it."""

    path: str
    problem: str


class SafeDataset(Dataset):
    """Apply the bad-sample policy to a dataset that raises `SampleError`.

    ``"stop"`` re-raises (the message names the file and the problem; in a worker process
    torch re-raises it in the main process as a RuntimeError carrying that message);
    ``"skip"`` returns a `Skipped` marker in place of the sample.
    """

    def __init__(self, dataset: Dataset, policy: SkipPolicy = "stop"):
        if policy not in ("stop", "skip"):
            raise ConfigError("policy", f"must be 'stop' or 'skip', got {policy!r}")
        self.dataset = dataset
        self.policy = policy

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Any:
        return apply_skip_policy(lambda: self.dataset[index], self.policy)


def apply_skip_policy(build: Callable[[], Any], policy: SkipPolicy) -> Any:
    """``build()``, or a `Skipped` marker when it raises `SampleError` and ``policy`` is "skip"."""
    try:
        return build()
    except SampleError as error:
        if policy == "stop":
            raise
        return Skipped(error.path, error.problem)


class _SkippingCollate:
    """A class rather than a closure so that it pickles into spawned worker processes.

    With ``keyed=True`` the samples arrive as ``(key, sample)`` pairs (see `_KeyedDataset`) and
    the batch lists the kept samples' keys under ``"sample_keys"``.
    """

    def __init__(self, collate_fn: Callable[[list[Any]], dict[str, Any]], keyed: bool = False):
        self.collate_fn = collate_fn
        self.keyed = keyed

    def __call__(self, samples: Sequence[Any]) -> dict[str, Any]:
        keys = [key for key, _ in samples] if self.keyed else None
        if self.keyed:
            samples = [sample for _, sample in samples]
        kept = [s for s in samples if not isinstance(s, Skipped)]
        skipped = [(s.path, s.problem) for s in samples if isinstance(s, Skipped)]
        if not kept:
            return {"skipped": skipped}
        batch = self.collate_fn(kept)
        if not isinstance(batch, dict):
            raise TypeError(f"collate_fn must return a dict, got {type(batch).__name__}")
        batch["skipped"] = skipped
        if keys is not None:
            batch["sample_keys"] = [tuple(k) for k, s in zip(keys, samples) if not isinstance(s, Skipped)]
        return batch


def collate_skipping(
    collate_fn: Callable[[list[Any]], dict[str, Any]],
) -> Callable[[Sequence[Any]], dict[str, Any]]:
    """Wrap ``collate_fn`` to drop `Skipped` markers and list them in ``batch["skipped"]``.

    ``batch["skipped"]`` is a list of ``(path, problem)`` (empty when nothing was skipped). When
    every sample of a batch was skipped the batch is ``{"skipped": [...]}`` and nothing else;
    the training loop counts it and moves on.
    """
    return _SkippingCollate(collate_fn)


class _KeyedDataset(Dataset):
    """``dataset[key] -> (key, dataset[key])``, so a batch knows which samples it holds."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: SampleKey) -> tuple[SampleKey, Any]:
        return key, self.dataset[key]


def batch_size_of(batch: dict[str, Any]) -> int:
    """Number of samples in a batch built by `build_loader` (its ``sample_keys``)."""
    return len(batch["sample_keys"])


def concat_batches(first: dict[str, Any], second: dict[str, Any]) -> dict[str, Any]:
    """One batch holding the samples of ``first`` then ``second`` (tensors, lists, nested dicts).

    Every per-sample value of the batch contract (module `omniclip.modality`) is a tensor or a
    list with the batch along its first dimension; values that are neither must be equal.
    """
    if set(first) != set(second):
        raise ValueError(f"batches with different keys cannot be joined: {sorted(first)} vs {sorted(second)}")
    return {key: _join(first[key], second[key], key) for key in first}


def _join(a: Any, b: Any, key: str) -> Any:
    if isinstance(a, torch.Tensor):
        return torch.cat([a, b])
    if isinstance(a, (list, tuple)):
        return type(a)([*a, *b])
    if isinstance(a, dict):
        return {k: _join(a[k], b[k], f"{key}.{k}") for k in a}
    if a != b:
        raise ValueError(f"batch value `{key}` is neither a tensor nor a list and differs between batches")
    return a


def slice_batch(batch: dict[str, Any], start: int, stop: int) -> dict[str, Any]:
    """Samples ``start:stop`` of a batch (inverse of `concat_batches`)."""
    def cut(value: Any) -> Any:
        if isinstance(value, (torch.Tensor, list, tuple)):
            return value[start:stop]
        if isinstance(value, dict):
            return {k: cut(v) for k, v in value.items()}
        return value

    return {key: cut(value) for key, value in batch.items()}


class TooManySkippedError(OmniclipError, RuntimeError):
    """More samples were skipped than the run allows: the data, not single files, is broken."""


class SkipCounter:
    """Accumulate skipped samples and stop the run when too many are bad.

    Raises `TooManySkippedError` once ``skipped > max_skip_fraction * max(seen, min_seen)``:
    the fraction of samples seen, but judged against at least ``min_seen`` samples so that one
    bad file in the first batch does not end a run, while a dataset that is broken throughout
    still stops after ``max_skip_fraction * min_seen`` skips.
    """

    def __init__(self, max_skip_fraction: float = 0.1, min_seen: int = 200):
        if not 0.0 <= max_skip_fraction <= 1.0:
            raise ConfigError("max_skip_fraction", f"must be in [0, 1], got {max_skip_fraction}")
        self.max_skip_fraction = max_skip_fraction
        self.min_seen = min_seen
        self.seen = 0
        self.skipped: list[tuple[str, str]] = []

    def update(self, skipped: Sequence[tuple[str, str]], seen: int) -> None:
        """Record one batch: ``seen`` samples were drawn for it, ``skipped`` of them dropped."""
        if len(skipped) > seen:
            raise ValueError(f"{len(skipped)} samples skipped out of {seen} seen")
        self.seen += seen
        self.skipped.extend((str(path), str(problem)) for path, problem in skipped)
        if len(self.skipped) > self.max_skip_fraction * max(self.seen, self.min_seen):
            first = "; ".join(f"{p}: {why}" for p, why in self.skipped[:5])
            raise TooManySkippedError(
                f"{len(self.skipped)} of {self.seen} samples were skipped, more than "
                f"max_skip_fraction={self.max_skip_fraction}; first: {first}"
            )

    def summary(self) -> str:
        """One log line: total and the most common problems."""
        if not self.skipped:
            return f"skipped 0 of {self.seen} samples"
        by_problem = Counter(problem for _, problem in self.skipped)
        top = ", ".join(f"{n} × {problem}" for problem, n in by_problem.most_common(5))
        more = len(by_problem) - 5
        tail = f", and {more} other problem(s)" if more > 0 else ""
        percent = 100.0 * len(self.skipped) / max(self.seen, 1)
        return f"skipped {len(self.skipped)} of {self.seen} samples ({percent:.2f}%): {top}{tail}"

    def state_dict(self) -> dict[str, Any]:
        return {"seen": self.seen, "skipped": [list(entry) for entry in self.skipped]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.seen = int(state["seen"])
        self.skipped = [(str(path), str(problem)) for path, problem in state["skipped"]]


def build_loader(
    dataset: Dataset,
    collate_fn: Callable[[list[Any]], dict[str, Any]],
    batch_size: int,
    sampler: ResumableSampler,
    num_workers: int,
    seed: int,
    pin_memory: bool = False,
    policy: SkipPolicy = "stop",
    persistent_workers: bool | None = None,
    prefetch_factor: int | None = None,
) -> DataLoader:
    """DataLoader over ``SeededDataset(SafeDataset(dataset, policy), seed)`` driven by ``sampler``.

    Each batch lists its samples' `SampleKey` under ``"sample_keys"`` (the training loop refills
    batches that lost samples to the skip policy, and checkpoints the keys of a partial batch).
    ``loader.dataset[key]`` rebuilds one ``(key, sample)`` pair exactly, in any process.

    ``batch_size`` is per rank and must equal ``sampler.batch_size`` (the sampler counts
    consumed keys in batches). ``persistent_workers=None`` means "when there are workers".
    Workers ignore SIGINT: a Ctrl-C reaches the whole process group, and the main process, not
    its workers, decides how to stop (the trainer saves a checkpoint first).

    The loader draws its workers' base seed from a generator of its own, never from the global
    torch RNG: a resumed run restores the global RNG and then calls ``iter(loader)`` at a point
    where the uninterrupted run did not, and a draw from the global RNG there would shift every
    later random number of the forward (dropout, random FPS starts, SpecAugment). Sample
    randomness itself comes from `SeededDataset`, not from the base seed.
    """
    if batch_size != sampler.batch_size:
        raise ConfigError(
            "batch_size", f"{batch_size} differs from the sampler's batch_size {sampler.batch_size}"
        )
    if persistent_workers is None:
        persistent_workers = num_workers > 0
    return DataLoader(
        _KeyedDataset(SeededDataset(SafeDataset(dataset, policy), seed)),
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=_SkippingCollate(collate_fn, keyed=True),
        pin_memory=pin_memory,
        drop_last=sampler.drop_last,
        persistent_workers=persistent_workers,
        prefetch_factor=prefetch_factor if num_workers > 0 else None,
        worker_init_fn=_ignore_interrupts if num_workers > 0 else None,
        generator=torch.Generator().manual_seed(seed),
    )


def _ignore_interrupts(worker_id: int) -> None:
    # SIGTERM keeps its default: multiprocessing stops workers with it at shutdown.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


# ------------------------------------------------------------------ dataset construction checks
# Datasets check their configuration when built, so a bad recipe fails before training; the
# keys are relative to the dataset config (the core prefixes them, e.g. ``data.train.root``).


def require_dir(root: Any, key: str = "root") -> Path:
    """``root`` as an existing folder, else a ConfigError naming ``key``."""
    if root is None:
        raise ConfigError(key, "missing: set the dataset folder")
    path = Path(str(root)).expanduser()
    if not path.is_dir():
        raise ConfigError(key, f"folder {path} does not exist")
    return path


def require_file(path: Path, key: str, hint: str) -> Path:
    """``path`` if it is a file, else a ConfigError naming ``key`` and what the file is (``hint``)."""
    if not path.is_file():
        raise ConfigError(key, f"{path} not found ({hint})")
    return path


def read_csv_rows(path: Path, key: str, columns: Sequence[str]) -> list[dict[str, str]]:
    """Rows of a CSV with a header (BOM tolerated), checked to have ``columns``; errors name ``key``."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            rows = list(reader)
            header = reader.fieldnames or []
    except (csv.Error, UnicodeDecodeError) as err:
        raise ConfigError(key, f"{path}: unreadable CSV ({err})") from None
    missing = [c for c in columns if c not in header]
    if missing:
        raise ConfigError(key, f"{path}: no `{missing[0]}` column (has {', '.join(header) or 'none'})")
    return rows


def require_split(split: str, allowed: Sequence[str]) -> None:
    if split not in allowed:
        raise ConfigError("split", f"`{split}` is not one of {tuple(allowed)}")

