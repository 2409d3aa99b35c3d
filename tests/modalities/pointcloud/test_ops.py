import importlib.util
import logging
import sys
import types

import numpy as np
import pytest
import torch

from omniclip.modalities.pointcloud import ops
from omniclip.modalities.pointcloud.ops import ball_query, farthest_point_sample, fps_backend, gather_points, knn

HAS_FPSAMPLE = importlib.util.find_spec("fpsample") is not None
needs_fpsample = pytest.mark.skipif(not HAS_FPSAMPLE, reason="fpsample not installed (pip install fpsample)")
# Every backend this machine can run on CPU tensors (Triton's are tested through its interpreter
# in test_kernels.py and on CUDA below).
CPU_BACKENDS = ["torch", pytest.param("fpsample", marks=needs_fpsample), "auto"]


def loop_fps(xyz: torch.Tensor, npoint: int, start: list[int]) -> torch.Tensor:
    """One cloud at a time, as the reference datasets do it: masked update of the running minimum."""
    out = []
    for cloud, first in zip(xyz, start):
        dist = torch.full((cloud.shape[0],), 1e10)
        chosen, far = [], first
        for _ in range(npoint):
            chosen.append(far)
            d = ((cloud - cloud[far]) ** 2).sum(-1)
            mask = d < dist
            dist[mask] = d[mask]
            far = int(dist.argmax())
        out.append(chosen)
    return torch.tensor(out)


def loop_knn(query: torch.Tensor, points: torch.Tensor, k: int) -> torch.Tensor:
    out = torch.empty(query.shape[0], query.shape[1], k, dtype=torch.long)
    for b in range(query.shape[0]):
        for m in range(query.shape[1]):
            d = [float(((points[b, n] - query[b, m]) ** 2).sum()) for n in range(points.shape[1])]
            out[b, m] = torch.tensor(sorted(range(len(d)), key=lambda n: (d[n], n))[:k])
    return out


def loop_ball_query(xyz: torch.Tensor, centres: torch.Tensor, radius: float, nsample: int) -> torch.Tensor:
    out = torch.empty(centres.shape[0], centres.shape[1], nsample, dtype=torch.long)
    for b in range(centres.shape[0]):
        for m in range(centres.shape[1]):
            inside = [n for n in range(xyz.shape[1]) if float(((xyz[b, n] - centres[b, m]) ** 2).sum()) <= radius**2]
            inside = inside[:nsample]
            out[b, m] = torch.tensor(inside + [inside[0]] * (nsample - len(inside)))
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fps_with_fixed_start_equals_reference_loop(seed):
    gen = torch.Generator().manual_seed(seed)
    xyz = torch.randn(3, 300, 3, generator=gen)
    start = torch.randint(0, 300, (3,), generator=gen)
    got = farthest_point_sample(xyz, 40, start_idx=start)
    assert got.dtype == torch.long and got.shape == (3, 40)
    assert torch.equal(got, loop_fps(xyz, 40, start.tolist()))
    assert torch.equal(farthest_point_sample(xyz, 40, start_idx=0), loop_fps(xyz, 40, [0, 0, 0]))


def test_fps_random_start_follows_generator():
    xyz = torch.rand(4, 200, 3)
    a = farthest_point_sample(xyz, 16, generator=torch.Generator().manual_seed(7))
    b = farthest_point_sample(xyz, 16, generator=torch.Generator().manual_seed(7))
    first = torch.randint(0, 200, (4,), generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b)
    assert torch.equal(a[:, 0], first)
    assert torch.equal(a, loop_fps(xyz, 16, first.tolist()))


def test_fps_picks_distinct_points_and_spreads_them():
    xyz = torch.rand(2, 500, 3, generator=torch.Generator().manual_seed(3))
    idx = farthest_point_sample(xyz, 500, start_idx=0)
    assert all(len(set(row.tolist())) == 500 for row in idx)  # all points before any repeat


def test_fps_half_precision_input_matches_float():
    xyz = torch.rand(2, 256, 3, generator=torch.Generator().manual_seed(4)).half()
    assert torch.equal(
        farthest_point_sample(xyz, 32, start_idx=5), farthest_point_sample(xyz.float(), 32, start_idx=5)
    )


def test_fps_errors():
    xyz = torch.rand(2, 10, 3)
    with pytest.raises(ValueError, match="cannot pick 11 centres from 10 points"):
        farthest_point_sample(xyz, 11)
    with pytest.raises(ValueError, match=r"shape \[B, N, 3\], got \[10, 3\]"):
        farthest_point_sample(xyz[0], 4)
    with pytest.raises(ValueError, match=r"start_idx must be .* in \[0, 10\)"):
        farthest_point_sample(xyz, 4, start_idx=10)
    with pytest.raises(ValueError, match=r"start_idx must be an int or a \[2\] tensor"):
        farthest_point_sample(xyz, 4, start_idx=torch.tensor([0, 1, 2]))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_knn_equals_reference_loop(seed):
    gen = torch.Generator().manual_seed(seed)
    points = torch.randn(2, 60, 3, generator=gen)
    query = torch.randn(2, 7, 3, generator=gen)
    assert torch.equal(knn(query, points, 5), loop_knn(query, points, 5))


