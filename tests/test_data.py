import random

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from omniclip.data import (
    ResumableSampler,
    SafeDataset,
    SeededDataset,
    SkipCounter,
    Skipped,
    TooManySkippedError,
    build_loader,
    collate_skipping,
)
from omniclip.errors import ConfigError, SampleError
from omniclip.modality import default_collate


def keys(sampler):
    return list(sampler)


def test_permutation_depends_on_seed_and_epoch_only():
    a = ResumableSampler(50, seed=3)
    b = ResumableSampler(50, seed=3, rank=1, world_size=2, batch_size=4, drop_last=False)
    assert torch.equal(a.permutation(2), b.permutation(2))
    assert sorted(a.permutation(2).tolist()) == list(range(50))
    assert not torch.equal(a.permutation(2), a.permutation(3))
    assert not torch.equal(a.permutation(2), ResumableSampler(50, seed=4).permutation(2))
    # seed and epoch are mixed, not added: (0, 1) and (1, 0) differ.
    assert not torch.equal(
        ResumableSampler(50, seed=0).permutation(1), ResumableSampler(50, seed=1).permutation(0)
    )
    a.set_epoch(2)
    assert keys(a) == [(2, i) for i in a.permutation(2).tolist()]
    assert keys(ResumableSampler(5, shuffle=False)) == [(0, i) for i in range(5)]


def test_two_ranks_partition_an_epoch():
    ranks = [ResumableSampler(40, seed=1, rank=r, world_size=2, batch_size=4) for r in range(2)]
    for s in ranks:
        s.set_epoch(5)
    k0, k1 = keys(ranks[0]), keys(ranks[1])
    assert len(k0) == len(k1) == len(ranks[0]) == 20
    assert {e for e, _ in k0 + k1} == {5}
    assert set(k0).isdisjoint(k1)
    assert sorted(i for _, i in k0 + k1) == list(range(40))
    perm = ranks[0].permutation(5).tolist()
    assert [i for _, i in k0] == perm[0::2] and [i for _, i in k1] == perm[1::2]


def test_uneven_split_drop_last_cuts_to_full_batches():
    ranks = [ResumableSampler(23, seed=0, rank=r, world_size=2, batch_size=4) for r in range(2)]
    k0, k1 = keys(ranks[0]), keys(ranks[1])
    assert len(k0) == len(k1) == 8  # 23 // 2 = 11 -> two full batches of 4
    perm = ranks[0].permutation(0).tolist()
    assert [i for _, i in k0] == perm[:16][0::2] and [i for _, i in k1] == perm[:16][1::2]


def test_uneven_split_without_drop_last_pads_from_the_start():
    ranks = [ResumableSampler(11, seed=0, rank=r, world_size=2, drop_last=False) for r in range(2)]
    k0, k1 = keys(ranks[0]), keys(ranks[1])
    assert len(k0) == len(k1) == 6
    perm = ranks[0].permutation(0).tolist()
    padded = perm + perm[:1]
    assert [i for _, i in k0] == padded[0::2] and [i for _, i in k1] == padded[1::2]
    # More ranks than samples: the permutation is repeated as often as needed.
    tiny = [ResumableSampler(2, rank=r, world_size=5, drop_last=False) for r in range(5)]
    repeated = (tiny[0].permutation(0).tolist() * 3)[:5]
    assert [keys(s) for s in tiny] == [[(0, i)] for i in repeated]


def test_resume_mid_epoch_yields_exactly_the_remaining_keys():
    sampler = ResumableSampler(30, seed=7, batch_size=3)
    sampler.set_epoch(4)
    full = keys(sampler)
    it = iter(sampler)
    for _ in range(4):
        [next(it) for _ in range(3)]
        sampler.advance()
    assert next(it) == full[12]  # advancing does not shift an iteration in progress
    state = sampler.state_dict()
    assert state == {"epoch": 4, "consumed": 12}

    resumed = ResumableSampler(30, seed=7, batch_size=3)
    resumed.load_state_dict(state)
    resumed.set_epoch(4)  # what the loop does at the top of the epoch: keeps the position
    assert len(resumed) == 18
    assert keys(resumed) == full[12:]
    resumed.advance(100)
    assert len(resumed) == 0 and keys(resumed) == []
    resumed.set_epoch(5)
    assert len(resumed) == 30 and keys(resumed)[0][0] == 5


