"""Video decoding with limits, and U-MARVEL's frame sampling (UMARVEL-VIDEO-SPEC section 2).

The evaluation decoded every frame of a clip with PyAV (through torchvision), counted them,
picked ``n`` by a frame-rate rule, took ``n`` evenly spaced frames and resized them
(bicubic, antialiased) to multiples of 28 within a pixel budget. Here the same frames come
out of two passes over the file, so that memory holds the sampled frames and never the
whole clip: ``open_video`` decodes every frame once to count and validate them (the API and
the workers apply this same rule), and ``sample_video`` decodes again, converting to RGB
and resizing only the frames the rule picked.

PyAV and torch are imported inside functions: importing this module is cheap, and the API
process, which checks videos, never loads torch.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from core.errors import InvalidRequest, PayloadTooLarge
from media.images import check_geometry, smart_resize

if TYPE_CHECKING:
    import torch

FRAME_FACTOR = 2  # the frame count is a multiple of this (the vision towers' temporal patch)
FPS = 2.0  # frames sampled per second of video
MIN_FRAMES = 4
MAX_FRAMES = 768
FRAME_PIXEL_FACTOR = 28  # frame sides are multiples of this
MIN_PIXELS = 128 * 28 * 28  # 100,352 pixels per frame at least
MAX_PIXELS = 768 * 28 * 28  # 602,112 pixels per frame at most
TOTAL_PIXELS = 24576 * 28 * 28  # the budget of all frames together (bites above 64 frames)

# The containers a video may come in, by the FFmpeg demuxer that reads them; nothing else is
# handed to FFmpeg (it is never asked to guess the format). Their signatures are below.
CONTAINERS = {"mov": "MP4/MOV", "matroska": "WebM/Matroska", "avi": "AVI"}
# QuickTime files start with an atom of one of these types (MP4 with "ftyp").
_MOV_ATOMS = (b"ftyp", b"moov", b"mdat", b"wide", b"free", b"skip")
# The codecs a video stream may use (FFmpeg's canonical names).
CODECS = ("h264", "hevc", "vp8", "vp9", "av1", "mpeg4")


@dataclass(frozen=True)
class VideoInfo:
    """What the first pass over a video found."""

    container: str  # the demuxer: a key of CONTAINERS
    codec: str  # one of CODECS
    width: int
    height: int
    frames: int  # the frames the sampling rule counts (presentation order, from time 0)
    fps: float  # the container's average frame rate
    # The decoding position of each of those frames, in presentation order.
    order: tuple[int, ...] = field(repr=False)
    first: int = 0  # a segment's first frame in the whole video (``Video.segment``)

    @property
    def start(self) -> float:
        """Where these frames start in the whole video, in seconds."""
        return self.first / self.fps

    @property
    def end(self) -> float:
        """Where they end (after the last frame's duration), in seconds."""
        return (self.first + self.frames) / self.fps


@dataclass(frozen=True)
class Video:
    """A video file that passed ``open_video``: its bytes and what the check found."""

    data: bytes = field(repr=False)
    info: VideoInfo

    def segment(self, start: int, stop: int) -> Video:
        """Frames ``start`` to ``stop`` (exclusive, presentation order) as a video of their
        own: sampled, they are what the clip cut there would give (``sample_video``)."""
        info = self.info
        if not 0 <= start < stop <= info.frames or info.first:
            raise ValueError(f"no segment {start}:{stop} of a video of {info.frames} frames")
        order = info.order[start:stop]
        return Video(self.data, replace(info, frames=stop - start, order=order, first=start))


@dataclass(frozen=True)
class SampledVideo:
    """The frames U-MARVEL's evaluation gave the processor for a video."""

    frames: torch.Tensor  # n x 3 x h x w, float32 holding the integers 0..255
    indices: tuple[int, ...]  # which frames of the video, in order
    fps: float  # the video's average frame rate
    total: int  # the frames the video has (``VideoInfo.frames``)


def demuxer(data: bytes) -> str | None:
    """The demuxer (a key of ``CONTAINERS``) whose signature ``data`` starts with, or None."""
    if data[4:8] in _MOV_ATOMS:
        return "mov"
    if data[:4] == b"\x1a\x45\xdf\xa3":  # the EBML magic of Matroska and WebM
        return "matroska"
    if data[:4] == b"RIFF" and data[8:12] == b"AVI ":
        return "avi"
    return None


def content_type(data: bytes) -> str:
    """The Content-Type of a video file, from its signature."""
    kind = demuxer(data)
    if kind == "mov":
        return "video/quicktime" if data[8:12] == b"qt  " else "video/mp4"
    if kind == "matroska":
        return "video/webm" if b"webm" in data[:64] else "video/x-matroska"
    if kind == "avi":
        return "video/x-msvideo"
    return "application/octet-stream"


@contextmanager
def _container(data: bytes, name: str) -> Iterator[Any]:
    """The file opened with demuxer ``name``; FFmpeg's errors (while opening or decoding)
    become a 400 that says the video is damaged."""
    import av

    try:
        with av.open(io.BytesIO(data), format=name, metadata_errors="ignore") as container:
            yield container
    except (av.FFmpegError, ValueError, EOFError, OSError) as exc:
        raise InvalidRequest(f"video could not be decoded: {exc}") from None


def _stream(container: Any, max_pixels: int) -> Any:
    """The first video stream, checked: an allowed codec, a frame size within limits."""
    if not container.streams.video:
        raise InvalidRequest("video could not be decoded: it has no video stream (truncated?)")
    stream = container.streams.video[0]
    codec = stream.codec.canonical_name
    if codec not in CODECS:
        raise InvalidRequest(f"video codec {codec!r} is not one of {', '.join(CODECS)}")
    width, height = stream.codec_context.width, stream.codec_context.height
    if width * height > max_pixels:
        raise PayloadTooLarge(
            f"video frames are {width}x{height} pixels; the limit is {max_pixels} pixels"
        )
    check_geometry(width, height)
    rate = stream.average_rate
    if not rate or rate <= 0:
        raise InvalidRequest("video has no frame rate")
    return stream


def open_video(
    data: bytes,
    *,
    max_bytes: int,
    max_pixels: int,
    max_frames: int,
    max_seconds: float | None = None,
    max_fps: float | None = None,
) -> Video:
    """Check ``data`` by decoding every frame once: an allowed container and codec, at most
    ``max_bytes`` bytes, ``max_pixels`` pixels a frame, ``max_frames`` frames,
    ``max_seconds`` of duration and ``max_fps`` frames a second (both read from the header
    before decoding, the duration checked again on the frames), one frame size
    throughout, no truncation, at least two frames. Frames count as the evaluation's
    reader counted them: those at time 0 or later, one per timestamp (the last decoded)."""
    if len(data) > max_bytes:
        raise PayloadTooLarge(f"video is {len(data)} bytes; the limit is {max_bytes}")
    name = demuxer(data)
    if name is None:
        raise InvalidRequest(
            f"video could not be decoded: not one of {', '.join(CONTAINERS.values())}"
        )
    with _container(data, name) as container:
        stream = _stream(container, max_pixels)
        _check_timing(container, stream, max_seconds, max_fps)
        size = (stream.codec_context.width, stream.codec_context.height)
        by_pts: dict[int, int] = {}
        decoded = 0
        for position, frame in enumerate(container.decode(stream)):
            decoded += 1
            if decoded > max_frames:
                raise PayloadTooLarge(f"video has more than {max_frames} frames")
            if (frame.width, frame.height) != size:
                raise InvalidRequest(
                    f"video frames change size, from {size[0]}x{size[1]} "
                    f"to {frame.width}x{frame.height}"
                )
            if frame.pts is None:
                raise InvalidRequest("video has a frame without a timestamp")
            if frame.pts >= 0:
                by_pts[frame.pts] = position
        fps = float(stream.average_rate)
        _check_complete(container, stream, decoded, max(by_pts, default=None), fps)
        codec = stream.codec.canonical_name
    if len(by_pts) < FRAME_FACTOR:
        raise InvalidRequest(
            f"video has {len(by_pts)} frame(s); at least {FRAME_FACTOR} are needed"
        )
    order = tuple(by_pts[pts] for pts in sorted(by_pts))
    if max_seconds is not None and len(order) / fps > max_seconds:
        raise PayloadTooLarge(
            f"video lasts {len(order) / fps:.1f} s; the limit is {max_seconds:g} s"
        )
    info = VideoInfo(name, codec, size[0], size[1], len(order), fps, order)
    return Video(data, info)


def _check_timing(
    container: Any, stream: Any, max_seconds: float | None, max_fps: float | None
) -> None:
    """Refuse, before decoding, a frame rate over ``max_fps`` or a declared duration over
    ``max_seconds``."""
    fps = float(stream.average_rate)
    if max_fps is not None and fps > max_fps:
        raise InvalidRequest(f"video has {fps:g} frames a second; the limit is {max_fps:g}")
    if max_seconds is None:
        return
    declared = None
    if stream.duration:
        declared = float(stream.duration * stream.time_base)
    elif container.duration:
        declared = container.duration / 1_000_000
    if declared is not None and declared > max_seconds:
        raise PayloadTooLarge(f"video lasts {declared:.1f} s; the limit is {max_seconds:g} s")


def _check_complete(
    container: Any, stream: Any, decoded: int, last_pts: int | None, fps: float
) -> None:
    """Refuse a file whose frames stop short of what its header declares: fewer frames than
    its frame count, or a last frame more than a frame before its duration ends. (FFmpeg
    decodes a truncated WebM or AVI without an error, up to the cut.)"""
    declared = stream.frames
    if declared and decoded < declared:
        raise InvalidRequest(
            f"video is truncated or damaged: {decoded} of its {declared} frames decode"
        )
    if stream.duration:
        end = float((stream.start_time or 0) + stream.duration) * float(stream.time_base)
    elif len(container.streams) == 1 and container.duration:
        end = ((container.start_time or 0) + container.duration) / 1_000_000
    else:
        return  # nothing declared to compare with
    reached = -math.inf if last_pts is None else float(last_pts * stream.time_base) + 1 / fps
    if reached + 1 / fps < end:
        raise InvalidRequest(
            f"video is truncated or damaged: its frames stop at {max(reached, 0):.2f} s "
            f"of {end:.2f} s"
        )


def frame_at(video: Video, seconds: float) -> Any:
    """The frame shown at ``seconds`` from ``video``'s start (clamped to it) as an RGB PIL
    image: a video's poster, or the frame the reranker sees of a video (the middle of its
    best segment)."""
    info = video.info
    index = min(max(int(seconds * info.fps), 0), info.frames - 1)
    position = info.order[index]  # (a segment's order is its own frames')
    with _container(video.data, info.container) as container:
        for at, frame in enumerate(container.decode(container.streams.video[0])):
            if at == position:
                return frame.to_image()
    raise InvalidRequest("video could not be decoded: it changed since it was checked")


# -- segments --------------------------------------------------------------------------------
def segment_bounds(total: int, fps: float, window: float, stride: float) -> list[tuple[int, int]]:
    """The frame ranges a video of ``total`` frames at ``fps`` is embedded as: the whole
    video when it lasts at most ``window`` seconds, else windows of that length every
    ``stride`` seconds, the last one ending with the video (so every frame is in one and
    no window is short)."""
    size = max(round(window * fps), FRAME_FACTOR)
    if total <= size:
        return [(0, total)]
    step = max(round(stride * fps), 1)
    bounds = [(start, start + size) for start in range(0, total - size, step)]
    bounds.append((total - size, total))
    return bounds


# -- the sampling rule ---------------------------------------------------------------------
def frame_count(total: int, fps: float, nframes: int | None = None) -> int:
    """How many frames are sampled from a video of ``total`` frames at ``fps``: ``nframes``
    rounded to an even count when given, else 2 a second, at least 4 and at most 768 (and
    the video's own count), rounded to an even count. Python rounds half to even."""
    if nframes is not None:
        count = round(nframes / FRAME_FACTOR) * FRAME_FACTOR
    else:
        least = math.ceil(MIN_FRAMES / FRAME_FACTOR) * FRAME_FACTOR
        most = math.floor(min(MAX_FRAMES, total) / FRAME_FACTOR) * FRAME_FACTOR
        wanted = min(max(total / fps * FPS, least), most)
        count = round(wanted / FRAME_FACTOR) * FRAME_FACTOR
    if not FRAME_FACTOR <= count <= total:
        raise InvalidRequest(
            f"cannot sample {count} frames from a video of {total}: "
            f"between {FRAME_FACTOR} and {total} are possible"
        )
    return count


def frame_indices(total: int, count: int) -> tuple[int, ...]:
    """``count`` evenly spaced frames of ``total``: torch's float32 ``linspace`` rounded half
    to even (a float64 linspace picks other frames in long videos)."""
    import torch

    return tuple(torch.linspace(0, total - 1, count).round().long().tolist())


def frame_size(height: int, width: int, count: int) -> tuple[int, int]:
    """The (height, width) sampled frames are resized to: multiples of 28, at least 100,352
    pixels, at most 602,112 and the clip's share of the total budget."""
    budget = TOTAL_PIXELS / count * FRAME_FACTOR
    max_pixels = max(min(MAX_PIXELS, budget), int(MIN_PIXELS * 1.05))
    return smart_resize(
        height, width, factor=FRAME_PIXEL_FACTOR, min_pixels=MIN_PIXELS, max_pixels=max_pixels
    )


def resize_frame(frame: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """A uint8 frame (3 x H x W) resized as torchvision's ``resize(..., BICUBIC,
    antialias=True)`` does it: bicubic with antialiasing in float32, clamped to 0..255 and
    rounded (half to even) back to uint8."""
    import torch

    if tuple(frame.shape[-2:]) == (height, width):
        return frame
    scaled = torch.nn.functional.interpolate(
        frame.unsqueeze(0).float(),
        size=(height, width),
        mode="bicubic",
        align_corners=False,
        antialias=True,
    )
    return scaled.clamp(0, 255).round().to(torch.uint8).squeeze(0)


def sample_video(video: Video, *, nframes: int | None = None) -> SampledVideo:
    """The frames of ``video`` that U-MARVEL's evaluation embedded: counted, picked and
    resized by the rule above, as float32 (values 0..255)."""
    import torch

    info = video.info
    count = frame_count(info.frames, info.fps, nframes)
    indices = frame_indices(info.frames, count)
    height, width = frame_size(info.height, info.width, count)
    # Which output rows each decoding position fills.
    wanted: dict[int, list[int]] = {}
    for row, index in enumerate(indices):
        wanted.setdefault(info.order[index], []).append(row)
    frames = torch.empty((count, 3, height, width), dtype=torch.uint8)
    filled = 0
    with _container(video.data, info.container) as container:
        for position, frame in enumerate(container.decode(container.streams.video[0])):
            rows = wanted.get(position)
            if rows is None:
                continue
            rgb = torch.from_numpy(frame.to_ndarray(format="rgb24")).permute(2, 0, 1)
            resized = resize_frame(rgb, height, width)
            for row in rows:
                frames[row] = resized
            filled += 1
            if filled == len(wanted):
                break
    if filled < len(wanted):
        raise InvalidRequest("video could not be decoded: it changed since it was checked")
    return SampledVideo(frames.float(), indices, info.fps, info.frames)
