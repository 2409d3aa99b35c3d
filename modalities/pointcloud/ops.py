"""Batched point-cloud primitives (CPU and CUDA).

Every function takes a batch ``[B, N, ...]`` and works on the whole batch at once. Farthest point
sampling, sequential by nature, has four backends that return the same indices:

- ``"torch"``: the reference, a batched loop with one Python iteration per centre (any device);
- ``"numba"``: exact FPS pruned by spatial blocks (``fps_cpu.py``): only points near a new centre
  are updated; one cloud per thread, on torch's thread count (CPU, float32; ``pointcloud`` extra);
- ``"fpsample"``: the compiled `fpsample <https://pypi.org/project/fpsample/>`_ library, one cloud
  at a time, every point for every centre (CPU, float32; the ``pointcloud`` extra installs it);
- ``"triton"``: one Triton kernel launch for all centres (CUDA; see ``kernels.py``).

``farthest_point_sample(..., backend="auto")`` picks Triton for CUDA tensors. On CPU it picks
numba (8192 -> 512 on a shared 2-core machine: 8 clouds 18-33x the reference algorithm, 35x with
one thread, one cloud ~40x; see BENCHMARKS.md); without numba, fpsample for up to
`FPSAMPLE_MAX_BATCH` clouds (or any batch when torch runs one thread) and the torch loop for
larger batches. A compiled backend is skipped when it is missing, fails its
self-check, or cannot reproduce the reference for the given input (then the torch loop runs);
:func:`fps_backend` says which one runs.
"""

from __future__ import annotations

import functools
import importlib
import logging
from typing import Literal

import numpy as np
import torch
from torch import Tensor

log = logging.getLogger(__name__)

# Running-minimum start value of the reference implementations (Point-BERT, PointNet++).
_FAR = 1e10

#: Used only where numba is missing (numba beats both at every batch size).
#: fpsample runs one cloud after another on one core (13 ms per 8192 -> 512 cloud here); the torch
#: loop pays ~27 ms of per-centre op overhead once for the whole batch and shares the rest across
#: torch's threads. Measured on the quiet 2-core machine (ms, torch loop / fpsample): batch 1 38 / 13,
#: 2 48 / 26, 4 68 / 52, 8 77 / 102 with two threads; with one thread fpsample wins up to 8 (114 / 103).
FPSAMPLE_MAX_BATCH = 4

FpsBackend = Literal["auto", "torch", "numba", "fpsample", "triton"]
_COMPILED_CPU = ("numba", "fpsample")


def _check_cloud(name: str, xyz: Tensor) -> None:
    if xyz.dim() != 3 or xyz.shape[-1] != 3:
        raise ValueError(f"{name} must have shape [B, N, 3], got {list(xyz.shape)}")


def _distance_dtype(xyz: Tensor) -> torch.dtype:
    # Half precision cannot hold the 1e10 sentinel nor order close distances reliably.
    return xyz.dtype if xyz.dtype == torch.float64 else torch.float32