def test_sampler_rejects_bad_configuration_and_state():
    with pytest.raises(ConfigError, match=r"5 samples cannot fill one batch of 4 on each of 2 rank"):
        ResumableSampler(5, world_size=2, batch_size=4)
    with pytest.raises(ConfigError, match=r"config `rank`: must be in \[0, 2\), got 2"):
        ResumableSampler(5, rank=2, world_size=2)
    with pytest.raises(ValueError, match=r"does not fit this sampler \(10 keys per rank"):
        ResumableSampler(10).load_state_dict({"epoch": 0, "consumed": 11})


class RandomDataset(Dataset):
    """Every value depends on the global RNGs, as augmentations do."""

    def __init__(self, n=16):
        self.n = n
        self.calls = []

    def __len__(self):
        return self.n

    def __getitem__(self, index):
        self.calls.append(index)
        return {
            "inputs": torch.rand(3),
            "numpy": torch.from_numpy(np.random.rand(2)),
            "python": torch.tensor(random.random(), dtype=torch.float64),
            "label": index,
        }


def test_seeded_dataset_depends_on_the_key_only():
    data = SeededDataset(RandomDataset(), seed=5)
    first = [data[(1, i)] for i in range(6)]
    shuffled = [data[(1, i)] for i in (5, 3, 0, 4, 1, 2)]
    for i, sample in zip((5, 3, 0, 4, 1, 2), shuffled):
        for field in ("inputs", "numpy", "python"):
            assert torch.equal(sample[field], first[i][field])
    assert not torch.equal(first[0]["inputs"], first[1]["inputs"])
    assert not torch.equal(first[0]["inputs"], data[(2, 0)]["inputs"])
    assert not torch.equal(first[0]["inputs"], SeededDataset(RandomDataset(), seed=6)[(1, 0)]["inputs"])


def test_seeded_dataset_leaves_the_callers_rng_streams_alone():
    data = SeededDataset(RandomDataset(), seed=0)
    torch.manual_seed(0), np.random.seed(0), random.seed(0)
    expected = torch.rand(2), np.random.rand(2), random.random()
    torch.manual_seed(0), np.random.seed(0), random.seed(0)
    data[(0, 3)]
    got = torch.rand(2), np.random.rand(2), random.random()
    assert torch.equal(got[0], expected[0]) and np.array_equal(got[1], expected[1])
    assert got[2] == expected[2]


def _batches(num_workers, dataset=None, policy="stop", sampler=None):
    dataset = dataset if dataset is not None else RandomDataset()
    sampler = sampler or ResumableSampler(len(dataset), seed=1, batch_size=4)
    loader = build_loader(
        dataset, default_collate, 4, sampler, num_workers=num_workers, seed=9, policy=policy
    )
    return list(loader)


def test_loader_batches_identical_with_0_and_2_workers():
    b0, b2 = _batches(0), _batches(2)
    assert len(b0) == len(b2) == 4
    for x, y in zip(b0, b2):
        assert x.keys() == y.keys() == {"inputs", "numpy", "python", "labels", "skipped", "sample_keys"}
        for field in ("inputs", "numpy", "python", "labels"):
            assert torch.equal(x[field], y[field])
        assert x["skipped"] == []
        assert x["sample_keys"] == y["sample_keys"] and len(x["sample_keys"]) == 4


def test_loader_resume_skips_consumed_keys_without_loading_them():
    full = _batches(0)
    dataset = RandomDataset()
    sampler = ResumableSampler(16, seed=1, batch_size=4)
    sampler.load_state_dict({"epoch": 0, "consumed": 8})
    resumed = _batches(0, dataset, sampler=sampler)
    assert len(dataset.calls) == 8
    assert len(resumed) == 2
    for x, y in zip(resumed, full[2:]):
        assert torch.equal(x["inputs"], y["inputs"]) and torch.equal(x["labels"], y["labels"])


def test_build_loader_checks_batch_size():
    with pytest.raises(ConfigError, match=r"config `batch_size`: 8 differs from the sampler's batch_size 4"):
        build_loader(RandomDataset(), default_collate, 8, ResumableSampler(16, batch_size=4), 0, 0)


class FlakyDataset(Dataset):
    def __init__(self, bad, n=8):
        self.bad, self.n = set(bad), n

    def __len__(self):
        return self.n

    def __getitem__(self, index):
        if index in self.bad:
            raise SampleError(f"/data/clip_{index}.wav", "unreadable header")
        return {"inputs": torch.full((2,), float(index)), "path": f"/data/clip_{index}.wav"}


