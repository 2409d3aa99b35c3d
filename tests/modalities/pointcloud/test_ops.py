import pytest
import torch

from omniclip.modalities.pointcloud.ops import ball_query, farthest_point_sample, gather_points, knn


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
