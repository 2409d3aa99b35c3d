import json
import random

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from omniclip.data import ResumableSampler
from omniclip.optim import build_optimizer, cosine_schedule
from omniclip.state import (
    atomic_save,
    capture_rng_state,
    latest_checkpoint,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)


def draw():
    np.random.normal()  # leaves a cached gaussian in NumPy's state
    return torch.rand(3).tolist(), np.random.rand(3).tolist(), np.random.normal(), random.random()


def test_rng_round_trip(tmp_path):
    torch.manual_seed(1), np.random.seed(1), random.seed(1)
    draw()
    state = capture_rng_state()
    expected = draw()
    draw()
    torch.save(state, tmp_path / "rng.pt")
    restore_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert draw() == expected


def _training_state(seed=0):
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.LayerNorm(8))
    opt = build_optimizer(model, lr=1e-3)
    sched = cosine_schedule(opt, 2, 10)
    model(torch.randn(3, 4)).sum().backward()
    opt.step()
    sched.step()
    sampler = ResumableSampler(20, batch_size=2)
    sampler.advance(3)
    state = {
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "sampler": sampler.state_dict(),
        "rng": capture_rng_state(),
    }
    weights = {k: v.detach() for k, v in model.state_dict().items()}
    return weights, state


def _assert_nested_equal(a, b):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            _assert_nested_equal(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _assert_nested_equal(x, y)
    else:
        assert a == b


def test_save_latest_load_round_trip(tmp_path):
    weights, state = _training_state()
    config = {"lr": 1e-3, "model": {"name": "tiny"}}
    path = save_checkpoint(tmp_path, 1000, weights, state, config)
    assert path == tmp_path / "checkpoints" / "step_00001000"
    assert sorted(p.name for p in path.iterdir()) == [
        "config.json",
        "training_state.pt",
        "weights.safetensors",
    ]
    assert (tmp_path / "checkpoints" / "latest").read_text() == "step_00001000\n"
    assert latest_checkpoint(tmp_path) == path

    loaded_weights, loaded_state, loaded_config = load_checkpoint(path)
    _assert_nested_equal(loaded_weights, weights)
    _assert_nested_equal(loaded_state, {**state, "step": 1000})
    assert loaded_config == config
    assert json.loads((path / "config.json").read_text()) == config


def test_weights_are_contiguous_cpu_copies(tmp_path):
    base = torch.arange(12.0).reshape(3, 4)
    weights = {"t": base.t(), "tied_a": base, "tied_b": base}
    path = save_checkpoint(tmp_path, 1, weights, {}, {})
    loaded = load_file(str(path / "weights.safetensors"))
    assert torch.equal(loaded["t"], base.t()) and loaded["t"].is_contiguous()
    assert torch.equal(loaded["tied_a"], base) and torch.equal(loaded["tied_b"], base)


def test_latest_and_resave(tmp_path):
    w = {"a": torch.zeros(2)}
    save_checkpoint(tmp_path, 10, w, {}, {})
    second = save_checkpoint(tmp_path, 20, w, {}, {})
    assert latest_checkpoint(tmp_path) == second
    again = save_checkpoint(tmp_path, 10, {"a": torch.ones(2)}, {}, {})  # replaces step 10
    assert latest_checkpoint(tmp_path) == again
    assert torch.equal(load_checkpoint(again)[0]["a"], torch.ones(2))
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "latest",
        "step_00000010",
        "step_00000020",
    ]


def test_simulated_kill_finds_last_complete_checkpoint(tmp_path):
    w = {"a": torch.zeros(2)}
    assert latest_checkpoint(tmp_path) is None
    save_checkpoint(tmp_path, 5, w, {}, {})
    complete = save_checkpoint(tmp_path, 7, w, {}, {})
    root = tmp_path / "checkpoints"
    # A save killed half-way: temp dir with a partial file, and `latest` lost.
    half = root / ".tmp-step_00000009-1234"
    half.mkdir()
    (half / "weights.safetensors").write_bytes(b"partial")
    (root / "latest").unlink()
    # A step directory missing its files (tampered with) is not complete either.
    (root / "step_00000008").mkdir()
    assert latest_checkpoint(tmp_path) == complete
    # `latest` naming a directory that is gone also falls back.
    (root / "latest").write_text("step_00000011\n")
    assert latest_checkpoint(tmp_path) == complete
    # The next save removes the leftover temp dir.
    save_checkpoint(tmp_path, 9, w, {}, {})
    assert not half.exists()


def test_keep_last_prunes_older_but_never_the_new_one(tmp_path):
    w = {"a": torch.zeros(2)}
    for step in (1, 2, 3, 4):
        save_checkpoint(tmp_path, step, w, {}, {}, keep_last=2)
    names = lambda: sorted(p.name for p in (tmp_path / "checkpoints").glob("step_*"))  # noqa: E731
    assert names() == ["step_00000003", "step_00000004"]
    # A run restarted from an older step keeps what it just wrote plus the newest other one.
    save_checkpoint(tmp_path, 2, w, {}, {}, keep_last=2)
    assert names() == ["step_00000002", "step_00000004"]
    save_checkpoint(tmp_path, 5, w, {}, {}, keep_last=1)
    assert names() == ["step_00000005"]


def test_save_rejects_state_that_weights_only_cannot_load(tmp_path):
    with pytest.raises(
        TypeError,
        match=r"training_state\['extra'\]\['rng'\]: numpy.ndarray cannot be loaded with "
        r"torch.load\(weights_only=True\)",
    ):
        save_checkpoint(tmp_path, 1, {}, {"extra": {"rng": np.zeros(2)}}, {})
    with pytest.raises(ValueError, match=r"training_state\['step'\] is 3 but the checkpoint is for step 4"):
        save_checkpoint(tmp_path, 4, {}, {"step": 3}, {})
    with pytest.raises(TypeError, match=r"Object of type PosixPath is not JSON serializable"):
        save_checkpoint(tmp_path, 1, {}, {}, {"dir": tmp_path})
    assert not (tmp_path / "checkpoints").exists()  # nothing written by failed saves


def test_load_incomplete_checkpoint_names_missing_files(tmp_path):
    (tmp_path / "weights.safetensors").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"missing training_state.pt, config.json$"):
        load_checkpoint(tmp_path)


def test_atomic_save_replaces_and_cleans_up(tmp_path):
    target = tmp_path / "file.txt"
    atomic_save(lambda p: p.write_text("one"), target)
    atomic_save(lambda p: p.write_text("two"), target)
    assert target.read_text() == "two"

    def failing(p):
        p.write_text("partial")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_save(failing, target)
    assert target.read_text() == "two"
    assert [p.name for p in tmp_path.iterdir()] == ["file.txt"]


def test_restore_warns_when_cuda_devices_differ():
    state = capture_rng_state()
    visible = len(state.get("cuda", []))
    state["cuda"] = state.get("cuda", []) + [torch.zeros(16, dtype=torch.uint8)]  # one too many
    with pytest.warns(
        UserWarning,
        match=rf"captured with {visible + 1} CUDA device\(s\) and {visible} are visible now: "
        rf"restoring the first {visible} only",
    ):
        restore_rng_state(state)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_rng_round_trip():
    torch.cuda.manual_seed_all(3)
    state = capture_rng_state()
    expected = torch.rand(4, device="cuda")
    restore_rng_state(state)
    assert torch.equal(torch.rand(4, device="cuda"), expected)
