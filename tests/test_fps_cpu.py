"""The numba FPS backend (modalities/pointcloud/fps_cpu.py): exactly the reference's indices.

The reference is ``farthest_point_sample(..., backend="torch")`` (itself tested equal to the
point-by-point loop in tests/modalities/pointcloud/test_ops.py). Small clouds are also run through
``fps_clouds`` with blocks of a few points, so that they have many blocks and the pruning, the
per-block maxima and the tie rule across blocks are all exercised.
"""

from __future__ import annotations

import importlib.util
import logging
import subprocess
import sys

import numpy as np
import pytest
import torch

from omniclip.modalities.pointcloud import ops
from omniclip.modalities.pointcloud.ops import farthest_point_sample, fps_backend

pytestmark = pytest.mark.skipif(importlib.util.find_spec("numba") is None, reason="numba not installed (pip install numba)")


def reference(xyz: torch.Tensor, npoint: int, start) -> torch.Tensor:
    return farthest_point_sample(xyz, npoint, start_idx=start, backend="torch")


def blocks_of(xyz: torch.Tensor, npoint: int, start: torch.Tensor, block: int, margin: float | None = None,
              threads: int = 2) -> torch.Tensor:
    """fps_clouds on ``xyz`` with ``block`` points per block (the public path uses BLOCK)."""
    from omniclip.modalities.pointcloud import fps_cpu

    planes = xyz.permute(2, 0, 1).contiguous().numpy()
    margin = fps_cpu.MARGIN if margin is None else margin
    return torch.from_numpy(fps_cpu.fps_clouds(planes, start.numpy(), npoint, threads, block, margin))


def lattice(side: int, spacing: float = 1.0) -> torch.Tensor:
    """[1, side**3, 3] grid: squared distances are few distinct values, so exact ties abound."""
    axis = torch.arange(float(side)) * spacing
    return torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(1, -1, 3)


