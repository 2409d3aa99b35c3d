"""Tiny test videos written with PyAV (no video file is committed).

Frame ``i`` is a flat grey of level ``level(i)`` with a bright block in its top-left corner,
so the index of a decoded frame can be read back from its pixels (`frame_index`) and a
rotation shows where the block went.
"""

from __future__ import annotations

import struct
from fractions import Fraction
from pathlib import Path
from typing import Sequence

import av
import numpy as np
import torch

W, H = 64, 48


def level(i: int) -> int:
    return 16 + (i * 6) % 224


def picture(i: int, width: int = W, height: int = H) -> np.ndarray:
    img = np.full((height, width, 3), level(i), np.uint8)
    img[: height // 4, : width // 4] = (250, 40, 40)  # top-left marker
    return img


def frame_index(frame: torch.Tensor | np.ndarray, count: int) -> int:
    """The index whose level is closest to the frame's bottom-right quarter ([H, W, 3] or [3, H, W])."""
    x = torch.as_tensor(frame)
    x = x.permute(1, 2, 0) if x.shape[0] == 3 else x
    h, w = x.shape[:2]
    value = x[h // 2:, w // 2:].float().mean().item()
    return min(range(count), key=lambda i: abs(level(i) - value))


def write_video(path: Path, num_frames: int = 30, *, codec: str = "libx264", rate: int = 25, width: int = W,
                height: int = H, fmt: str | None = None, frame_times: Sequence[float] | None = None,
                rotation: int = 0, audio: bool = False, gop: int | None = None, faststart: bool = False,
                texture: bool = False) -> Path:
    """A video of ``num_frames`` pictures; ``frame_times`` (seconds) gives variable frame rates,
    ``faststart`` puts the mp4 index first (a cut file then keeps its header), ``texture`` adds
    noise in the top-right corner so that frames take more bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), "w", format=fmt, options=options) as container:
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuv420p"
        stream.bit_rate = 2_000_000  # high enough that every frame's level survives (mpeg4, vp8)
        if gop is not None:  # keyframes exactly every `gop` frames
            stream.codec_context.gop_size = gop
            if codec == "libx264":
                stream.options = {"x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0"}
        if frame_times is not None:
            stream.codec_context.time_base = Fraction(1, 1000)
        if rotation:
            stream.set_display_rotation(rotation)
        sound = container.add_stream("aac", rate=16000) if audio else None
        for i in range(num_frames):
            img = picture(i, width, height)
            if texture:
                img[: height // 4, width // 2:] = np.random.RandomState(i).randint(0, 256, (height // 4, width - width // 2, 3))
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            if frame_times is not None:
                frame.pts, frame.time_base = int(round(frame_times[i] * 1000)), Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
        if sound is not None:
            encode_audio(container, sound)
    return path


def encode_audio(container, stream, seconds: float = 0.5) -> None:
    samples = (0.1 * np.sin(np.linspace(0, 400, int(16000 * seconds)))).astype(np.float32)[None]
    for start in range(0, samples.shape[1], 1024):
        frame = av.AudioFrame.from_ndarray(samples[:, start:start + 1024], format="fltp", layout="mono")
        frame.sample_rate = 16000
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)


def write_audio_only(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", format="mp4") as container:
        encode_audio(container, container.add_stream("aac", rate=16000))
    return path


def write_no_frames(path: Path) -> Path:
    """A Matroska file with a video track that holds no frame (and a short audio track)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", format="matroska") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        encode_audio(container, container.add_stream("aac", rate=16000))
    return path


def all_frames(path: Path) -> np.ndarray:
    """Every frame in presentation order, decoded sequentially by PyAV (the ground truth)."""
    with av.open(str(path)) as container:
        frames = [(f.pts, f.to_ndarray(format="rgb24")) for f in container.decode(container.streams.video[0])]
    return np.stack([f for _, f in sorted(frames, key=lambda item: item[0])])


def truncate(path: Path, keep: float = 0.6) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def overreport_avi(path: Path, claimed: int) -> Path:
    """Patch an AVI's header (avih dwTotalFrames and strh dwLength) to claim ``claimed`` frames."""
    data = bytearray(path.read_bytes())
    avih = data.index(b"avih")
    struct.pack_into("<I", data, avih + 8 + 16, claimed)
    strh = data.index(b"strh")
    struct.pack_into("<I", data, strh + 8 + 32, claimed)
    path.write_bytes(bytes(data))
    return path


def unknown_codec(path: Path) -> Path:
    """An mp4 whose sample entry names a codec FFmpeg does not know (``avc1`` -> ``zzzz``)."""
    data = path.read_bytes()
    assert data.count(b"avc1") >= 1
    path.write_bytes(data.replace(b"avc1", b"zzzz"))
    return path


def write_frame_folder(folder: Path, num_frames: int = 20, template: str = "img_{:05d}.jpg", start: int = 1) -> Path:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(num_frames):
        Image.fromarray(picture(i)).save(folder / template.format(i + start), quality=95)
    return folder
