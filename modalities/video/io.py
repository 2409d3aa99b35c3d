"""Reading frames from video files and frame folders, behind one interface.

``probe(source)`` tells what a video really holds: the frames its stream carries (counted from
the demuxed packets, never taken from the container header, which over-reports on truncated
files and on some AVI/WebM muxers), the frame rate, the display size and rotation.
``read_frames(source, indices)`` decodes exactly those frames, seeking instead of decoding the
whole file, in one call per clip, and returns uint8 frames ``[T, H, W, 3]`` (or ``[T, 3, H, W]``)
with the rotation metadata applied.

Backends (``backend=``):

==============  ===============================================================================
``pyav``        PyAV, which bundles FFmpeg: works right after ``pip install``; the default when
                torchcodec cannot load.
``torchcodec``  torchcodec; needs FFmpeg's shared libraries (``apt-get install ffmpeg`` or
                conda's ``ffmpeg``). Used automatically when it loads: the fastest here.
``decord``      decord, optional and never the default: unmaintained, its ``len()`` trusts the
                container and its ``get_batch`` can deadlock holding the GIL, it returns wrong
                frames on some VP8/WebM and AVI files and leaks memory on long videos. It runs
                in a forked child so that a hang is bounded (see ``isolate``).
``frames``      a folder of pre-extracted frames (``img_00001.jpg`` ...), picked automatically
                when the source is a directory.
==============  ===============================================================================

Every backend is handed the same probe, so frame ``i`` means the same picture for all of them
(tests decode the same indices with every installed backend and compare pixels). MPEG-TS and
MPEG-PS files, in which torchcodec and decord were found to return wrong frames or none, are
read by PyAV whatever the backend. Decoders are
opened inside each call and never kept, so nothing is shared across forked DataLoader workers;
FFmpeg gets one thread per call by default (a DataLoader already runs one process per core).

Hostile files are bounded: a call that does not return within ``timeout`` seconds raises
`SampleError`; frames larger than ``max_pixels`` are refused before decoding. Every problem is
a `SampleError` naming the file: the trainer's stop / skip policy then applies.
"""

from __future__ import annotations

import bisect
import functools
import io
import os
import pickle
import re
import select
import signal
import threading
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence, Union

import numpy as np
import torch

from omniclip.errors import ConfigError, SampleError

#: A path to a video file or frame folder, or a whole encoded file in memory (what a shard
#: reader holds); the same decode path serves both.
VideoSource = Union[str, os.PathLike, bytes]

BACKENDS = ("pyav", "torchcodec", "decord", "frames")
#: Conditions that are handled by default and become a `SampleError` when listed in ``reject``.
#: ``frame_count_mismatch``: the container header claims more frames than the stream holds
#: (a truncated file, or a muxer that over-reports); rejected by default, since a clip sampled
#: from a cut file misses its end. ``variable_frame_rate``: frames are sampled by index, which
#: is exact but no longer evenly spaced in time. ``rotated``: rotation metadata is applied.
REJECTABLE = ("frame_count_mismatch", "variable_frame_rate", "rotated")
VIDEO_SUFFIXES = (".mp4", ".webm", ".mkv", ".avi", ".mov", ".m4v", ".mpg", ".mpeg", ".flv", ".ogv")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


class DecodeTimeout(SampleError):
    """A decode did not return within the allowed time."""


