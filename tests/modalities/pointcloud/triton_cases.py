"""Exact-index cases for the Triton kernels, run by test_kernels.py in a subprocess.

Not collected directly (no ``test_`` prefix): the kernels run either on CUDA or, with
TRITON_INTERPRET=1 set before triton is imported, on CPU tensors through Triton's interpreter,
and only a fresh process can choose. Interpreter cases stay tiny (it runs every lane in numpy).
"""

import pytest
import torch

triton = pytest.importorskip("triton")

from omniclip.modalities.pointcloud import ops  # noqa: E402
from omniclip.modalities.pointcloud.kernels import fps_triton, interpreting  # noqa: E402
from tests.modalities.pointcloud.test_ops import lattice, loop_fps, tie_clouds  # noqa: E402

if interpreting():
    DEVICE = torch.device("cpu")
elif torch.cuda.is_available():
    DEVICE = torch.device("cuda")
else:
    pytest.skip("needs CUDA or TRITON_INTERPRET=1", allow_module_level=True)


def kernel_fps(xyz: torch.Tensor, npoint: int, start: torch.Tensor, max_on_chip: int | None) -> torch.Tensor:
    """The kernel on DEVICE: through the public API, or directly to force the streamed path."""
    xyz, start = xyz.to(DEVICE), start.to(DEVICE)
    if max_on_chip is None:
        got = ops.farthest_point_sample(xyz, npoint, start_idx=start, backend="triton")
    else:
        planes = xyz.to(ops._distance_dtype(xyz)).permute(2, 0, 1).contiguous()
        got = fps_triton(planes, start, npoint, max_on_chip=max_on_chip)
    assert got.device.type == DEVICE.type and got.dtype == torch.long
    return got.cpu()


# (batch, points, centres, max_on_chip): None keeps the cloud on chip; a small power of two
# streams it in chunks (128 = exactly two chunks of 64; 300 leaves a partial last chunk).
RANDOM_CASES = [(3, 1, 1, None), (2, 5, 5, None), (3, 200, 50, None), (2, 128, 40, 64), (2, 300, 30, 64)]
if DEVICE.type == "cuda":
    RANDOM_CASES += [(8, 8192, 512, None), (4, 10000, 512, None), (2, 40000, 256, None), (2, 5000, 300, 1024)]


@pytest.mark.parametrize("batch,num_points,npoint,max_on_chip", RANDOM_CASES)
def test_fps_kernel_equals_reference(batch, num_points, npoint, max_on_chip):
    gen = torch.Generator().manual_seed(num_points)
    xyz = torch.randn(batch, num_points, 3, generator=gen) * 10
    start = torch.randint(0, num_points, (batch,), generator=gen)
    got = kernel_fps(xyz, npoint, start, max_on_chip)
    reference = loop_fps(xyz, npoint, start.tolist()) if num_points <= 300 else ops._fps_torch(
        xyz.permute(2, 0, 1).contiguous(), start, npoint
    )
    assert torch.equal(got, reference)


@pytest.mark.parametrize("max_on_chip", [None, 16])
@pytest.mark.parametrize("name,cloud", tie_clouds()[:1] + tie_clouds()[2:], ids=["lattice", "duplicates", "all equal", "mirrored"])
def test_fps_kernel_ties_take_the_first_index(name, cloud, max_on_chip):
    if DEVICE.type == "cpu" and name == "lattice":
        cloud = lattice(4)  # 64 points: the interpreter's budget
    num_points = cloud.shape[1]
    start = torch.full((cloud.shape[0],), num_points // 2)
    assert torch.equal(kernel_fps(cloud, num_points, start, max_on_chip), loop_fps(cloud, num_points, start.tolist()))


@pytest.mark.parametrize("max_on_chip", [None, 2])
def test_fps_kernel_rounds_every_step(max_on_chip):
    # On CUDA this fails if the kernel is compiled with fused multiply-adds (enable_fp_fusion).
    probe = torch.tensor([ops.ROUNDING_PROBE])
    assert kernel_fps(probe, 3, torch.tensor([0]), max_on_chip).tolist() == [[0, 2, 1]]


@pytest.mark.parametrize("max_on_chip", [None, 16])
def test_fps_kernel_matches_torch_loop_on_nan_and_far_points(max_on_chip):
    with_nan = torch.rand(2, 50, 3, generator=torch.Generator().manual_seed(3))
    with_nan[0, 17, 1] = float("nan")
    with_nan[1, 40, 0] = float("inf")
    start = torch.tensor([0, 3])
    reference = ops.farthest_point_sample(with_nan, 10, start_idx=start, backend="torch")
    assert torch.equal(kernel_fps(with_nan, 10, start, max_on_chip), reference)
    # Beyond 1e5 of the first centre the 1e10 start value ties: the first index wins.
    far_apart = torch.tensor([[[0.0, 0, 0], [2e5, 0, 0], [3e5, 0, 0]]])
    assert kernel_fps(far_apart, 2, torch.tensor([0]), max_on_chip).tolist() == [[0, 1]]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16])
def test_fps_kernel_keeps_the_reference_distance_dtype(dtype):
    xyz = torch.rand(2, 100, 3, generator=torch.Generator().manual_seed(5)).to(dtype)
    start = torch.tensor([1, 99])
    reference = ops.farthest_point_sample(xyz, 30, start_idx=start, backend="torch")
    assert torch.equal(kernel_fps(xyz, 30, start, None), reference)


def test_fps_dispatch():
    if DEVICE.type == "cuda":
        assert ops.fps_backend("cuda") == "triton"
        xyz = torch.rand(2, 2000, 3, generator=torch.Generator().manual_seed(6))
        got = ops.farthest_point_sample(xyz.cuda(), 64, start_idx=torch.tensor([0, 7]))
        assert torch.equal(got.cpu(), loop_fps(xyz, 64, [0, 7]))
    else:
        with pytest.raises(RuntimeError, match="needs a CUDA tensor"):
            import os

            os.environ["TRITON_INTERPRET"] = "0"
            try:
                fps_triton(torch.rand(3, 1, 4), torch.zeros(1, dtype=torch.long), 2)
            finally:
                os.environ["TRITON_INTERPRET"] = "1"
