"""Decoding: every backend returns the frames a sequential PyAV decode gives, on every container and
codec written here; probe measures the stream; rotation; frame folders; in-memory bytes; each kind of
bad file is a SampleError naming it; a hanging decode is cut off."""

from __future__ import annotations

import ctypes
import os
import time

import numpy as np
import pytest
import torch

from omniclip.errors import SampleError
from omniclip.modalities.video import io
from omniclip.modalities.video.io import DecodeOptions, DecodeTimeout, probe, read_frames
from tests.modalities.video import media
from tests.modalities.video.conftest import VFR_TIMES, need

FILE_BACKENDS = ("pyav", "torchcodec", "decord")
INDICES = [29, 0, 3, 7, 12, 3, 28]  # out of order, one repeated, both ends


@pytest.mark.parametrize("backend", FILE_BACKENDS)
@pytest.mark.parametrize("name", ["h264.mp4", "mpeg4.mp4", "vp8.webm", "vp9.webm", "mpeg4.avi", "vfr.mp4",
                                  "gop10.mp4", "with_audio.mp4", "h264.ts", "mpeg2.mpg"])
def test_backends_return_the_sequentially_decoded_frames(videos, name, backend):
    need(backend)
    path = videos[name]
    truth = media.all_frames(path)
    frames = read_frames(path, INDICES, DecodeOptions(backend=backend))
    assert frames.dtype == torch.uint8 and frames.shape == (len(INDICES), media.H, media.W, 3)
    assert torch.equal(frames, torch.from_numpy(truth[INDICES]))
    assert [media.frame_index(f, len(truth)) for f in frames] == INDICES
    chw = read_frames(path, INDICES, DecodeOptions(backend=backend), layout="TCHW")
    assert torch.equal(chw, frames.permute(0, 3, 1, 2))


def test_seeks_across_keyframes_decode_only_what_is_needed(videos, monkeypatch):
    """40 frames, a keyframe every 10: frames 5 and 8 share a GOP (one seek), 31 needs a second."""
    path = videos["gop10.mp4"]
    info = probe(path)
    assert info.keyframes == (0, 10, 20, 30) and info.num_frames == 40
    import av

    seeks = []
    real = av.container.InputContainer.seek
    monkeypatch.setattr(av.container.InputContainer, "seek", lambda self, *a, **k: (seeks.append(a[0]), real(self, *a, **k))[1])
    frames = read_frames(path, [5, 8, 31], DecodeOptions(backend="pyav"), info=info)
    assert [media.frame_index(f, 40) for f in frames] == [5, 8, 31]
    assert len(seeks) == 2


def test_probe_measures_the_stream(videos):
    info = probe(videos["h264.mp4"])
    assert (info.num_frames, info.header_frames, info.width, info.height, info.rotation) == (30, 30, 64, 48, 0)
    assert info.fps == pytest.approx(25.0) and info.duration == pytest.approx(1.2)
    assert info.codec == "h264" and not info.variable_frame_rate and info.container.startswith("mov,mp4")
    webm = probe(videos["vp8.webm"])
    assert webm.num_frames == 30 and webm.header_frames is None  # WebM headers carry no frame count
    vfr = probe(videos["vfr.mp4"])
    assert vfr.variable_frame_rate and vfr.num_frames == 30
    np.testing.assert_allclose(vfr.frame_times() - vfr.frame_times()[0], VFR_TIMES, atol=1e-3)