def farthest_point_sample(
    xyz: Tensor,
    npoint: int,
    start_idx: int | Tensor | None = None,
    generator: torch.Generator | None = None,
    backend: FpsBackend = "auto",
) -> Tensor:
    """Indices [B, npoint] of ``npoint`` farthest-point-sampled centres of each cloud in ``xyz``.

    Same rule as the Point-BERT / PointNet++ reference: keep, for every point, the minimum squared
    distance to the centres chosen so far (starting at 1e10) and take the arg-max as the next
    centre; of equal maxima the lowest index wins. Squared distances are ``(dx*dx + dy*dy) + dz*dz``
    with every step rounded (no fused multiply-add), in float32 (float64 for float64 input), so
    every backend and device gives the same indices. The first centre is drawn uniformly with
    ``generator`` (the global RNG of ``xyz``'s device when None) unless ``start_idx`` (an int for
    all clouds or a LongTensor [B]) fixes it; pass 0 for reproducible evaluation. The draw is the
    same whichever backend runs, so seeded runs and resumes do not depend on what is installed.

    ``backend`` forces one implementation ("torch" is the reference); "auto" is described in the
    module docstring.
    """
    _check_cloud("xyz", xyz)
    batch, num_points, _ = xyz.shape
    if npoint < 1:
        raise ValueError(f"npoint must be positive, got {npoint}")
    if num_points < npoint:
        raise ValueError(
            f"farthest_point_sample: cannot pick {npoint} centres from {num_points} points"
        )
    device = xyz.device
    if start_idx is None:
        gen_device = generator.device if generator is not None else device
        start = torch.randint(0, num_points, (batch,), generator=generator, device=gen_device)
    else:
        start = torch.as_tensor(start_idx, dtype=torch.long)
        if start.dim() == 0:
            start = start.expand(batch)
        if start.shape != (batch,) or start.min() < 0 or start.max() >= num_points:
            raise ValueError(
                f"start_idx must be an int or a [{batch}] tensor in [0, {num_points}), "
                f"got {start_idx!r}"
            )
    start = start.to(device=device, dtype=torch.long)
    # One contiguous [B, N] plane per coordinate (the torch loop's and the kernel's layout).
    # Detached: indices have no gradient, and the loop would otherwise record a graph per centre.
    planes = xyz.detach().to(_distance_dtype(xyz)).permute(2, 0, 1).contiguous()  # [3, B, N]

    chosen = _choose_backend(backend, planes)
    if chosen == "triton":
        from omniclip.modalities.pointcloud.kernels import fps_triton

        return fps_triton(planes, start, npoint)
    if chosen == "numba":
        return _numba_fps()(planes, start, npoint)
    if chosen == "fpsample":
        return _fps_fpsample(_fpsample_module(), planes, start, npoint)
    return _fps_torch(planes, start, npoint)


def fps_backend(device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32, batch: int = 1) -> str:
    """The backend ``farthest_point_sample(backend="auto")`` uses for ``batch`` clouds of this device
    and dtype.

    "numba" and "fpsample" on CPU also need finite coordinates spanning less than sqrt(5e9) (~7e4)
    units per cloud; other clouds take the torch loop, call by call.
    """
    device = torch.device(device)
    if device.type == "cuda":
        return "triton" if _triton_available() else "torch"
    if device.type == "cpu" and dtype != torch.float64:
        if _numba_fps() is not None:
            return "numba"
        if _fpsample_module() is not None and (batch <= FPSAMPLE_MAX_BATCH or torch.get_num_threads() == 1):
            return "fpsample"
    return "torch"


def _choose_backend(backend: FpsBackend, planes: Tensor) -> str:
    if backend == "auto":
        chosen = fps_backend(planes.device, planes.dtype, planes.shape[1])
        if chosen in _COMPILED_CPU and not _float32_can_reproduce(planes):
            chosen = "torch"
        return chosen
    if backend == "torch":
        return backend
    if backend in _COMPILED_CPU:
        if planes.device.type != "cpu" or planes.dtype != torch.float32:
            raise ValueError(f"backend={backend!r} needs a CPU tensor with float32 distances (not float64)")
        if (_numba_fps() if backend == "numba" else _fpsample_module()) is None:
            raise RuntimeError(
                f"backend={backend!r} asked for, but {backend} is not importable or failed its self-check "
                f"(pip install {backend}; the log says which)"
            )
        if not _float32_can_reproduce(planes):
            raise ValueError(
                f"backend={backend!r} cannot reproduce the reference for non-finite coordinates or clouds "
                "whose squared extent reaches the 1e10 running-minimum start"
            )
        return backend
    if backend == "triton":
        if not _triton_available():
            raise RuntimeError("backend='triton' asked for, but triton is not importable")
        return backend
    raise ValueError(f"backend must be one of auto, torch, numba, fpsample, triton; got {backend!r}")