@dataclass(frozen=True)
class DecodeOptions:
    """How files are decoded.

    Args:
        backend: ``auto`` (torchcodec when it loads, else PyAV), or one of `BACKENDS`
            (``frames`` is chosen for directories whatever this says).
        threads: FFmpeg threads per call (1: one per DataLoader worker).
        timeout: seconds one probe or read may take (0 or None: unbounded).
        isolate: decode in a forked child that is killed at the timeout; None = only for
            decord, which can hang inside C while holding the GIL, where no in-process
            timer can interrupt it. Off the main thread the in-process timer cannot be armed,
            so there only ``isolate`` bounds the time.
        reject: conditions of `REJECTABLE` that make a file a bad sample.
        max_pixels: largest frame (width x height) accepted; bounds memory on hostile files.
        frame_template: file names in frame folders, formatted with the 0-based index plus
            ``frame_start`` (mmaction's ``img_{:05d}.jpg`` from 1).
        frame_fps: frame rate reported for frame folders (they carry none).
    """

    backend: str = "auto"
    threads: int = 1
    timeout: float | None = 30.0
    isolate: bool | None = None
    reject: tuple[str, ...] = ("frame_count_mismatch",)
    max_pixels: int = 4096 * 2304
    frame_template: str = "img_{:05d}.jpg"
    frame_start: int = 1
    frame_fps: float = 30.0

    def __post_init__(self) -> None:
        if self.backend != "auto" and self.backend not in BACKENDS:
            raise ConfigError("backend", f"unknown video backend `{self.backend}` (known: auto, {', '.join(BACKENDS)})")
        if self.threads < 0:
            raise ConfigError("threads", f"must be >= 0 (0 = FFmpeg's choice), got {self.threads}")
        object.__setattr__(self, "reject", tuple(self.reject))
        unknown = [r for r in self.reject if r not in REJECTABLE]
        if unknown:
            raise ConfigError("reject", f"unknown condition `{unknown[0]}` (known: {', '.join(REJECTABLE)})")
        if self.max_pixels < 1:
            raise ConfigError("max_pixels", f"must be positive, got {self.max_pixels}")
        try:
            self.frame_template.format(0)
        except (IndexError, KeyError, ValueError) as err:
            raise ConfigError("frame_template", f"{self.frame_template!r} does not format an index: {err}") from None


@dataclass(frozen=True)
class VideoInfo:
    """What a video holds, as measured by `probe`.

    ``num_frames`` counts the frames the stream carries (``header_frames`` is what the
    container claims, None when it says nothing); ``width`` x ``height`` is the displayed size,
    after ``rotation`` (degrees counter-clockwise, a multiple of 90). ``frame_pts`` are the
    presentation timestamps of the frames in order, in ``time_base`` units, and ``keyframes``
    the indices of the frames a decoder can start from: together they map a frame index to an
    exact seek, also for variable frame rates.
    """

    num_frames: int
    fps: float
    duration: float
    width: int
    height: int
    rotation: int = 0
    codec: str = ""
    container: str = ""
    header_frames: int | None = None
    variable_frame_rate: bool = False
    time_base: Fraction = Fraction(1, 1)
    frame_pts: tuple[int, ...] = field(default=(), repr=False)
    keyframes: tuple[int, ...] = field(default=(), repr=False)

    def frame_times(self) -> np.ndarray:
        """Presentation time (s) of every frame."""
        return np.asarray(self.frame_pts, dtype=np.float64) * float(self.time_base)


# ------------------------------------------------------------------------------- backend choice


@functools.lru_cache(maxsize=None)
def backend_available(name: str) -> str | None:
    """None when ``name`` can decode here, else why not (for skip messages and errors)."""
    try:
        if name == "pyav":
            import av  # noqa: F401
        elif name == "torchcodec":
            # Importing the decoders loads FFmpeg's shared libraries: the real test.
            from torchcodec.decoders import VideoDecoder  # noqa: F401
        elif name == "decord":
            import decord  # noqa: F401
        elif name == "frames":
            import torchvision.io  # noqa: F401
        else:
            return f"unknown backend `{name}`"
    except Exception as err:  # noqa: BLE001 - torchcodec raises RuntimeError/OSError when FFmpeg is missing
        hint = {"pyav": "pip install av", "torchcodec": "pip install torchcodec and apt-get install ffmpeg",
                "decord": "pip install decord"}.get(name, "")
        return f"{name} cannot load ({type(err).__name__}: {str(err).splitlines()[0][:200]}); {hint}"
    return None


def available_backends() -> list[str]:
    """The file backends that can decode here, fastest first."""
    return [b for b in ("torchcodec", "pyav", "decord") if backend_available(b) is None]


#: Containers in which a backend was found to seek to wrong frames or to fail (torchcodec 0.17 and
#: decord 0.6 on MPEG-TS and MPEG-PS: frames off by one, or none); such files go to PyAV, whose
#: reader falls back to decoding forward when a seek overshoots.
_UNRELIABLE_CONTAINERS = {"torchcodec": frozenset({"mpegts", "mpeg"}), "decord": frozenset({"mpegts", "mpeg"})}


