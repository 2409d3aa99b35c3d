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
