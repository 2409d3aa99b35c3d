"""Which frames of a video make a clip.

=========  ====================================================================================
``tsn``    T equal segments, one frame per segment (mmaction ``SampleFrames(clip_len=1,
           num_clips=T)``, what ViFi-CLIP, X-CLIP and ILA train and test with): a random frame of
           each segment in training, the centre one in testing.
``uniform`` T frames evenly spaced from the first to the last frame, the same in training and
           testing.
``dense``  T consecutive frames ``stride`` apart (span ``(T - 1) * stride + 1``): a random start
           in training; in testing the starts of the views are spread evenly over the video.
=========  ====================================================================================

Testing takes ``num_views`` temporal views of a video; their embeddings are averaged through
``group_ids``. TSN's views shift the frame taken inside each segment: view v of N takes the
frame at ``(v + 0.5) / N`` of the segment, so one view is the centre frame. (X-CLIP's
multi-view test draws training-style random views; ours are fixed, so evaluations agree.)

A video holding fewer frames than a clip needs (T for ``tsn`` / ``uniform``, the span for
``dense``) is sampled as if it had that many, and the indices past its end are then mapped back
by the ``short_clip`` policy: ``repeat_last`` (clamp to the last frame), ``loop`` (wrap
around), or ``error`` (`ClipTooShort`).

Randomness comes from NumPy's global generator (or ``rng``), as in mmaction: the dataset runs
under `omniclip.data.SeededDataset`, which seeds it per (seed, epoch, index), so the indices of
a sample are reproducible, independent of workers, and resumable.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from omniclip.errors import ConfigError

METHODS = ("tsn", "uniform", "dense")
SHORT_CLIP_POLICIES = ("repeat_last", "loop", "error")


class ClipTooShort(ValueError):
    """The video holds fewer frames than the clip needs and the policy is ``error``."""


@dataclass(frozen=True)
class SamplingOptions:
    """How clips are drawn.

    Args:
        num_frames: frames per clip (T).
        method: one of `METHODS`.
        stride: frame step of ``dense`` clips.
        num_views: temporal views per video in testing (training draws one clip).
        short_clip: one of `SHORT_CLIP_POLICIES`.
    """

    num_frames: int = 8
    method: str = "tsn"
    stride: int = 1
    num_views: int = 1
    short_clip: str = "repeat_last"

    def __post_init__(self) -> None:
        if self.num_frames < 1:
            raise ConfigError("num_frames", f"must be positive, got {self.num_frames}")
        if self.method not in METHODS:
            raise ConfigError("sampling", f"unknown sampling `{self.method}` (known: {', '.join(METHODS)})")
        if self.stride < 1:
            raise ConfigError("frame_stride", f"must be positive, got {self.stride}")
        if self.num_views < 1:
            raise ConfigError("num_clips", f"must be positive, got {self.num_views}")
        if self.method == "uniform" and self.num_views > 1:
            raise ConfigError("num_clips", "uniform sampling gives the same frames for every view; use tsn or dense")
        if self.short_clip not in SHORT_CLIP_POLICIES:
            raise ConfigError("short_clip", f"unknown policy `{self.short_clip}` (known: {', '.join(SHORT_CLIP_POLICIES)})")

    def needed(self) -> int:
        """Frames a video must hold for a clip without the short-clip policy."""
        return (self.num_frames - 1) * self.stride + 1 if self.method == "dense" else self.num_frames


def sample_indices(num_frames: int, opts: SamplingOptions, *, train: bool,
                   rng: np.random.RandomState | None = None) -> np.ndarray:
    """Frame indices ``[V, T]`` of a video of ``num_frames`` frames (V = 1 in training)."""
    if num_frames < 1:
        raise ValueError(f"a video of {num_frames} frames has no clip")
    rng = np.random if rng is None else rng
    length = max(num_frames, opts.needed())
    if length > num_frames and opts.short_clip == "error":
        raise ClipTooShort(f"the clip needs {opts.needed()} frames but the video holds {num_frames}")
    views = 1 if train else opts.num_views
    if opts.method == "tsn":
        rows = [_tsn(length, opts.num_frames, train, v, views, rng) for v in range(views)]
    elif opts.method == "uniform":
        rows = [_uniform(length, opts.num_frames)]
    else:
        rows = [_dense(length, opts.num_frames, opts.stride, train, v, views, rng) for v in range(views)]
    indices = np.stack(rows).astype(np.int64)
    if length > num_frames:
        indices = np.minimum(indices, num_frames - 1) if opts.short_clip == "repeat_last" else indices % num_frames
    return indices


def _tsn(n: int, t: int, train: bool, view: int, views: int, rng) -> np.ndarray:
    if train:
        # mmaction's training rule (clip_len 1): a random offset inside each whole segment;
        # n >= t here, so its other branches (fewer frames than segments) cannot occur.
        segment = n // t
        return np.arange(t) * segment + rng.randint(segment, size=t)
    segment = n / t
    return (np.arange(t) * segment + segment * (view + 0.5) / views).astype(np.int64)


def _uniform(n: int, t: int) -> np.ndarray:
    if t == 1:
        return np.array([(n - 1) // 2])
    return np.round(np.arange(t) * (n - 1) / (t - 1)).astype(np.int64)


def _dense(n: int, t: int, stride: int, train: bool, view: int, views: int, rng) -> np.ndarray:
    room = n - ((t - 1) * stride + 1)  # the latest start
    if train:
        start = int(rng.randint(room + 1))
    elif views == 1:
        start = room // 2
    else:
        start = int(round(view * room / (views - 1)))
    return start + np.arange(t) * stride