def resolve_backend(backend: str, source: VideoSource, info: VideoInfo | None = None) -> str:
    """The backend that reads ``source``: ``frames`` for folders; else ``backend`` (``auto``: the
    best installed), unless it is known to misread ``info``'s container, which PyAV then reads."""
    if not isinstance(source, bytes) and Path(source).is_dir():
        return "frames"
    if backend == "frames":
        raise SampleError(_name(source), "not a frame folder")
    if backend == "auto":
        backend = next((b for b in ("torchcodec", "pyav") if backend_available(b) is None), "")
        if not backend:
            raise ConfigError("backend", "no video decoder: pip install av (bundles FFmpeg), or torchcodec with FFmpeg")
    else:
        why = backend_available(backend)
        if why is not None:
            raise ConfigError("backend", why)
    if info is not None and info.container in _UNRELIABLE_CONTAINERS.get(backend, ()):
        return "pyav"
    return backend


# --------------------------------------------------------------------------------- time bounds


def _name(source: VideoSource) -> str:
    return "<in-memory video>" if isinstance(source, bytes) else str(source)


@contextmanager
def _deadline(seconds: float | None, source: VideoSource) -> Iterator[None]:
    """Raise `DecodeTimeout` in this thread after ``seconds`` (a SIGALRM timer, main thread only).

    The handler runs when the interpreter regains control: between the packets of a PyAV loop,
    or when a C call returns. A C call that never returns is what ``isolate`` is for.
    """
    if not seconds or threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum: int, frame: Any) -> None:
        raise DecodeTimeout(_name(source), f"decoding did not finish within {seconds:g} s (timeout)")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _child_result(fn: Callable[..., Any], args: tuple) -> tuple[str, Any]:
    try:
        return "ok", fn(*args)
    except SampleError as err:
        return "sample", (err.path, err.problem)
    except BaseException as err:  # noqa: BLE001 - everything goes back to the parent
        return "error", f"{type(err).__name__}: {err}\n{traceback.format_exc(limit=3)}"


def _isolated(fn: Callable[..., Any], args: tuple, seconds: float | None, source: VideoSource) -> Any:
    """``fn(*args)`` in a forked child; killed (SIGKILL) when it outlives ``seconds``.

    A bare ``os.fork``, not `multiprocessing`: DataLoader workers are daemonic processes, which
    multiprocessing forbids to have children. The child inherits the imported modules, so the
    call costs a fork (a few ms), and it leaves through ``os._exit`` (no cleanup handlers of the
    parent run twice). The result comes back pickled through a pipe.
    """
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        code = 0
        try:
            os.close(read_end)
            data = pickle.dumps(_child_result(fn, args), protocol=pickle.HIGHEST_PROTOCOL)
            view = memoryview(data)
            while view:
                view = view[os.write(write_end, view):]
        except BaseException:  # noqa: BLE001 - the parent reports a child that sent nothing
            code = 1
        finally:
            os._exit(code)
    os.close(write_end)
    chunks: list[bytes] = []
    deadline = time.monotonic() + seconds if seconds else None
    try:
        while True:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise DecodeTimeout(_name(source), f"decoding did not finish within {seconds:g} s (timeout; "
                                                   "the decoding process was killed)")
            ready, _, _ = select.select([read_end], [], [], left)
            if ready:
                chunk = os.read(read_end, 1 << 20)
                if not chunk:
                    break
                chunks.append(chunk)
    finally:
        os.close(read_end)
        try:
            os.kill(pid, signal.SIGKILL)  # a no-op for a child that already finished
        except ProcessLookupError:
            pass
        os.waitpid(pid, 0)
    if not chunks:
        raise SampleError(_name(source), "the decoding process died without a result")
    kind, value = pickle.loads(b"".join(chunks))
    if kind == "sample":
        raise SampleError(*value)
    if kind == "error":
        raise SampleError(_name(source), f"decoding failed: {value}")
    return value


