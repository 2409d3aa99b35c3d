"""Clip sampling: exact TSN / uniform / dense indices, multi-view, short-clip policies, seeding."""

from __future__ import annotations

import numpy as np
import pytest

from omniclip.data import SeededDataset
from omniclip.errors import ConfigError
from omniclip.modalities.video.sampling import ClipTooShort, SamplingOptions, sample_indices


def mmaction_tsn_train(num_frames: int, t: int) -> list[int]:
    """mmaction's SampleFrames._get_train_clips (clip_len=1, frame_interval=1), written out."""
    avg = num_frames // t
    return (np.arange(t) * avg + np.random.randint(avg, size=t)).tolist()


def test_tsn_training_indices_for_a_seed():
    np.random.seed(0)
    indices = sample_indices(100, SamplingOptions(8), train=True)
    assert indices.tolist() == [[5, 12, 27, 47, 51, 67, 81, 87]]
    for n, t in [(100, 8), (37, 16), (300, 8), (16, 16)]:
        np.random.seed(n)
        ours = sample_indices(n, SamplingOptions(t), train=True)[0].tolist()
        np.random.seed(n)
        assert ours == mmaction_tsn_train(n, t)
        seg = n // t
        assert all(k * seg <= i < (k + 1) * seg for k, i in enumerate(ours))  # one frame per segment


def test_tsn_testing_takes_segment_centres_and_views_shift_inside_segments():
    assert sample_indices(100, SamplingOptions(8), train=False).tolist() == [[6, 18, 31, 43, 56, 68, 81, 93]]
    two = sample_indices(100, SamplingOptions(8, num_views=2), train=False).tolist()
    assert two == [[3, 15, 28, 40, 53, 65, 78, 90], [9, 21, 34, 46, 59, 71, 84, 96]]
    assert sample_indices(100, SamplingOptions(8, num_views=4), train=True).shape == (1, 8)  # training: one clip


def test_uniform_and_dense():
    assert sample_indices(100, SamplingOptions(5, method="uniform"), train=True).tolist() == [[0, 25, 50, 74, 99]]
    assert sample_indices(100, SamplingOptions(1, method="uniform"), train=False).tolist() == [[49]]
    dense = SamplingOptions(4, method="dense", stride=8, num_views=3)
    assert sample_indices(100, dense, train=False).tolist() == [[0, 8, 16, 24], [38, 46, 54, 62], [75, 83, 91, 99]]
    one = SamplingOptions(4, method="dense", stride=8)
    assert sample_indices(100, one, train=False).tolist() == [[37, 45, 53, 61]]
    np.random.seed(3)
    start = np.random.randint(76)
    np.random.seed(3)
    assert sample_indices(100, one, train=True).tolist() == [[start, start + 8, start + 16, start + 24]]


@pytest.mark.parametrize("policy, tsn, dense", [
    ("repeat_last", [0, 1, 2, 3, 4, 4, 4, 4], [0, 4, 8, 9]),
    ("loop", [0, 1, 2, 3, 4, 0, 1, 2], [0, 4, 8, 2]),
])
def test_short_clip_policies(policy, tsn, dense):
    assert sample_indices(5, SamplingOptions(8, short_clip=policy), train=False).tolist() == [tsn]
    assert sample_indices(5, SamplingOptions(8, short_clip=policy), train=True).tolist() == [tsn]
    opts = SamplingOptions(4, method="dense", stride=4, short_clip=policy)
    assert sample_indices(10, opts, train=False).tolist() == [dense]


def test_short_clip_error():
    with pytest.raises(ClipTooShort, match=r"the clip needs 8 frames but the video holds 5"):
        sample_indices(5, SamplingOptions(8, short_clip="error"), train=True)
    with pytest.raises(ClipTooShort, match=r"needs 13 frames but the video holds 10"):
        sample_indices(10, SamplingOptions(4, method="dense", stride=4, short_clip="error"), train=False)
    assert sample_indices(8, SamplingOptions(8, short_clip="error"), train=True).tolist() == [list(range(8))]


class Draws:
    """A dataset whose items are TSN training indices drawn from the global NumPy RNG."""

    def __len__(self):
        return 10

    def __getitem__(self, index):
        return sample_indices(200, SamplingOptions(8), train=True)[0].tolist()


def test_seeded_per_sample_so_reproducible_and_resumable():
    seeded = SeededDataset(Draws(), seed=7)
    first = [seeded[(0, i)] for i in range(10)]
    again = [seeded[(0, i)] for i in reversed(range(10))][::-1]  # any order, e.g. another worker split
    assert first == again
    assert seeded[(1, 3)] != first[3] and SeededDataset(Draws(), seed=8)[(0, 3)] != first[3]


@pytest.mark.parametrize("kwargs, key", [
    ({"num_frames": 0}, "num_frames"), ({"method": "random"}, "sampling"), ({"stride": 0}, "frame_stride"),
    ({"num_views": 0}, "num_clips"), ({"method": "uniform", "num_views": 2}, "num_clips"),
    ({"short_clip": "pad"}, "short_clip"),
])
def test_bad_options_name_their_key(kwargs, key):
    with pytest.raises(ConfigError, match=rf"config `{key}`"):
        SamplingOptions(**kwargs)
