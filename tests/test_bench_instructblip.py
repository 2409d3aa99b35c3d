"""tools/bench_instructblip.py runs at the tests' tiny size and prints its three stage rows.

Run in this process (a child would import torch and transformers again, which costs more than
the tiny benchmark itself).
"""

from __future__ import annotations

import re

import pytest

from tests.tools import load_tool



def _load_tool():
    return load_tool("bench_instructblip")


def test_help_names_the_options(capsys):
    with pytest.raises(SystemExit) as exit_info:
        _load_tool().main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for option in ("--device", "--tiny", "--new-tokens", "--batch-size", "--repeats"):
        assert option in out


def test_tiny_run_prints_three_stages_whose_shares_sum_to_one(capsys):
    tool = _load_tool()
    assert tool.main(["--tiny", "--new-tokens", "2", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert "not the 7B model" in out and "batch 8" in out
    shares = {}
    for stage in ("vision trunk", "Q-Former + projection", "language model"):
        match = re.search(rf"^{re.escape(stage)}\s+([\d.]+)\s+([\d.]+)$", out, re.MULTILINE)
        assert match, (stage, out)
        assert float(match.group(1)) > 0
        shares[stage] = float(match.group(2))
    assert sum(shares.values()) == pytest.approx(1.0, abs=0.005)
    assert re.search(r"^total\s+[\d.]+\s+1\.000$", out, re.MULTILINE)
    rates = re.findall(r"^generated tokens/s \(.+\):\s+([\d.]+)$", out, re.MULTILINE)
    assert len(rates) == 2 and all(float(rate) > 0 for rate in rates)