def _bounded(fn: Callable[..., Any], args: tuple, opts: DecodeOptions, backend: str, source: VideoSource) -> Any:
    isolate = backend == "decord" if opts.isolate is None else opts.isolate
    if isolate:
        return _isolated(fn, args, opts.timeout, source)
    with _deadline(opts.timeout, source):
        return fn(*args)


# --------------------------------------------------------------------------------------- probe


def probe(source: VideoSource, opts: DecodeOptions = DecodeOptions()) -> VideoInfo:
    """What ``source`` holds; `SampleError` naming it if it is not a usable video.

    Files are demuxed once without decoding (the packet count is the frame count) and the
    first frame is decoded for its rotation; folders are listed. The same probe serves every
    backend.
    """
    _check_exists(source)
    if not isinstance(source, bytes) and Path(source).is_dir():
        info = _probe_folder(Path(source), opts)
    else:
        if backend_available("pyav") is not None:
            raise ConfigError("backend", "probing video files needs PyAV: pip install av")
        info = _bounded(_probe_pyav, (source,), opts, "pyav", source)
    _check_info(source, info, opts)
    return info


def _check_exists(source: VideoSource) -> None:
    if isinstance(source, bytes):
        if not source:
            raise SampleError(_name(source), "empty (0 bytes)")
        return
    path = Path(source)
    if not path.exists():
        raise SampleError(path, "file not found")
    if path.is_file() and path.stat().st_size == 0:
        raise SampleError(path, "file is empty (0 bytes)")


def _check_info(source: VideoSource, info: VideoInfo, opts: DecodeOptions) -> None:
    name = _name(source)
    if info.num_frames == 0:
        raise SampleError(name, "the video stream holds no frames")
    if info.width * info.height > opts.max_pixels:
        raise SampleError(name, f"frames of {info.width}x{info.height} exceed max_pixels={opts.max_pixels}")
    if "frame_count_mismatch" in opts.reject and info.header_frames and info.header_frames > info.num_frames:
        raise SampleError(name, f"the header claims {info.header_frames} frames but the stream holds "
                                f"{info.num_frames} (truncated file or over-reporting header)")
    if "variable_frame_rate" in opts.reject and info.variable_frame_rate:
        raise SampleError(name, "variable frame rate (rejected by reject: [variable_frame_rate])")
    if "rotated" in opts.reject and info.rotation:
        raise SampleError(name, f"rotated by {info.rotation} degrees (rejected by reject: [rotated])")


def _open_av(source: VideoSource) -> Any:
    import av

    return av.open(io.BytesIO(source) if isinstance(source, bytes) else str(source), metadata_errors="ignore")


def _video_stream(container: Any, name: str) -> Any:
    if not container.streams.video:
        kinds = sorted({s.type for s in container.streams})
        held = f"{' and '.join(kinds)} streams only" if kinds else "the file holds no streams"
        raise SampleError(name, f"no video stream ({held}; an audio-only file?)")
    stream = container.streams.video[0]
    codec = stream.codec_context
    if codec is None or codec.name in (None, "", "none"):
        tag = getattr(stream.codec_context, "codec_tag", "") if stream.codec_context is not None else ""
        raise SampleError(name, f"unsupported codec (FFmpeg has no decoder for it{', tag ' + tag if tag else ''})")
    return stream


def _av_errors() -> tuple[type[BaseException], ...]:
    import av

    return (av.FFmpegError, OSError, ValueError, RuntimeError, IndexError, EOFError)