def _fps_torch(planes: Tensor, start: Tensor, npoint: int) -> Tensor:
    """The reference loop: batched over clouds, one iteration per centre, buffers reused.

    One gather, then subtract / square / accumulate per axis + minimum + argmax, no allocation
    (17% faster on CPU than one [B, 3, N] difference tensor reduced over its axis). The square
    and the sum are separate ops on purpose: ``addcmul`` is a fused multiply-add on AVX2 CPUs and
    not elsewhere, which changed near-equal distances' order from machine to machine.
    """
    _, batch, num_points = planes.shape
    farthest = start.reshape(batch, 1)
    min_dist = torch.full((batch, num_points), _FAR, dtype=planes.dtype, device=planes.device)
    dist = torch.empty_like(min_dist)
    diff = torch.empty_like(min_dist)
    square = torch.empty_like(min_dist)
    centres = torch.empty(batch, npoint, dtype=torch.long, device=planes.device)
    for i in range(npoint):
        centres[:, i : i + 1] = farthest
        centre = planes.gather(2, farthest.expand(3, batch, 1))  # [3, B, 1]
        for axis, plane in enumerate(planes):
            torch.sub(plane, centre[axis], out=diff)
            if axis == 0:
                torch.mul(diff, diff, out=dist)
            else:
                torch.mul(diff, diff, out=square)
                dist.add_(square)
        torch.minimum(min_dist, dist, out=min_dist)
        farthest = min_dist.argmax(dim=1, keepdim=True)
    return centres


def _fps_fpsample(fpsample, planes: Tensor, start: Tensor, npoint: int) -> Tensor:
    """fpsample's exact FPS per cloud, fed the cloud in reverse point order.

    fpsample keeps the *last* of equal maxima (``>=`` in its arg-max scan) where the reference
    keeps the first; reversing the points turns one rule into the other, and every point's running
    minimum is computed from its own coordinates only, so nothing else changes. Its running
    minimum starts at +inf rather than 1e10, which agrees while every squared distance is below
    1e10 (``_float32_can_reproduce``). ``fpsample`` is the module (the self-check runs this
    before the module is accepted).
    """
    _, batch, num_points = planes.shape
    # [B, N, 3] with points reversed; fpsample converts to its own layout anyway.
    clouds = planes.flip(2).permute(1, 2, 0).numpy()
    last = num_points - 1
    out = np.empty((batch, npoint), dtype=np.int64)
    for b, first in enumerate(start.tolist()):
        out[b] = fpsample.fps_sampling(clouds[b], npoint, start_idx=last - first)
    return torch.from_numpy(last - out)


def _float32_can_reproduce(planes: Tensor) -> bool:
    """Whether the compiled CPU backends give the reference's indices for ``planes``: finite
    coordinates (numba orders running minima by their bit patterns, which NaN breaks) and no
    squared distance near the 1e10 start (fpsample starts at +inf instead)."""
    # amin/amax propagate NaN and inf turns the span into inf or NaN, so one finiteness test of
    # the squared span covers non-finite coordinates too. Half of 1e10 leaves room for rounding.
    span = (planes.amax(dim=2) - planes.amin(dim=2)).double().square().sum(dim=0)
    return bool(torch.isfinite(span).all()) and float(span.max()) < _FAR / 2


@functools.cache
def _triton_available() -> bool:
    try:
        import omniclip.modalities.pointcloud.kernels  # noqa: F401
    except ImportError as err:
        log.info("farthest_point_sample on CUDA: triton is not importable (%s); using the torch loop", err)
        return False
    log.info("farthest_point_sample on CUDA: Triton kernel")
    return True