def test_knn_query_point_is_its_own_first_neighbour():
    points = torch.rand(3, 400, 3, generator=torch.Generator().manual_seed(5)) * 1e-3 + 100.0
    query_idx = torch.arange(0, 400, 7)
    idx = knn(points[:, query_idx], points, 4)
    assert torch.equal(idx[..., 0], query_idx.expand(3, -1))


def test_knn_ties_come_in_index_order():
    # Points 0..3 all at distance 1 from the origin query, point 4 farther.
    points = torch.tensor([[[1.0, 0, 0], [0, 1.0, 0], [-1.0, 0, 0], [0, -1.0, 0], [2.0, 0, 0]]])
    assert knn(torch.zeros(1, 1, 3), points, 5).tolist() == [[[0, 1, 2, 3, 4]]]


def test_knn_errors():
    with pytest.raises(ValueError, match="cannot find 9 neighbours among 8 points"):
        knn(torch.rand(1, 2, 3), torch.rand(1, 8, 3), 9)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ball_query_equals_reference_loop(seed):
    gen = torch.Generator().manual_seed(seed)
    xyz = torch.rand(2, 120, 3, generator=gen)
    centres = xyz[:, :9]
    got = ball_query(xyz, centres, 0.3, 10)
    assert torch.equal(got, loop_ball_query(xyz, centres, 0.3, 10))
    inside = (torch.cdist(centres, xyz) <= 0.3).sum(-1)
    assert (inside < 10).any() and (inside > 10).any()  # both padded and truncated balls occur


def test_ball_query_empty_ball_falls_back_to_nearest_point():
    xyz = torch.tensor([[[0.0, 0, 0], [1.0, 0, 0], [5.0, 0, 0]]])
    got = ball_query(xyz, torch.tensor([[[4.0, 0, 0]]]), 0.5, 2)
    assert got.tolist() == [[[2, 2]]]


def test_ball_query_errors():
    with pytest.raises(ValueError, match="cannot take 5 samples from 4 points"):
        ball_query(torch.rand(1, 4, 3), torch.rand(1, 2, 3), 0.1, 5)


def test_gather_points_any_index_shape():
    points = torch.arange(2 * 5 * 4, dtype=torch.float32).reshape(2, 5, 4)
    idx = torch.tensor([[[0, 4], [2, 2]], [[1, 3], [0, 0]]])
    got = gather_points(points, idx)
    assert got.shape == (2, 2, 2, 4)
    for b in range(2):
        assert torch.equal(got[b], points[b][idx[b]])
    with pytest.raises(ValueError, match="idx batch size 1 does not match points batch size 2"):
        gather_points(points, idx[:1])


@pytest.fixture
def without_numba(monkeypatch):
    """The CPU choice as it is where numba is not installed: fpsample, else the torch loop (with
    numba, "auto" takes numba first; see tests/test_fps_cpu.py)."""
    monkeypatch.setattr(ops, "_numba_fps", lambda: None)


def lattice(side: int) -> torch.Tensor:
    """[1, side**3, 3] integer grid: squared distances are small integers, so exact ties abound."""
    axis = torch.arange(float(side))
    return torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(1, -1, 3)