def _probe_pyav(source: VideoSource) -> VideoInfo:
    name = _name(source)
    try:
        container = _open_av(source)
    except _av_errors() as err:
        raise SampleError(name, f"cannot open as a video (corrupt or not a video file): {err}") from None
    with container:
        stream = _video_stream(container, name)
        header = int(stream.frames) or None
        pts: list[int] = []
        keys: list[int] = []
        rotation: int | None = None
        try:
            for packet in container.demux(stream):
                if packet.size == 0:  # the flush packet at the end
                    continue
                stamp = packet.pts if packet.pts is not None else packet.dts
                if stamp is None:
                    continue
                pts.append(int(stamp))
                if packet.is_keyframe:
                    keys.append(int(stamp))
                if rotation is None:
                    # The first decoded frame carries the display matrix; decoding it here, not
                    # after a seek back, also serves containers that seek inexactly (MPEG-TS).
                    rotation = _first_rotation(stream, packet, name)
        except _av_errors() as err:
            if not pts:
                raise SampleError(name, f"cannot read video packets (corrupt file): {err}") from None
            # A damaged tail: the frames before it are what the stream holds.
        if pts and rotation is None:
            rotation = _first_rotation(stream, None, name)  # drain the decoder's delay
            if rotation is None:
                raise SampleError(name, "the video stream holds no decodable frame")
        time_base = stream.time_base or Fraction(1, 1)
        width, height = stream.codec_context.width, stream.codec_context.height
    pts.sort()
    repeated = len(pts) - len(set(pts))
    if repeated:  # an index -> timestamp seek would be ambiguous
        raise SampleError(name, f"{repeated} frames repeat another frame's timestamp (spliced or broken stream)")
    order = {stamp: i for i, stamp in enumerate(pts)}
    keyframes = sorted({order[k] for k in keys}) or [0]
    times = np.asarray(pts, dtype=np.float64) * float(time_base)
    steps = np.diff(times)
    if steps.size:
        step = float(np.median(steps))
        fps = 1.0 / step if step > 0 else float(stream.average_rate or 0)
        # Timestamps are rounded to the time base; a spread beyond a quarter frame is a real VFR.
        vfr = bool(step > 0 and (steps.max() - steps.min()) > 0.25 * step + 2 * float(time_base))
        duration = float(times[-1] - times[0] + step)
    else:
        fps = float(stream.average_rate or 0) or 1.0
        vfr, duration = False, 1.0 / fps
    rotation = rotation or 0
    if rotation % 180:
        width, height = height, width
    return VideoInfo(num_frames=len(pts), fps=fps, duration=duration, width=width, height=height,
                     rotation=rotation, codec=stream.codec_context.name, container=container.format.name,
                     header_frames=header,
                     variable_frame_rate=vfr, time_base=Fraction(time_base), frame_pts=tuple(pts),
                     keyframes=tuple(keyframes))


def _first_rotation(stream: Any, packet: Any, name: str) -> int | None:
    """Rotation of the first frame that ``packet`` (None: the decoder's flush) yields, if any."""
    try:
        decoded = stream.codec_context.decode(packet)
    except _av_errors() as err:
        raise SampleError(name, f"cannot decode the first frame (corrupt file): {err}") from None
    return _rotation_of(decoded[0], name) if decoded else None


def _rotation_of(frame: Any, name: str) -> int:
    rotation = int(round(getattr(frame, "rotation", 0) or 0)) % 360
    if rotation % 90:
        raise SampleError(name, f"rotation of {rotation} degrees is not a multiple of 90")
    return rotation


def _probe_folder(folder: Path, opts: DecodeOptions) -> VideoInfo:
    numbers = _folder_frames(folder, opts)
    if not numbers:
        raise SampleError(folder, f"frame folder holds no frames named like {opts.frame_template.format(opts.frame_start)}")
    expected = list(range(opts.frame_start, opts.frame_start + len(numbers)))
    if numbers != expected:
        gap = next(e for n, e in zip(numbers, expected) if n != e)
        raise SampleError(folder, f"frame folder is missing {opts.frame_template.format(gap)} "
                                  f"(frames must be numbered from {opts.frame_start} without gaps)")
    first = _read_image(folder / opts.frame_template.format(opts.frame_start))
    count = len(numbers)
    return VideoInfo(num_frames=count, fps=opts.frame_fps, duration=count / opts.frame_fps,
                     width=first.shape[2], height=first.shape[1], codec="frames",
                     time_base=Fraction(1, 1), frame_pts=tuple(range(count)), keyframes=tuple(range(count)))


@functools.lru_cache(maxsize=64)
def _template_pattern(template: str) -> re.Pattern[str]:
    head, _, tail = template.partition("{")
    tail = tail.partition("}")[2]
    return re.compile(re.escape(head) + r"(\d+)" + re.escape(tail) + r"\Z")