@functools.cache
def _fpsample_module():  # -> module | None
    """fpsample if importable and it passes the self-check, else None (logged once either way)."""
    try:
        import fpsample
    except ImportError as err:
        log.info("farthest_point_sample on CPU: fpsample is not importable (%s); using the torch loop", err)
        return None
    problem = _self_check(functools.partial(_fps_fpsample, fpsample))
    if problem:
        log.warning("farthest_point_sample on CPU: fpsample %s %s; using the torch loop", fpsample.__version__, problem)
        return None
    log.info("farthest_point_sample on CPU: fpsample %s", fpsample.__version__)
    return fpsample


# Two points whose squared distances from the origin order one way when every step is rounded
# ((dx*dx + dy*dy) + dz*dz, the reference) and the other way with fused multiply-adds (found by a
# search over random float32 points): a build of fpsample that fuses would pick the wrong one.
ROUNDING_PROBE = (
    (0.0, 0.0, 0.0),
    (float.fromhex("0x1.b9baf0p-4"), float.fromhex("0x1.bb4858p-3"), float.fromhex("0x1.3a6500p-4")),
    (float.fromhex("0x1.089400p-9"), float.fromhex("0x1.cfd9a8p-3"), float.fromhex("0x1.d44380p-4")),
)


def _self_check(fps) -> str:
    """Compare a compiled backend ``fps(planes, start, npoint)`` with the torch loop on clouds made
    to expose differences: a fused-multiply-add probe, a lattice full of exact ties, duplicated
    points, a dense cluster with far outliers (most blocks skipped by numba's pruning), and one
    batch of two clouds. Returns what differs, or "" when all agree."""
    # Explicit CPU tensors: the first call may come under a `with torch.device("cuda"):` block.
    cpu = torch.device("cpu")
    probe = torch.tensor([ROUNDING_PROBE], device=cpu)
    axis = torch.arange(4.0, device=cpu)
    lattice = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(1, 64, 3)
    gen = torch.Generator().manual_seed(0)
    duplicated = torch.rand(1, 20, 3, generator=gen, device=cpu).repeat(1, 3, 1)
    cluster = torch.cat([torch.rand(1, 500, 3, generator=gen, device=cpu) * 1e-3, lattice * 10], dim=1)
    cases = [(probe, 3, 0), (lattice, 64, 21), (duplicated, 60, 7), (cluster, 200, 3)]
    # Two clouds at once: numba's backend shares a batch among threads.
    cases.append((torch.cat([lattice, lattice.flip(1)]), 40, 5))
    try:
        for cloud, npoint, first in cases:
            planes = cloud.permute(2, 0, 1).contiguous()
            start = torch.full((cloud.shape[0],), first, device=cpu)
            if not torch.equal(fps(planes, start, npoint), _fps_torch(planes, start, npoint)):
                return f"gives other indices than the reference on a {cloud.shape[1]}-point check cloud"
    except Exception as err:  # an incompatible version: any failure means "do not use it"
        return f"failed its self-check ({type(err).__name__}: {err})"
    return ""


@functools.cache
def _numba_fps():  # -> Callable[[Tensor, Tensor, int], Tensor] | None
    """The numba backend ``fps(planes, start, npoint)`` if numba imports and the backend passes the
    self-check (which compiles it, or loads it from numba's cache), else None; logged once."""
    try:  # import_module, not "from ... import": it re-imports when the module left sys.modules
        fps_cpu = importlib.import_module("omniclip.modalities.pointcloud.fps_cpu")
    except Exception as err:  # ImportError, or numba finding no writable cache directory
        log.info("farthest_point_sample on CPU: numba is not importable (%s: %s); falling back to fpsample or "
                 "the torch loop", type(err).__name__, err)
        return None
    import numba

    def fps(planes: Tensor, start: Tensor, npoint: int) -> Tensor:
        # One cloud per thread, on as many threads as torch may use.
        threads = torch.get_num_threads()
        return torch.from_numpy(fps_cpu.fps_clouds(planes.numpy(), start.contiguous().numpy(), npoint, threads))

    problem = _self_check(fps)
    if problem:
        log.warning("farthest_point_sample on CPU: numba %s %s; falling back to fpsample or the torch loop",
                    numba.__version__, problem)
        return None
    log.info("farthest_point_sample on CPU: numba %s (pruned exact FPS, %s)", numba.__version__, fps_cpu.__name__)
    return fps