def test_skip_policy_drops_and_reports_bad_samples():
    sampler = ResumableSampler(8, shuffle=False, batch_size=4)
    batches = _batches(0, FlakyDataset(bad={1, 2, 4, 5, 6, 7}), "skip", sampler)
    assert batches[0]["skipped"] == [
        ("/data/clip_1.wav", "unreadable header"),
        ("/data/clip_2.wav", "unreadable header"),
    ]
    assert torch.equal(batches[0]["inputs"], torch.tensor([[0.0, 0.0], [3.0, 3.0]]))
    assert batches[0]["paths"] == ["/data/clip_0.wav", "/data/clip_3.wav"]
    assert batches[1] == {"skipped": [(f"/data/clip_{i}.wav", "unreadable header") for i in (4, 5, 6, 7)]}


def test_skip_policy_in_worker_processes():
    sampler = ResumableSampler(8, shuffle=False, batch_size=4)
    batches = _batches(2, FlakyDataset(bad={6}), "skip", sampler)
    assert [len(b["skipped"]) for b in batches] == [0, 1]
    assert batches[1]["paths"] == ["/data/clip_4.wav", "/data/clip_5.wav", "/data/clip_7.wav"]


def test_stop_policy_raises_with_the_file_name():
    sampler = ResumableSampler(8, shuffle=False, batch_size=4)
    with pytest.raises(SampleError, match=r"^/data/clip_5.wav: unreadable header$"):
        _batches(0, FlakyDataset(bad={5}), "stop", sampler)
    # From a worker the same type arrives (omniclip errors rebuild from torch's one-string re-raise).
    with pytest.raises(SampleError, match=r"/data/clip_5.wav: unreadable header") as error:
        _batches(1, FlakyDataset(bad={5}), "stop", sampler)
    assert error.value.path == "/data/clip_5.wav" and error.value.problem == "unreadable header"


def test_safe_dataset_and_collate_directly():
    assert SafeDataset(FlakyDataset(bad={0}), "skip")[0] == Skipped("/data/clip_0.wav", "unreadable header")
    with pytest.raises(ConfigError, match=r"config `policy`: must be 'stop' or 'skip', got 'ignore'"):
        SafeDataset(FlakyDataset(bad=()), "ignore")
    collate = collate_skipping(lambda samples: len(samples))
    with pytest.raises(TypeError, match=r"collate_fn must return a dict, got int"):
        collate([1, 2])


def test_skip_counter_summary_and_threshold():
    counter = SkipCounter(max_skip_fraction=0.1, min_seen=20)
    counter.update([], seen=8)
    assert counter.summary() == "skipped 0 of 8 samples"
    counter.update([("/d/a.wav", "NaN values")], seen=8)  # 1/16 seen, judged against 20
    counter.update([("/d/b.wav", "empty file")], seen=8)  # 2/24
    assert counter.summary() == "skipped 2 of 24 samples (8.33%): 1 × NaN values, 1 × empty file"
    restored = SkipCounter(max_skip_fraction=0.1, min_seen=20)
    restored.load_state_dict(counter.state_dict())
    assert restored.summary() == counter.summary()
    with pytest.raises(
        TooManySkippedError,
        match=r"^4 of 32 samples were skipped, more than max_skip_fraction=0.1; "
        r"first: /d/a.wav: NaN values; /d/b.wav: empty file; /d/c.wav: NaN values; /d/d.wav: NaN",
    ):
        counter.update([("/d/c.wav", "NaN values"), ("/d/d.wav", "NaN values")], seen=8)


def test_skip_counter_min_seen_stops_a_broken_dataset_early():
    counter = SkipCounter(max_skip_fraction=0.5, min_seen=10)
    counter.update([("/x", "bad")] * 4, seen=4)  # 4/4 skipped but 4 <= 0.5 * 10
    with pytest.raises(TooManySkippedError, match=r"^6 of 6 samples were skipped"):
        counter.update([("/x", "bad")] * 2, seen=2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_seeded_dataset_does_not_touch_cuda_rng():
    torch.cuda.manual_seed(0)
    expected = torch.rand(4, device="cuda")
    torch.cuda.manual_seed(0)
    SeededDataset(RandomDataset())[(0, 1)]
    assert torch.equal(torch.rand(4, device="cuda"), expected)
