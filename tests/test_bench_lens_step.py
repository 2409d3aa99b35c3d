"""tools/bench_lens_step.py at a tiny shape: which rows each device measures, that the frozen-bf16
and compile rows run the trainer's own setup (frozen bytes halve exactly), and the table's ratios."""

from __future__ import annotations

import math

import torch

from omniclip.backbone import load_backbone
from tests.tools import load_tool

bench = load_tool("bench_lens_step")


def test_cpu_measures_frozen_bf16_and_compile_and_cuda_adds_the_autocast_rows():
    cpu, cuda = bench.pick_settings("cpu"), bench.pick_settings("cuda")
    assert list(cpu) == [bench.BASELINE, "anchor cache off", "grad checkpointing on", "frozen trunk bf16",
                         "torch.compile (inductor)", "frozen trunk bf16 + compile"]
    assert list(cuda) == [*cpu, "bf16 autocast", "bf16 autocast + frozen trunk bf16",
                          "bf16 autocast + frozen bf16 + compile"]
    assert list(bench.pick_settings("cpu", "frozen")) == [bench.BASELINE, "frozen trunk bf16",
                                                         "frozen trunk bf16 + compile"]


def test_frozen_bf16_row_runs_and_halves_the_frozen_bytes():
    """(The compile rows call the trainer's `compile_model`, tested in test_precision_compile; a
    dynamo trace here would triple this test's time.)"""
    options = {"backbone_name": "omniclip-tiny", "num_latents": 16}
    base = bench.run_setting("cpu", 2, 1, **options)
    mixed = bench.run_setting("cpu", 2, 1, frozen_bf16=True, **options)
    trunk = load_backbone("omniclip-tiny").trunk(interpolate_positions=True)
    fp32_mib = sum(p.numel() * 4 for p in trunk.parameters() if not p.requires_grad) / 2**20
    assert base["frozen_mb"] == fp32_mib and mixed["frozen_mb"] * 2 == fp32_mib
    assert all(math.isfinite(r["samples_per_s"]) and r["samples_per_s"] > 0 and r["peak_mb"] > 0
               for r in (base, mixed))
    assert torch.get_default_dtype() == torch.float32


def test_table_gives_each_figure_as_a_ratio_to_the_baseline():
    results = {bench.BASELINE: {"samples_per_s": 2.0, "peak_mb": 100.0, "frozen_mb": 4.0},
               "frozen trunk bf16": {"samples_per_s": 1.0, "peak_mb": 75.0, "frozen_mb": 2.0}}
    table = bench.format_table(results, "cpu", "ViT-B-16", 8, (1.5, 1.0, 1.0), (2.25, 1.0, 1.0)).splitlines()
    assert table[0] == ("lens training step, ViT-B-16 trunk, 256 latents, batch 8, device cpu; "
                        "load average 1.50 before, 2.25 after")
    assert table[3].split() == ["frozen", "trunk", "bf16", "1.000", "0.50", "75", "0.75", "2.0", "0.50"]