def _pairwise_distance(query: Tensor, points: Tensor) -> Tensor:
    """Euclidean distances [B, M, N] from exact coordinate differences.

    The |q|^2 + |p|^2 - 2 q.p expansion is cheaper on paper but can rank a point's neighbour ahead
    of the point itself through rounding; the difference form gives exactly 0 for a point and
    itself and, on CPU, is also the faster kernel.
    """
    dtype = _distance_dtype(query)
    return torch.cdist(
        query.to(dtype), points.to(dtype), compute_mode="donot_use_mm_for_euclid_dist"
    )


def knn(query: Tensor, points: Tensor, k: int) -> Tensor:
    """Indices [B, M, k] of the ``k`` nearest ``points`` of each query, nearest first.

    A query that is itself one of ``points`` comes first (distance exactly 0). Neighbours at equal
    distance come in ascending index order; which of several points tied at the k-th distance
    is kept is left to ``torch.topk``.
    """
    _check_cloud("query", query)
    _check_cloud("points", points)
    if k < 1:
        raise ValueError(f"k must be positive, got {k}")
    if points.shape[1] < k:
        raise ValueError(f"knn: cannot find {k} neighbours among {points.shape[1]} points")
    dist, idx = _pairwise_distance(query, points).topk(k, dim=-1, largest=False, sorted=True)
    # topk orders equal distances arbitrarily: sort by index, then stably by distance.
    idx, order = idx.sort(dim=-1)
    order = dist.gather(-1, order).argsort(dim=-1, stable=True)
    return idx.gather(-1, order)


def ball_query(xyz: Tensor, centres: Tensor, radius: float, nsample: int) -> Tensor:
    """Indices [B, M, nsample] of points within ``radius`` of each centre (PointNet++ rule).

    The first ``nsample`` points in index order with distance <= radius; when fewer lie inside,
    the rest of the row repeats the first one found. A centre with no point inside (impossible
    when the centres are taken from ``xyz``) gets its nearest point instead of an invalid index.
    """
    _check_cloud("xyz", xyz)
    _check_cloud("centres", centres)
    num_points = xyz.shape[1]
    if nsample < 1:
        raise ValueError(f"nsample must be positive, got {nsample}")
    if num_points < nsample:
        raise ValueError(f"ball_query: cannot take {nsample} samples from {num_points} points")
    dist = _pairwise_distance(centres, xyz)
    # Outside points get key N, so the nsample smallest keys are the first points inside.
    arange = torch.arange(num_points, device=xyz.device, dtype=torch.int32)
    key = torch.where(dist <= radius, arange, num_points)
    key = key.topk(nsample, dim=-1, largest=False, sorted=True).values
    first = key[..., :1]
    empty = first == num_points
    if empty.any():
        first = torch.where(empty, dist.argmin(dim=-1, keepdim=True).to(key.dtype), first)
    return torch.where(key == num_points, first, key).long()


def gather_points(points: Tensor, idx: Tensor) -> Tensor:
    """``points[b, idx[b, ...]]`` for every cloud: [B, N, C] and [B, ...] -> [B, ..., C]."""
    if points.dim() != 3:
        raise ValueError(f"points must have shape [B, N, C], got {list(points.shape)}")
    if idx.shape[0] != points.shape[0]:
        raise ValueError(
            f"idx batch size {idx.shape[0]} does not match points batch size {points.shape[0]}"
        )
    batch, _, channels = points.shape
    flat = idx.reshape(batch, -1, 1).expand(-1, -1, channels)
    return points.gather(1, flat).reshape(*idx.shape, channels)
