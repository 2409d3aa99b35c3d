"""tools/bench_video_model.py runs end to end at a tiny shape and prints every row of its table.

Run in this process (importing torch and open_clip again in a child would cost more than the
tiny benchmark itself), with one timed step per setting and one short generated video.
"""

from __future__ import annotations

import re

import pytest

from tests.tools import load_tool



def _load_tool():
    return load_tool("bench_video_model")


def test_help_names_the_shape_options(capsys):
    with pytest.raises(SystemExit) as exit_info:
        _load_tool().main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for option in ("--device", "--frames", "--batch-size", "--steps", "--width", "--layers"):
        assert option in out


def test_tiny_run_prints_every_setting_and_the_loader(capsys):
    tool = _load_tool()
    # 64 px = a 4x4 patch grid, the smallest ILA's two 2x2 poolings accept
    assert tool.main(["--width", "64", "--layers", "1", "--image-size", "64", "--frames", "2", "4",
                      "--batch-size", "2", "--steps", "1", "--files", "1", "--video-seconds", "1",
                      "--loader-batches", "1", "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert "[8/8] ILA" in out  # progress lines, one per setting
    table = out[out.index("\nsetting"):]
    rows = {}
    for line in table.strip().splitlines()[1:-1]:
        match = re.match(r"(.+?)\s+([\d.]+)\s+([\d.]+)x", line)
        assert match, line
        rows[" ".join(match.group(1).split())] = (float(match.group(2)), float(match.group(3)))
    expected = {f"{model} {frames} frames fp32 ckpt {ckpt}" for model in ("ViFi-CLIP", "ILA")
                for frames in (2, 4) for ckpt in ("on", "off")}
    expected |= {"loader 2 frames uint8 -> cpu", "loader 4 frames uint8 -> cpu"}
    assert set(rows) == expected
    for frames in (2, 4):
        assert rows[f"ViFi-CLIP {frames} frames fp32 ckpt off"][1] == 1.0  # the baseline of its frame count
    assert all(rate > 0 for rate, _ in rows.values())