@pytest.mark.parametrize("backend", ["pyav", "torchcodec"])
def test_rotation_metadata_is_applied(tmp_path, backend):
    need(backend)
    path = media.write_video(tmp_path / "rot.mp4", 12, rotation=90)
    info = probe(path)
    assert (info.rotation, info.width, info.height) == (90, media.H, media.W)  # displayed portrait
    frames = read_frames(path, [0, 11], DecodeOptions(backend=backend))
    assert frames.shape == (2, media.W, media.H, 3)
    # 90 degrees counter-clockwise: the top-left marker of the coded picture is now bottom-left
    corner = frames[0, -media.W // 4:, : media.H // 4].float().mean(dim=(0, 1))
    assert corner[0] > 200 and corner[1] < 90
    truth = torch.rot90(torch.from_numpy(media.all_frames(path)[[0, 11]]), k=1, dims=(1, 2))
    assert torch.equal(frames, truth)
    with pytest.raises(SampleError, match=r"rotated by 90 degrees"):
        probe(path, DecodeOptions(reject=("rotated",)))


def test_decord_on_a_rotated_file_is_right_or_a_sample_error(tmp_path):
    need("decord")
    path = media.write_video(tmp_path / "rot.mp4", 12, rotation=90)
    try:
        frames = read_frames(path, [0, 11], DecodeOptions(backend="decord"))
    except SampleError as err:  # decord 0.6 mis-sizes rotated frames
        assert err.path == str(path)
    else:
        assert torch.equal(frames, read_frames(path, [0, 11], DecodeOptions(backend="pyav")))


def test_variable_frame_rate_is_read_by_index_or_rejected(videos):
    path = videos["vfr.mp4"]
    with pytest.raises(SampleError, match=r"variable frame rate"):
        probe(path, DecodeOptions(reject=("variable_frame_rate",)))


@pytest.mark.parametrize("backend", ["pyav", "torchcodec"])
def test_in_memory_bytes_read_like_the_file(videos, backend):
    need(backend)
    path = videos["h264.mp4"]
    data = path.read_bytes()
    assert torch.equal(read_frames(data, INDICES, DecodeOptions(backend=backend)),
                       read_frames(path, INDICES, DecodeOptions(backend=backend)))
    assert probe(data).num_frames == 30


def test_frame_folders_read_through_the_same_interface(tmp_path):
    folder = media.write_frame_folder(tmp_path / "clip", 20)
    info = probe(folder)
    assert (info.num_frames, info.width, info.height, info.codec) == (20, media.W, media.H, "frames")
    frames = read_frames(folder, [19, 0, 7, 7])
    from torchvision.io import decode_image, read_file

    expected = torch.stack([decode_image(read_file(str(folder / f"img_{i + 1:05d}.jpg"))) for i in [19, 0, 7, 7]])
    assert torch.equal(frames, expected.permute(0, 2, 3, 1))
    assert [media.frame_index(f, 20) for f in frames] == [19, 0, 7, 7]
    other = media.write_frame_folder(tmp_path / "zero_based", 5, template="{:06d}.png", start=0)
    opts = DecodeOptions(frame_template="{:06d}.png", frame_start=0)
    assert probe(other, opts).num_frames == 5 and read_frames(other, [4], opts).shape == (1, media.H, media.W, 3)


def test_bad_frame_folders(tmp_path):
    gap = media.write_frame_folder(tmp_path / "gap", 8)
    (gap / "img_00005.jpg").unlink()
    with pytest.raises(SampleError, match=r"gap: frame folder is missing img_00005.jpg"):
        probe(gap)
    (tmp_path / "empty").mkdir()
    with pytest.raises(SampleError, match=r"holds no frames named like img_00001.jpg"):
        probe(tmp_path / "empty")
    broken = media.write_frame_folder(tmp_path / "broken", 4)
    (broken / "img_00003.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(SampleError, match=r"img_00003.jpg: cannot decode the frame image"):
        read_frames(broken, [0, 2])


# ---------------------------------------------------------------------------------- bad input


def corrupt(tmp_path):
    path = tmp_path / "corrupt.mp4"
    path.write_bytes(np.random.RandomState(0).bytes(6000))
    return path


def truncated(tmp_path):
    path = media.write_video(tmp_path / "cut.mp4", 40, faststart=True, texture=True)
    return media.truncate(path, 0.7)


BAD_FILES = {
    "corrupt": (corrupt, r"cannot open as a video \(corrupt"),
    "empty": (lambda d: (d / "empty.mp4").write_bytes(b"") or d / "empty.mp4", r"file is empty"),
    "missing": (lambda d: d / "nowhere.mp4", r"file not found"),
    "truncated": (truncated, r"the header claims 40 frames but the stream holds \d+ \(truncated"),
    "zero frames": (lambda d: media.write_no_frames(d / "none.mkv"), r"the video stream holds no frames"),
    "header over-reports": (lambda d: media.overreport_avi(media.write_video(d / "over.avi", 20, codec="mpeg4"), 50),
                            r"the header claims 50 frames but the stream holds 20"),
    "audio only": (lambda d: media.write_audio_only(d / "sound.mp4"), r"no video stream \(audio streams only"),
    "unsupported codec": (lambda d: media.unknown_codec(media.write_video(d / "zzzz.mp4", 10)),
                          r"unsupported codec"),
}


@pytest.mark.parametrize("backend", FILE_BACKENDS)
@pytest.mark.parametrize("kind", list(BAD_FILES))
def test_bad_files_are_sample_errors_naming_the_file(tmp_path, kind, backend):
    need(backend)
    make, problem = BAD_FILES[kind]
    path = make(tmp_path)
    with pytest.raises(SampleError, match=problem) as caught:
        read_frames(path, [0, 1], DecodeOptions(backend=backend))
    assert caught.value.path == str(path) and str(path) in str(caught.value)


def test_an_over_reporting_header_is_read_by_the_stream_when_allowed(tmp_path):
    path = media.overreport_avi(media.write_video(tmp_path / "over.avi", 20, codec="mpeg4"), 50)
    opts = DecodeOptions(reject=())
    info = probe(path, opts)
    assert (info.header_frames, info.num_frames) == (50, 20)
    for backend in io.available_backends():
        frames = read_frames(path, [0, 19], DecodeOptions(backend=backend, reject=()), info=info)
        assert [media.frame_index(f, 20) for f in frames] == [0, 19]
    with pytest.raises(SampleError, match=r"frame 20 requested but the video holds 20 frames"):
        read_frames(path, [20], opts, info=info)


def test_a_truncated_tail_fails_on_the_frames_it_lost(tmp_path):
    path = truncated(tmp_path)
    opts = DecodeOptions(reject=(), backend="pyav")
    info = probe(path, opts)
    assert info.header_frames == 40 and 0 < info.num_frames < 40
    assert media.frame_index(read_frames(path, [0], opts, info=info)[0], 40) == 0
    with pytest.raises(SampleError, match=r"cut.mp4: .*frame"):
        read_frames(path, [info.num_frames - 1], opts, info=info)


def test_huge_frames_are_refused_before_decoding(videos):
    with pytest.raises(SampleError, match=r"frames of 64x48 exceed max_pixels=1000"):
        probe(videos["h264.mp4"], DecodeOptions(max_pixels=1000))


def _sleeping_reader(source, info, indices, opts):
    time.sleep(30)


def _deadlocked_reader(source, info, indices, opts):
    """Blocks forever inside C while holding the GIL (PyDLL keeps it): what decord can do."""
    libc = ctypes.PyDLL(None)
    mutex = ctypes.create_string_buffer(64)  # larger than a pthread_mutex_t; zeros = unlocked default
    libc.pthread_mutex_lock(mutex)
    libc.pthread_mutex_lock(mutex)


def test_a_slow_decode_times_out(videos, monkeypatch):
    monkeypatch.setitem(io._READERS, "pyav", _sleeping_reader)
    start = time.monotonic()
    with pytest.raises(DecodeTimeout, match=r"h264.mp4: decoding did not finish within 0.3 s"):
        read_frames(videos["h264.mp4"], [0], DecodeOptions(backend="pyav", timeout=0.3))
    assert time.monotonic() - start < 5


@pytest.mark.skipif(os.name != "posix", reason="fork and pthreads")
def test_a_decode_hung_in_c_holding_the_gil_is_killed_when_isolated(videos, monkeypatch):
    monkeypatch.setitem(io._READERS, "pyav", _deadlocked_reader)
    start = time.monotonic()
    with pytest.raises(DecodeTimeout, match=r"the decoding process was killed"):
        read_frames(videos["h264.mp4"], [0], DecodeOptions(backend="pyav", timeout=0.5, isolate=True))
    assert time.monotonic() - start < 5


def test_isolated_decoding_returns_the_same_frames_and_errors(videos, tmp_path):
    path = videos["h264.mp4"]
    opts = DecodeOptions(backend="pyav", isolate=True)
    assert torch.equal(read_frames(path, INDICES, opts), read_frames(path, INDICES, DecodeOptions(backend="pyav")))
    with pytest.raises(SampleError, match=r"frame 99 requested"):
        read_frames(path, [99], opts)


class _IsolatedReads(torch.utils.data.Dataset):
    def __init__(self, path):
        self.path = path

    def __len__(self):
        return 2

    def __getitem__(self, index):
        return read_frames(self.path, [index, 20], DecodeOptions(backend="pyav", isolate=True))


def test_isolated_decoding_works_inside_dataloader_workers(videos):
    """DataLoader workers are daemonic: multiprocessing would refuse them a child; os.fork does not."""
    path = videos["h264.mp4"]
    loader = torch.utils.data.DataLoader(_IsolatedReads(path), batch_size=None, num_workers=1)
    got = list(loader)
    assert [[media.frame_index(f, 30) for f in frames] for frames in got] == [[0, 20], [1, 20]]


@pytest.mark.parametrize("backend", FILE_BACKENDS)
@pytest.mark.parametrize("second_starts, problem", [
    (None, r"10 frames repeat another frame's timestamp \(spliced"),  # timestamps restart
    (1.0, r"."),  # timestamps go on, the size changes: each backend fails its own way
])
def test_spliced_streams_with_a_size_change_are_sample_errors(tmp_path, backend, second_starts, problem):
    """Two MPEG-TS files of different sizes joined byte-wise; no backend may return a wrongly
    sized or shuffled clip."""
    need(backend)
    times = None if second_starts is None else second_starts + np.arange(10) * 0.04
    first = media.write_video(tmp_path / "a.ts", 10, fmt="mpegts", frame_times=None if times is None else np.arange(10) * 0.04)
    second = media.write_video(tmp_path / "b.ts", 10, fmt="mpegts", width=32, height=24, frame_times=times)
    path = tmp_path / "spliced.ts"
    path.write_bytes(first.read_bytes() + second.read_bytes())
    with pytest.raises(SampleError, match=problem) as caught:
        read_frames(path, [0, 15], DecodeOptions(backend=backend))
    assert caught.value.path == str(path)


def test_containers_a_backend_misreads_go_to_pyav(videos):
    info = probe(videos["mpeg2.mpg"])
    assert info.container == "mpeg" and probe(videos["h264.ts"]).container == "mpegts"
    for backend in ("torchcodec", "decord", "auto"):
        if backend == "auto" or io.backend_available(backend) is None:
            assert io.resolve_backend(backend, videos["mpeg2.mpg"], info) == "pyav"
    assert io.resolve_backend("pyav", videos["h264.mp4"], probe(videos["h264.mp4"])) == "pyav"
