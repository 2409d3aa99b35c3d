"""tools/bench_gpu.py: the tiny CPU run goes end to end, its JSON holds every section, its FLOPs
are omniclip.flops' for the recorded config and its MFU is flops x samples/s / peak.

Run in this process (a child would import torch and open_clip again, which costs more than the
tiny benchmark itself).
"""

from __future__ import annotations

import json

import pytest

from omniclip.flops import lens_step_flops
from omniclip.model import build_lens_model
from tests.tools import load_tool


@pytest.fixture(scope="module")
def tool():
    return load_tool("bench_gpu")


@pytest.mark.parametrize("name, tflops", [
    ("NVIDIA H100 80GB HBM3", 989.0),   # SXM: 1,979 with sparsity
    ("NVIDIA H100 PCIe", 756.0),        # 1,513 with sparsity
    ("NVIDIA H100 NVL", 835.0),         # 1,671 with sparsity
    ("NVIDIA H200", 989.0),
    ("NVIDIA GH200 480GB", 989.0),
    ("NVIDIA A100-SXM4-80GB", 312.0),   # 624 with sparsity
    ("NVIDIA A100-PCIE-40GB", 312.0),
    ("NVIDIA L40S", 362.0),
    ("NVIDIA L4", 121.0),
    ("NVIDIA A10", 125.0),
    ("Tesla V100-SXM2-32GB", 125.0),    # no bf16: the fp16 tensor peak
    ("Tesla V100-PCIE-16GB", 112.0),
])
def test_peak_table_reads_dense_bf16_figures_by_device_name(tool, name, tflops):
    assert tool.peak_tflops(name)[0] == tflops


def test_unknown_device_has_no_peak_and_no_mfu(tool):
    assert tool.peak_tflops("NVIDIA GeForce RTX 3090") is None
    assert tool.mfu(1e9, 100.0, None) is None
    assert tool.mfu(1e9, 100.0, 2.0) == pytest.approx(1e9 * 100.0 / 2e12, rel=1e-12)


def test_tiny_cpu_run_writes_every_section(tool, tmp_path, tiny_backbone, capsys):
    path = tmp_path / "bench.json"
    assert tool.main(["--tiny", "--device", "cpu", "--peak-tflops", "2.5", "--json", str(path),
                      "--settings", "fp32", "bf16-ckpt", "bf16-nocache"]) == 0
    out = capsys.readouterr().out
    report = json.loads(path.read_text())
    sections = report["sections"]
    assert set(sections) == {"lens_step", "pointcloud", "fbank", "video"}
    assert not [name for name, s in sections.items() if "error" in s or "skipped" in s], sections
    assert report["peak_bf16_tflops"] == 2.5 and report["peak_source"] == "--peak-tflops"

    trunk = sections["lens_step"]["trunks"]["omniclip-tiny"]
    cfg = trunk["config"]
    model, _ = build_lens_model(cfg["modality"], tiny_backbone.trunk(**cfg["trunk"]), cfg["tokenizer"], cfg["lens"])
    flops = lens_step_flops(model.train())
    assert trunk["flops_per_sample"] == flops.as_dict()
    per_sample = flops.total()
    rows = trunk["rows"]
    assert list(rows) == ["fp32 (baseline)", "bf16 + grad checkpointing", "bf16, anchor cache off"]
    base = rows["fp32 (baseline)"]["samples_per_s"]
    for row in rows.values():
        assert row["samples_per_s"] > 0 and row["peak_mb"] > 0
        assert row["mfu"] == pytest.approx(per_sample * row["samples_per_s"] / 2.5e12, rel=1e-12)
        assert row["x_baseline"] == pytest.approx(row["samples_per_s"] / base, rel=1e-12)
    assert "model FLOPs per sample" in out and "MFU" in out

    fps = sections["pointcloud"]
    loop = fps["fps_ms"]["torch loop (ours)"]
    assert {"reference: batched [B, N, 3]", "torch loop (ours)"} <= set(fps["fps_ms"])
    for name, ms in fps["fps_ms"].items():
        assert fps["fps_x_torch_loop"][name] == pytest.approx(loop / ms)
    assert set(fps["knn_ms"]) == {"ours (exact differences + topk)", "reference (matmul + topk)"}
    fbank = sections["fbank"]
    assert set(fbank["ms"]) == {"fbank: torchaudio per file", "fbank: ours per file", "fbank: ours batched"}
    assert fbank["max_abs_diff"] < 1e-3
    video = sections["video"]
    assert video["loader_clips_per_s"] > 0
    assert {r["backend"] for r in video["decode"]} >= {"pyav"}


def test_spent_budget_skips_sections_and_says_so(tool, tmp_path, capsys):
    path = tmp_path / "bench.json"
    assert tool.main(["--tiny", "--device", "cpu", "--budget-s", "0", "--sections", "fbank", "video",
                      "--json", str(path)]) == 0
    sections = json.loads(path.read_text())["sections"]
    assert sections == {name: {"skipped": "time budget of 0 s spent"} for name in ("fbank", "video")}
    assert "fbank: skipped, time budget of 0 s spent" in capsys.readouterr().out


@pytest.mark.slow
def test_frozen_bf16_compile_row_runs(tool, tmp_path):
    path = tmp_path / "bench.json"
    assert tool.main(["--tiny", "--device", "cpu", "--sections", "lens_step", "--settings", "bf16-frozen-compile",
                      "--json", str(path)]) == 0
    rows = json.loads(path.read_text())["sections"]["lens_step"]["trunks"]["omniclip-tiny"]["rows"]
    row = rows["bf16 + frozen bf16 + compile"]
    assert row["samples_per_s"] > 0 and row["mfu"] is None  # no peak for a CPU


def test_a_row_that_would_overrun_the_budget_is_skipped_and_named(tool):
    import torch

    def out_of_time(need: float) -> bool:  # room for eager rows only
        return need >= tool.ROW_ESTIMATE_S["compile"]

    section = tool.lens_step_section(tool.TINY, torch.device("cpu"), None, "eager", out_of_time,
                                     ["bf16-compile"])
    rows = section["trunks"]["omniclip-tiny"]["rows"]
    assert rows["fp32 (baseline)"]["samples_per_s"] > 0 and rows["fp32 (baseline)"]["mfu"] is None
    assert rows["bf16 + compile"] == {"available": False, "reason": "would not fit in the time budget (--budget-s)"}