def tie_clouds() -> list[tuple[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(11)
    distinct = torch.rand(2, 40, 3, generator=gen)
    shuffled = lattice(5)[:, torch.randperm(125, generator=gen)]
    return [
        ("lattice", lattice(5)),
        ("shuffled lattice", shuffled),
        # Once the 40 distinct points are taken every running minimum is 0: a 3-way tie each time.
        ("duplicates", distinct.repeat(1, 3, 1)),
        ("all equal", torch.full((1, 30, 3), 0.25)),
        # Mirror pairs around the origin: equal distances with distinct coordinates.
        ("mirrored", torch.cat([distinct, -distinct], dim=1)),
    ]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("num_points,npoint", [(1, 1), (2, 2), (3, 2), (17, 17), (300, 64), (1000, 1000), (4099, 100)])
def test_fps_backends_equal_reference_loop(backend, num_points, npoint):
    gen = torch.Generator().manual_seed(num_points)
    xyz = torch.randn(3, num_points, 3, generator=gen) * 10
    start = torch.randint(0, num_points, (3,), generator=gen)
    got = farthest_point_sample(xyz, npoint, start_idx=start, backend=backend)
    assert got.dtype == torch.long and got.shape == (3, npoint)
    assert torch.equal(got, loop_fps(xyz, npoint, start.tolist()))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("name,cloud", tie_clouds(), ids=[name for name, _ in tie_clouds()])
def test_fps_ties_take_the_first_index(backend, name, cloud):
    num_points = cloud.shape[1]
    for first in (0, num_points // 2, num_points - 1):
        start = torch.full((cloud.shape[0],), first)
        got = farthest_point_sample(cloud, num_points, start_idx=start, backend=backend)
        assert torch.equal(got, loop_fps(cloud, num_points, start.tolist())), (name, first)
    if name == "all equal":  # every later centre is a tie of all points: the first index, always
        assert got[0, 1:].eq(0).all()


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_fps_rounds_every_step_like_the_reference(backend):
    # The probe's two points are ordered one way by (dx*dx + dy*dy) + dz*dz rounded at every step
    # and the other way with fused multiply-adds (addcmul on AVX2 CPUs).
    probe = torch.tensor([ops.ROUNDING_PROBE])
    assert loop_fps(probe, 3, [0]).tolist() == [[0, 2, 1]]
    assert farthest_point_sample(probe, 3, start_idx=0, backend=backend).tolist() == [[0, 2, 1]]


def test_fps_default_start_draws_from_global_rng_for_every_backend():
    xyz = torch.rand(4, 500, 3, generator=torch.Generator().manual_seed(1))
    results = []
    for backend in ["torch", "auto"] + (["fpsample"] if HAS_FPSAMPLE else []):
        torch.manual_seed(123)
        results.append(farthest_point_sample(xyz, 32, backend=backend))
        after = torch.rand(1)  # the RNG advanced by exactly one [4] randint draw
        torch.manual_seed(123)
        first = torch.randint(0, 500, (4,))
        assert torch.equal(results[-1][:, 0], first), backend
        assert torch.equal(torch.rand(1), after), backend
    assert all(torch.equal(r, results[0]) for r in results)


@needs_fpsample
def test_fps_cpu_backend_is_fpsample_and_logged(caplog, without_numba):
    ops._fpsample_module.cache_clear()
    with caplog.at_level(logging.INFO, logger=ops.__name__):
        assert fps_backend("cpu") == "fpsample"
        assert fps_backend("cpu") == "fpsample"
    assert [r.getMessage() for r in caplog.records] == [
        f"farthest_point_sample on CPU: fpsample {sys.modules['fpsample'].__version__}"
    ]
    assert fps_backend("cpu", torch.float64) == "torch"  # fpsample computes in float32 only


@needs_fpsample
def test_fps_auto_takes_the_batched_torch_loop_for_large_batches_on_several_threads(monkeypatch, without_numba):
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert fps_backend("cpu", batch=ops.FPSAMPLE_MAX_BATCH) == "fpsample"
        assert fps_backend("cpu", batch=ops.FPSAMPLE_MAX_BATCH + 1) == "torch"
        torch.set_num_threads(1)  # fpsample's one core is then all the loop would have
        assert fps_backend("cpu", batch=64) == "fpsample"
        torch.set_num_threads(2)
        used, loop = [], ops._fps_torch
        monkeypatch.setattr(ops, "_fps_torch", lambda *args: used.append(args[0].shape) or loop(*args))
        xyz = torch.rand(ops.FPSAMPLE_MAX_BATCH + 1, 64, 3, generator=torch.Generator().manual_seed(0))
        got = farthest_point_sample(xyz, 8, start_idx=0)
        assert used == [(3, ops.FPSAMPLE_MAX_BATCH + 1, 64)]  # the batch size reaches the choice
        assert torch.equal(got, farthest_point_sample(xyz, 8, start_idx=0, backend="fpsample"))
    finally:
        torch.set_num_threads(threads)


def test_fps_falls_back_to_torch_when_fpsample_is_missing(monkeypatch, caplog, without_numba):
    monkeypatch.setitem(sys.modules, "fpsample", None)  # makes "import fpsample" raise ImportError
    ops._fpsample_module.cache_clear()
    try:
        with caplog.at_level(logging.INFO, logger=ops.__name__):
            assert fps_backend("cpu") == "torch"
            xyz = torch.rand(2, 300, 3, generator=torch.Generator().manual_seed(2))
            assert torch.equal(farthest_point_sample(xyz, 20, start_idx=4), loop_fps(xyz, 20, [4, 4]))
            with pytest.raises(RuntimeError, match="fpsample is not importable"):
                farthest_point_sample(xyz, 20, backend="fpsample")
        messages = [r.getMessage() for r in caplog.records]
        assert len(messages) == 1 and "fpsample is not importable" in messages[0]
        assert "using the torch loop" in messages[0]
    finally:
        ops._fpsample_module.cache_clear()


@pytest.mark.parametrize(
    "fake,problem",
    [
        # A build whose tie rule differs (first of equal maxima, like torch): through our point
        # reversal it keeps the last one, so only tie-rich clouds notice.
        (lambda pc, n, start_idx: loop_fps(torch.from_numpy(pc)[None], n, [start_idx])[0].numpy(), "other indices"),
        (lambda pc, n, start_idx: np.arange(n), "other indices"),
        (lambda pc, n, start_idx: (_ for _ in ()).throw(TypeError("new signature")), "failed its self-check"),
    ],
)
def test_fps_rejects_an_fpsample_that_fails_the_self_check(monkeypatch, caplog, fake, problem, without_numba):
    module = types.SimpleNamespace(__version__="9.9", fps_sampling=fake)
    monkeypatch.setitem(sys.modules, "fpsample", module)
    ops._fpsample_module.cache_clear()
    try:
        with caplog.at_level(logging.INFO, logger=ops.__name__):
            assert fps_backend("cpu") == "torch"
        (record,) = caplog.records
        assert record.levelno == logging.WARNING and problem in record.getMessage()
    finally:
        ops._fpsample_module.cache_clear()


@needs_fpsample
def test_fps_auto_takes_the_torch_loop_where_fpsample_would_differ():
    # Points beyond sqrt(1e10) = 1e5 of the first centre keep the 1e10 start value in the
    # reference, so they tie and the first wins; fpsample (starting at +inf) would take the truly
    # farthest, index 2.
    far_apart = torch.tensor([[[0.0, 0, 0], [2e5, 0, 0], [3e5, 0, 0]]])
    assert loop_fps(far_apart, 2, [0]).tolist() == [[0, 1]]
    assert farthest_point_sample(far_apart, 2, start_idx=0).tolist() == [[0, 1]]
    with pytest.raises(ValueError, match="cannot reproduce the reference"):
        farthest_point_sample(far_apart, 2, start_idx=0, backend="fpsample")
    # NaN: the torch loop's minimum keeps it and its argmax ranks it first (the masked update of
    # loop_fps would not: garbage in, but the same garbage from every backend); fpsample skips it.
    with_nan = torch.rand(1, 50, 3, generator=torch.Generator().manual_seed(3))
    with_nan[0, 17, 1] = float("nan")
    reference = farthest_point_sample(with_nan, 10, start_idx=0, backend="torch")
    assert reference.tolist() == [[0, 17] + [0] * 8]
    assert torch.equal(farthest_point_sample(with_nan, 10, start_idx=0), reference)
    with pytest.raises(ValueError, match="non-finite"):
        farthest_point_sample(with_nan, 10, start_idx=0, backend="fpsample")
    # float64 keeps float64 distances, which fpsample cannot.
    xyz = torch.rand(2, 200, 3, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    assert torch.equal(farthest_point_sample(xyz, 30, start_idx=1), farthest_point_sample(xyz, 30, start_idx=1, backend="torch"))
    with pytest.raises(ValueError, match="float32"):
        farthest_point_sample(xyz, 30, backend="fpsample")


def test_fps_unknown_backend():
    with pytest.raises(ValueError, match="backend must be one of"):
        farthest_point_sample(torch.rand(1, 10, 3), 2, backend="numpy")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    xyz = torch.rand(2, 2000, 3, generator=torch.Generator().manual_seed(9))
    cuda = xyz.cuda()
    fps = farthest_point_sample(xyz, 64, start_idx=0)
    assert torch.equal(farthest_point_sample(cuda, 64, start_idx=0).cpu(), fps)
    centres = gather_points(xyz, fps)
    assert torch.equal(knn(centres.cuda(), cuda, 16).cpu(), knn(centres, xyz, 16))
    assert torch.equal(ball_query(cuda, centres.cuda(), 0.1, 16).cpu(), ball_query(xyz, centres, 0.1, 16))
    gen = torch.Generator(device="cuda").manual_seed(0)
    assert farthest_point_sample(cuda, 8, generator=gen).device.type == "cuda"


@needs_fpsample
def test_fps_fpsample_takes_clouds_that_require_grad_and_self_checks_under_a_default_device(without_numba):
    xyz = torch.rand(2, 100, 3, generator=torch.Generator().manual_seed(8)).requires_grad_()
    ops._fpsample_module.cache_clear()
    try:
        with torch.device("meta"):  # the self-check's own tensors must still be CPU tensors
            assert fps_backend("cpu") == "fpsample"
        got = farthest_point_sample(xyz, 10, start_idx=3, backend="fpsample")
    finally:
        ops._fpsample_module.cache_clear()
    assert torch.equal(got, loop_fps(xyz.detach(), 10, [3, 3]))