def _folder_frames(folder: Path, opts: DecodeOptions) -> list[int]:
    pattern = _template_pattern(opts.frame_template)
    numbers = []
    with os.scandir(folder) as entries:
        for entry in entries:
            match = pattern.match(entry.name)
            if match and opts.frame_template.format(int(match.group(1))) == entry.name:
                numbers.append(int(match.group(1)))
    return sorted(numbers)


def _read_image(path: Path) -> torch.Tensor:
    from torchvision.io import ImageReadMode, decode_image

    try:
        data = torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8)
        return decode_image(data, mode=ImageReadMode.RGB)
    except FileNotFoundError:
        raise SampleError(path, "frame file not found") from None
    except (RuntimeError, ValueError) as err:
        raise SampleError(path, f"cannot decode the frame image (corrupt file): {err}") from None


# ---------------------------------------------------------------------------------------- read


def read_frames(
    source: VideoSource,
    indices: Sequence[int] | np.ndarray | torch.Tensor,
    opts: DecodeOptions = DecodeOptions(),
    *,
    info: VideoInfo | None = None,
    layout: str = "THWC",
) -> torch.Tensor:
    """The frames ``indices`` of ``source`` as uint8 ``[T, H, W, 3]`` (``layout="TCHW"``: ``[T, 3, H, W]``).

    Indices may repeat and come in any order; each distinct frame is decoded once. ``info``
    (from `probe`) is measured when not given. Rotation metadata is applied.
    """
    if layout not in ("THWC", "TCHW"):
        raise ValueError(f"layout must be 'THWC' or 'TCHW', got {layout!r}")
    info = probe(source, opts) if info is None else info
    wanted = np.asarray(indices, dtype=np.int64).reshape(-1)
    if wanted.size == 0:
        raise ValueError("read_frames needs at least one index")
    bad = wanted[(wanted < 0) | (wanted >= info.num_frames)]
    if bad.size:
        raise SampleError(_name(source), f"frame {int(bad[0])} requested but the video holds {info.num_frames} frames")
    distinct, inverse = np.unique(wanted, return_inverse=True)
    backend = resolve_backend(opts.backend, source, info)
    reader = _READERS[backend]
    frames = _bounded(reader, (source, info, distinct.tolist(), opts), opts, backend, source)
    frames = torch.as_tensor(frames)
    if backend in ("pyav", "decord") and info.rotation:
        # torchcodec applies the display matrix itself; PyAV and decord return coded frames.
        frames = torch.rot90(frames, k=info.rotation // 90, dims=(1, 2))
    expected = (distinct.size, info.height, info.width, 3)
    if tuple(frames.shape) != expected:
        raise SampleError(_name(source), f"{backend} returned frames of shape {tuple(frames.shape)}, expected {expected}")
    frames = frames[torch.from_numpy(inverse.reshape(-1))]
    return frames.permute(0, 3, 1, 2).contiguous() if layout == "TCHW" else frames.contiguous()


def _read_pyav(source: VideoSource, info: VideoInfo, indices: list[int], opts: DecodeOptions) -> np.ndarray:
    """Seek to the keyframe before a target only when it lies past the decoding position; else
    decode forward. Frames are matched by presentation timestamp, so the index is exact.

    MPEG-TS / MPEG-PS seeks are byte-based estimates that can land past the target (or past the
    end); when one does, the rest of the clip is decoded forward from the start of the file
    (``indices`` are sorted, so that is one pass).
    """
    name = _name(source)
    out: list[np.ndarray] = []
    try:
        container = _open_av(source)
    except _av_errors() as err:
        raise SampleError(name, f"cannot open as a video (corrupt file): {err}") from None
    with container:
        stream = _video_stream(container, name)
        stream.codec_context.thread_count = opts.threads
        if opts.threads != 1:
            stream.codec_context.thread_type = "AUTO"  # frame threads too
        frames: Iterator[Any] | None = None
        position = -1  # index of the last frame decoded
        forward_only = False  # set once a seek overshot its target
        try:
            for index in indices:
                target = info.frame_pts[index]
                keyframe = info.keyframes[bisect.bisect_right(info.keyframes, index) - 1]
                sought = frames is None or (not forward_only and (index <= position or keyframe > position))
                if sought:
                    container.seek(target, stream=stream, backward=True)
                    frames = container.decode(stream)
                found = _decode_until(frames, target)
                if sought and not forward_only and (found is None or found[0] > target):
                    forward_only = True
                    container.seek(0, backward=True)
                    frames = container.decode(stream)
                    found = _decode_until(frames, target)
                if found is None:
                    raise SampleError(name, f"frame {index} could not be decoded (truncated file?)")
                if found[0] > target:
                    raise SampleError(name, f"frame {index} (pts {target}) is missing from the stream")
                position = index
                out.append(found[1].to_ndarray(format="rgb24"))
        except _av_errors() as err:
            raise SampleError(name, f"cannot decode frame {indices[min(len(out), len(indices) - 1)]}: {err}") from None
    shapes = {frame.shape for frame in out}
    if len(shapes) > 1:
        raise SampleError(name, f"the frame size changes inside the stream ({sorted(shapes)})")
    return np.stack(out)


def _decode_until(frames: Iterator[Any], target: int) -> tuple[int, Any] | None:
    """The first decoded frame at or after ``target`` with its timestamp; None at the end."""
    for frame in frames:
        stamp = frame.pts if frame.pts is not None else frame.dts
        if stamp is not None and stamp >= target:
            return stamp, frame
    return None


def _frame_times_to_play(info: VideoInfo, indices: list[int]) -> list[float]:
    """Times inside each frame's display interval (its midpoint), robust to timestamp rounding."""
    times = info.frame_times()
    step = 1.0 / info.fps if info.fps > 0 else 0.0
    return [float((times[i] + (times[i + 1] if i + 1 < len(times) else times[i] + step)) / 2) for i in indices]


def _read_torchcodec(source: VideoSource, info: VideoInfo, indices: list[int], opts: DecodeOptions) -> torch.Tensor:
    """Constant frame rate: approximate seek mode (no index scan; our probe already holds the
    timestamps), asked for the frames played at each frame's mid-interval time. Variable frame
    rate: exact mode and frame indices (approximate mode maps indices to times through the mean
    rate, which picks wrong frames there)."""
    from torchcodec.decoders import VideoDecoder

    name = _name(source)
    exact = info.variable_frame_rate
    try:
        decoder = VideoDecoder(source if isinstance(source, bytes) else str(source), num_ffmpeg_threads=opts.threads,
                               seek_mode="exact" if exact else "approximate")
        if exact:
            batch = decoder.get_frames_at(indices)
        else:
            batch = decoder.get_frames_played_at(_frame_times_to_play(info, indices))
    except (RuntimeError, ValueError, IndexError) as err:
        raise SampleError(name, f"torchcodec cannot decode: {err}") from None
    return batch.data.permute(0, 2, 3, 1)


def _read_decord(source: VideoSource, info: VideoInfo, indices: list[int], opts: DecodeOptions) -> np.ndarray:
    import decord

    name = _name(source)
    try:
        reader = decord.VideoReader(io.BytesIO(source) if isinstance(source, bytes) else str(source),
                                    num_threads=opts.threads)
        return reader.get_batch(indices).asnumpy()
    except (decord.DECORDError, RuntimeError, IndexError) as err:
        raise SampleError(name, f"decord cannot decode: {err}") from None


def _read_folder(source: VideoSource, info: VideoInfo, indices: list[int], opts: DecodeOptions) -> torch.Tensor:
    folder = Path(source)
    frames = [_read_image(folder / opts.frame_template.format(i + opts.frame_start)) for i in indices]
    shapes = {tuple(f.shape) for f in frames}
    if len(shapes) > 1:
        raise SampleError(folder, f"frames of different sizes in one folder: {sorted(shapes)}")
    return torch.stack(frames).permute(0, 2, 3, 1)


_READERS: dict[str, Callable[[VideoSource, VideoInfo, list[int], DecodeOptions], Any]] = {
    "pyav": _read_pyav,
    "torchcodec": _read_torchcodec,
    "decord": _read_decord,
    "frames": _read_folder,
}
