"""The Triton kernels' exact-index cases (triton_cases.py), each in a fresh process: through
Triton's CPU interpreter here, and on CUDA where a GPU is present."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[3]
CASES = Path(__file__).with_name("triton_cases.py")


def run_cases(interpret: bool) -> None:
    env = dict(os.environ, TRITON_INTERPRET="1" if interpret else "0")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(CASES)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
    )
    tail = proc.stdout[-4000:] + proc.stderr[-2000:]
    assert proc.returncode == 0, tail
    assert " passed" in proc.stdout and "skipped" not in proc.stdout.splitlines()[-1], tail


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton not installed")
def test_triton_kernels_in_interpreter():
    run_cases(interpret=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_triton_kernels_on_cuda():
    run_cases(interpret=False)


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton not installed")
@pytest.mark.parametrize("dtype,num_chunks", [("fp32", 1), ("fp32", 3), ("fp64", 1)])
def test_fps_kernel_compiles_for_sm90_without_fused_multiply_add(dtype, num_chunks):
    # Compiling needs no GPU: this checks the real code generation the interpreter skips. A
    # fused multiply-add would round differently from the reference (the probe cases of
    # triton_cases.py catch that only where a GPU runs them).
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        pytest.skip("compiles for a GPU target; unset TRITON_INTERPRET")
    pytest.importorskip("triton.backends.nvidia")
    import re

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from omniclip.modalities.pointcloud.kernels import MAX_ON_CHIP, _fps_kernel, launch_options

    signature = {
        "planes_ptr": f"*{dtype}", "start_ptr": "*i64", "out_ptr": "*i64", "scratch_ptr": f"*{dtype}",
        "batch": "i32", "num_points": "i32", "npoint": "constexpr", "BLOCK": "constexpr", "NUM_CHUNKS": "constexpr",
    }
    constants = {"npoint": 512, "BLOCK": MAX_ON_CHIP, "NUM_CHUNKS": num_chunks}
    options = launch_options(MAX_ON_CHIP)
    ptx = triton.compile(
        ASTSource(fn=_fps_kernel, signature=signature, constexprs=constants),
        target=GPUTarget("cuda", 90, 32), options=options,
    ).asm["ptx"]
    assert re.search(rf"\bmul\.rn\.{dtype[:1]}{dtype[2:]}\b", ptx)  # the distances are there...
    assert not re.search(r"\bfma\.", ptx)  # ...and none of them fused
    fused = triton.compile(
        ASTSource(fn=_fps_kernel, signature=signature, constexprs=constants),
        target=GPUTarget("cuda", 90, 32), options={**options, "enable_fp_fusion": True},
    ).asm["ptx"]
    assert re.search(r"\bfma\.rn\.", fused)  # the check above can fail: fusion is the default
