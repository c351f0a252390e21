"""Tiny video clips for tests, samples and benchmarks, written with PyAV in memory
(milliseconds each)."""

from __future__ import annotations

import io
from fractions import Fraction

import numpy as np

# container name for PyAV's muxer, per file kind
MUXERS = {"mp4": "mp4", "webm": "webm", "mkv": "matroska", "avi": "avi"}


def make_clip(
    width: int,
    height: int,
    frames: int,
    rate: Fraction | int,
    *,
    codec: str = "libx264",
    container: str = "mp4",
    pix_fmt: str = "yuv420p",
    colour: tuple[int, int, int] = (255, 220, 0),
) -> bytes:
    """A clip of a square (yellow by default) moving right over a background whose blue
    changes each frame, so every frame differs. libx264 needs even sizes in yuv420p (use
    yuv444p)."""
    import av

    buffer = io.BytesIO()
    with av.open(buffer, "w", format=MUXERS[container]) as output:
        stream = output.add_stream(codec, rate=Fraction(rate))
        assert isinstance(stream, av.VideoStream)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        if codec == "libx264":
            stream.options = {"preset": "ultrafast", "crf": "18"}
        side = max(2, min(width, height) // 4)
        for index in range(frames):
            pixels = np.zeros((height, width, 3), np.uint8)
            pixels[..., 0] = 40
            pixels[..., 2] = (index * 23) % 256
            left = (index * 5) % max(1, width - side)
            top = height // 3
            pixels[top : top + side, left : left + side] = colour
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            for packet in stream.encode(frame):
                output.mux(packet)
        for packet in stream.encode():
            output.mux(packet)
    return buffer.getvalue()