def tie_clouds() -> list[tuple[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(5)
    distinct = torch.rand(2, 50, 3, generator=gen)
    return [
        ("lattice", lattice(6)),
        ("shuffled lattice", lattice(6)[:, torch.randperm(216, generator=gen)]),
        ("coarse grid, random order", torch.randint(0, 4, (2, 300, 3), generator=gen).float() * 0.25),
        ("duplicates", distinct.repeat(1, 4, 1)),
        ("all equal", torch.full((2, 70, 3), -1.5)),
        ("mirrored", torch.cat([distinct, -distinct], dim=1)),
    ]


@pytest.mark.parametrize("num_points,npoint", [(1, 1), (2, 2), (31, 31), (33, 5), (300, 64), (1000, 1000), (4099, 300)])
def test_numba_equals_reference_on_random_clouds(num_points, npoint):
    gen = torch.Generator().manual_seed(num_points)
    xyz = torch.randn(3, num_points, 3, generator=gen) * 10
    start = torch.randint(0, num_points, (3,), generator=gen)
    want = reference(xyz, npoint, start)
    assert torch.equal(farthest_point_sample(xyz, npoint, start_idx=start, backend="numba"), want)
    for block in (1, 3, 8):
        assert torch.equal(blocks_of(xyz, npoint, start, block), want), block
    assert torch.equal(blocks_of(xyz, npoint, start, 5, threads=1), want)


@pytest.mark.parametrize("name,cloud", tie_clouds(), ids=[name for name, _ in tie_clouds()])
def test_numba_ties_take_the_first_index(name, cloud):
    batch, num_points, _ = cloud.shape
    for first in (0, num_points // 2, num_points - 1):
        start = torch.full((batch,), first)
        want = reference(cloud, num_points, start)  # npoint == N: every point, ties to the end
        assert torch.equal(farthest_point_sample(cloud, num_points, start_idx=start, backend="numba"), want), first
        for block in (1, 4, 7):
            assert torch.equal(blocks_of(cloud, num_points, start, block), want), (first, block)
    if name == "all equal":  # after the start every running minimum is 0: the first index, always
        assert want[:, 1:].eq(0).all()


def test_numba_per_cloud_start_indices_and_random_start():
    gen = torch.Generator().manual_seed(2)
    xyz = torch.rand(5, 700, 3, generator=gen)
    start = torch.tensor([0, 699, 3, 350, 3])
    got = farthest_point_sample(xyz, 100, start_idx=start, backend="numba")
    assert torch.equal(got[:, 0], start)
    assert torch.equal(got, reference(xyz, 100, start))
    # The random first centre comes from the generator, the same draw as the torch backend.
    drawn = farthest_point_sample(xyz, 50, generator=torch.Generator().manual_seed(9), backend="numba")
    assert torch.equal(drawn, farthest_point_sample(xyz, 50, generator=torch.Generator().manual_seed(9), backend="torch"))


def test_numba_dense_cluster_with_far_outliers():
    # Almost every block lies inside the cluster, far below the outliers' distances: after the
    # outliers are taken most centres fall in the cluster and skip most of it (pruning-heavy).
    gen = torch.Generator().manual_seed(3)
    cluster = torch.randn(2, 3000, 3, generator=gen) * 1e-2
    outliers = (torch.rand(2, 40, 3, generator=gen) - 0.5) * 2e3
    xyz = torch.cat([cluster[:, :1500], outliers, cluster[:, 1500:]], dim=1)
    start = torch.tensor([0, 1520])
    want = reference(xyz, 400, start)
    assert set(want[0, :41].tolist()) >= set(range(1500, 1540))  # the outliers come first
    assert torch.equal(farthest_point_sample(xyz, 400, start_idx=start, backend="numba"), want)
    assert torch.equal(blocks_of(xyz, 400, start, 16), want)


def test_numba_rounds_every_step_like_the_reference():
    probe = torch.tensor([ops.ROUNDING_PROBE])
    assert farthest_point_sample(probe, 3, start_idx=0, backend="numba").tolist() == [[0, 2, 1]]
    assert blocks_of(probe, 3, torch.tensor([0]), 1).tolist() == [[0, 2, 1]]


def test_the_skip_bound_needs_its_rounding_margin():
    # Found by a search over shifted float32 grids: the block of point 1 (one point per block) is
    # exactly (in float64) as far from centre 3 as point 1's running minimum, but its float32
    # distance rounds below it. Without the margin the block is skipped and point 1 keeps a running
    # minimum above point 3's, so the order of the last two centres flips.
    cloud = torch.tensor([[
        [0.8086601495742798, 0.42828837037086487, 0.6383875608444214],
        [0.20866012573242188, 0.7282883524894714, 0.6383875608444214],
        [0.20866012573242188, 1.0282883644104004, 0.03838757053017616],
        [0.20866012573242188, 0.42828837037086487, 0.3383875787258148],
    ]])
    start = torch.tensor([0])
    assert reference(cloud, 4, start).tolist() == [[0, 2, 3, 1]]
    assert blocks_of(cloud, 4, start, 1, margin=0.0).tolist() == [[0, 2, 1, 3]]  # the case is sensitive
    assert blocks_of(cloud, 4, start, 1).tolist() == [[0, 2, 3, 1]]


def test_auto_picks_numba_on_cpu_and_calls_it(monkeypatch):
    from omniclip.modalities.pointcloud import fps_cpu

    assert fps_backend("cpu") == "numba"
    assert fps_backend("cpu", batch=64) == "numba"
    assert fps_backend("cpu", torch.float64) == "torch"  # float64 keeps float64 distances
    calls, kernel = [], fps_cpu.fps_clouds
    monkeypatch.setattr(fps_cpu, "fps_clouds", lambda planes, *args: calls.append(planes.shape) or kernel(planes, *args))
    xyz = torch.rand(3, 200, 3, generator=torch.Generator().manual_seed(4))
    got = farthest_point_sample(xyz, 20, start_idx=1)
    assert calls == [(3, 3, 200)] and torch.equal(got, reference(xyz, 20, 1))
    # Input it cannot reproduce takes the torch loop: points beyond 1e5 keep the 1e10 start value.
    far_apart = torch.tensor([[[0.0, 0, 0], [2e5, 0, 0], [3e5, 0, 0]]])
    assert farthest_point_sample(far_apart, 2, start_idx=0).tolist() == [[0, 1]] and len(calls) == 1
    with pytest.raises(ValueError, match="backend='numba' cannot reproduce the reference"):
        farthest_point_sample(far_apart, 2, start_idx=0, backend="numba")
    with pytest.raises(ValueError, match="backend='numba' needs a CPU tensor with float32"):
        farthest_point_sample(xyz.double(), 2, backend="numba")


def test_falls_back_with_one_log_line_when_numba_is_missing(monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "numba", None)  # makes "import numba" raise ImportError
    monkeypatch.delitem(sys.modules, "omniclip.modalities.pointcloud.fps_cpu", raising=False)
    ops._numba_fps.cache_clear()
    try:
        with caplog.at_level(logging.INFO, logger=ops.__name__):
            assert ops._numba_fps() is None
            assert fps_backend("cpu") in ("fpsample", "torch")
        numba_lines = [r.getMessage() for r in caplog.records if "numba" in r.getMessage()]
        assert numba_lines == [
            "farthest_point_sample on CPU: numba is not importable (ModuleNotFoundError: import of numba halted; "
            "None in sys.modules); "
            "falling back to fpsample or the torch loop"
        ]
        xyz = torch.rand(2, 300, 3, generator=torch.Generator().manual_seed(2))
        assert torch.equal(farthest_point_sample(xyz, 20, start_idx=4), reference(xyz, 20, 4))
        with pytest.raises(RuntimeError, match="backend='numba' asked for, but numba is not importable"):
            farthest_point_sample(xyz, 20, backend="numba")
    finally:
        ops._numba_fps.cache_clear()


def test_a_kernel_that_fails_the_self_check_is_not_used(monkeypatch, caplog):
    from omniclip.modalities.pointcloud import fps_cpu

    kernel = fps_cpu.fps_clouds
    # Last instead of first of equal maxima: the reversed cloud's indices, mapped back.
    def last_of_ties(planes, start, npoint, threads):
        last = planes.shape[2] - 1
        return last - kernel(np.ascontiguousarray(planes[:, :, ::-1]), last - start, npoint, threads)

    monkeypatch.setattr(fps_cpu, "fps_clouds", last_of_ties)
    ops._numba_fps.cache_clear()
    try:
        with caplog.at_level(logging.INFO, logger=ops.__name__):
            assert ops._numba_fps() is None
        (record,) = [r for r in caplog.records if "numba" in r.getMessage()]
        assert record.levelno == logging.WARNING and "gives other indices than the reference" in record.getMessage()
    finally:
        ops._numba_fps.cache_clear()


def test_importing_compiles_nothing():
    code = (
        "import sys\n"
        "import omniclip.modalities.pointcloud.ops\n"
        "assert 'numba' not in sys.modules, 'ops imported numba'\n"
        "from omniclip.modalities.pointcloud import fps_cpu\n"
        "assert fps_cpu.fps_cloud.signatures == [], fps_cpu.fps_cloud.signatures\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
