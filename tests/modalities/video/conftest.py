from __future__ import annotations

import numpy as np
import pytest

from omniclip.modalities.video.io import backend_available
from tests.modalities.video import media

#: 30 frames with uneven gaps (40 ms, then 100 ms every third frame).
VFR_TIMES = np.concatenate([[0.0], np.cumsum([0.1 if i % 3 == 0 else 0.04 for i in range(29)])])


@pytest.fixture(scope="session")
def videos(tmp_path_factory):
    """One tiny file of each kind the decoders must agree on, written once per session."""
    d = tmp_path_factory.mktemp("videos")
    return {
        "h264.mp4": media.write_video(d / "h264.mp4", 30),
        "mpeg4.mp4": media.write_video(d / "mpeg4.mp4", 30, codec="mpeg4"),
        "vp8.webm": media.write_video(d / "vp8.webm", 30, codec="libvpx"),
        "vp9.webm": media.write_video(d / "vp9.webm", 30, codec="libvpx-vp9"),
        "mpeg4.avi": media.write_video(d / "mpeg4.avi", 30, codec="mpeg4"),
        "vfr.mp4": media.write_video(d / "vfr.mp4", 30, frame_times=VFR_TIMES),
        "gop10.mp4": media.write_video(d / "gop10.mp4", 40, gop=10),
        "with_audio.mp4": media.write_video(d / "with_audio.mp4", 30, audio=True),
        "h264.ts": media.write_video(d / "h264.ts", 30, fmt="mpegts"),  # seeks by byte estimates
        "mpeg2.mpg": media.write_video(d / "mpeg2.mpg", 30, codec="mpeg2video", fmt="mpeg"),
    }


def need(backend: str) -> None:
    why = backend_available(backend)
    if why is not None:
        pytest.skip(why)
