"""Video decoding and U-MARVEL's frame sampling (UMARVEL-VIDEO-SPEC section 2), on clips the
tests write with PyAV: the rule's numbers, the frames against the evaluation's reader, and
refusals of what cannot be decoded."""

from __future__ import annotations

import io
from fractions import Fraction

import numpy as np
import pytest
import torch

from core.errors import InvalidRequest, PayloadTooLarge
from core.settings import Settings
from devkit.clips import make_clip
from media import kinds
from media.video import (
    content_type,
    frame_count,
    frame_indices,
    frame_size,
    open_video,
    resize_frame,
    sample_video,
)
from tests.video_reference import fetch_video

LIMITS = {"max_bytes": 10**8, "max_pixels": 10**7, "max_frames": 10**5}

# (width, height, frames, rate, codec, container, pixel format): odd sizes and frame rates,
# every allowed container, a clip of 3 frames.
CLIPS = {
    "mp4-64x48-10fps": (64, 48, 30, 10, "libx264", "mp4", "yuv420p"),
    "mp4-80x48-30fps-3frames": (80, 48, 3, 30, "libx264", "mp4", "yuv420p"),
    "mp4-65x49-7fps-444": (65, 49, 20, 7, "libx264", "mp4", "yuv444p"),
    "webm-64x64-29.97fps-vp9": (64, 64, 50, Fraction(30000, 1001), "libvpx-vp9", "webm", "yuv420p"),
    "mkv-50x30-12.5fps-vp8": (50, 30, 25, Fraction(25, 2), "libvpx", "mkv", "yuv420p"),
    "avi-64x48-10fps-mpeg4": (64, 48, 40, 10, "mpeg4", "avi", "yuv420p"),
}


def clip(name: str) -> bytes:
    width, height, frames, rate, codec, container, pix_fmt = CLIPS[name]
    return make_clip(width, height, frames, rate, codec=codec, container=container, pix_fmt=pix_fmt)


@pytest.mark.parametrize(
    ("total", "fps", "nframes", "expected"),
    [
        (30, 10.0, None, 6),  # 2 a second
        (40, 10.0, None, 8),  # MSR-VTT-like: 8 frames
        (25, 10.0, None, 4),  # 5.0 rounds half to even: 4
        (35, 10.0, None, 8),  # 7.0: 8
        (20, 30.0, None, 4),  # at least 4
        (3, 30.0, None, 2),  # fewer than 4 frames: floor(T / 2) * 2
        (2, 30.0, None, 2),
        (100_000, 30.0, None, 768),  # at most 768
        (1001, 1.0, None, 768),
        (600, 30.0, 12, 12),  # MSVD's nframes
        (600, 30.0, 13, 12),  # 6.5 rounds to 6
        (600, 30.0, 15, 16),  # 7.5 rounds to 8
    ],
)
def test_frame_count(total: int, fps: float, nframes: int | None, expected: int) -> None:
    assert frame_count(total, fps, nframes) == expected


@pytest.mark.parametrize(("total", "nframes"), [(1, None), (0, None), (10, 12)])
def test_impossible_frame_counts_are_refused(total: int, nframes: int | None) -> None:
    with pytest.raises(InvalidRequest, match="cannot sample"):
        frame_count(total, 30.0, nframes)


def test_frame_indices_are_torchs_float32_linspace() -> None:
    assert frame_indices(30, 6) == (0, 6, 12, 17, 23, 29)
    assert frame_indices(40, 8) == (0, 6, 11, 17, 22, 28, 33, 39)
    # A float64 linspace picks another frame here; the reference's torch.linspace does not.
    import numpy as np

    total, count = 16_951, 768
    float64 = tuple(np.round(np.linspace(0, total - 1, count)).astype(int).tolist())
    torch_indices = tuple(torch.linspace(0, total - 1, count).round().long().tolist())
    assert float64 != torch_indices
    assert frame_indices(total, count) == torch_indices


@pytest.mark.parametrize(
    ("height", "width", "count", "expected"),
    [
        (48, 64, 8, (280, 392)),  # the spec's 64x48 -> 392x280 (up to the 100,352 minimum)
        (48, 80, 8, (252, 420)),
        (64, 64, 8, (336, 336)),
        (1080, 1920, 8, (560, 1008)),  # the 602,112 per-frame maximum
        (1080, 1920, 128, (392, 728)),  # the total budget above 64 frames: 301,056 a frame
        (1080, 1920, 768, (224, 420)),  # at least 1.05 x the minimum
    ],
)
def test_frame_size(height: int, width: int, count: int, expected: tuple[int, int]) -> None:
    assert frame_size(height, width, count) == expected


def test_resize_is_torchvisions_bicubic_antialiased_uint8_resize() -> None:
    functional = pytest.importorskip("torchvision.transforms.functional")
    from torchvision.transforms import InterpolationMode

    generator = torch.Generator().manual_seed(0)
    for (h, w), (height, width) in [((48, 64), (280, 392)), ((49, 65), (280, 364)),
                                    ((720, 1280), (336, 588)), ((30, 50), (224, 448))]:  # fmt: skip
        frame = torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=generator)
        expected = functional.resize(
            frame, [height, width], InterpolationMode.BICUBIC, antialias=True
        )
        assert torch.equal(resize_frame(frame, height, width), expected)


@pytest.mark.parametrize("name", list(CLIPS))
def test_sampled_frames_are_the_evaluations(name: str) -> None:
    data = clip(name)
    video = open_video(data, **LIMITS)
    width, height, frames, rate, *_ = CLIPS[name]
    assert (video.info.width, video.info.height, video.info.frames) == (width, height, frames)
    assert video.info.fps == pytest.approx(float(rate))
    sampled = sample_video(video)
    expected, indices, fps = fetch_video(data)
    assert sampled.frames.dtype == torch.float32
    assert sampled.indices == tuple(indices)
    assert sampled.fps == fps
    assert torch.equal(sampled.frames, expected)
    # The clips move: the sampled frames differ from one another.
    frames = sampled.frames
    assert all(not torch.equal(frames[i], frames[i + 1]) for i in range(len(frames) - 1))


def test_the_frame_count_can_be_fixed() -> None:
    data = clip("avi-64x48-10fps-mpeg4")
    sampled = sample_video(open_video(data, **LIMITS), nframes=12)
    expected, indices, _ = fetch_video(data, nframes=12)
    assert sampled.indices == tuple(indices)
    assert len(indices) == 12
    assert torch.equal(sampled.frames, expected)


def test_a_clip_of_fewer_than_four_frames_gives_two() -> None:
    sampled = sample_video(open_video(clip("mp4-80x48-30fps-3frames"), **LIMITS))
    assert sampled.indices == (0, 2)
    assert tuple(sampled.frames.shape) == (2, 3, 252, 420)


def test_a_single_frame_is_refused() -> None:
    with pytest.raises(InvalidRequest, match=r"1 frame\(s\); at least 2"):
        open_video(make_clip(64, 48, 1, 10), **LIMITS)


@pytest.mark.parametrize(
    "name", ["mp4-64x48-10fps", "webm-64x64-29.97fps-vp9", "avi-64x48-10fps-mpeg4"]
)
def test_truncated_files_are_refused(name: str) -> None:
    data = clip(name)
    for cut in (0.1, 0.3, 0.5, 0.7, 0.9):
        with pytest.raises(InvalidRequest, match="video"):
            open_video(data[: int(len(data) * cut)], **LIMITS)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "not one of MP4/MOV, WebM/Matroska, AVI"),
        (b"\x89PNG\r\n\x1a\n" + bytes(100), "not one of"),
        (b"\x00\x00\x00\x18ftypisom" + bytes(200), "could not be decoded"),
        (b"\x1a\x45\xdf\xa3" + bytes(200), "could not be decoded"),
        (b"RIFF\x00\x00\x00\x00AVI " + bytes(200), "could not be decoded"),
    ],
)
def test_garbage_is_refused(data: bytes, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        open_video(data, **LIMITS)


def test_a_codec_outside_the_allow_list_is_refused() -> None:
    data = make_clip(64, 48, 10, 10, codec="mjpeg", container="avi", pix_fmt="yuvj420p")
    with pytest.raises(InvalidRequest, match="video codec 'mjpeg' is not one of h264"):
        open_video(data, **LIMITS)


def test_limits() -> None:
    data = clip("mp4-64x48-10fps")
    with pytest.raises(PayloadTooLarge, match="bytes; the limit is 100"):
        open_video(data, **{**LIMITS, "max_bytes": 100})
    with pytest.raises(PayloadTooLarge, match="64x48 pixels; the limit is 3000"):
        open_video(data, **{**LIMITS, "max_pixels": 3000})
    with pytest.raises(PayloadTooLarge, match="more than 29 frames"):
        open_video(data, **{**LIMITS, "max_frames": 29})
    assert open_video(data, **{**LIMITS, "max_frames": 30}).info.frames == 30


def test_the_video_kind_checks_decodes_and_types_videos() -> None:
    kind = kinds.media_kind("video")
    settings = Settings()
    assert kind.max_bytes(settings) == settings.max_video_bytes
    data = clip("webm-64x64-29.97fps-vp9")
    kind.check(data, settings)
    assert kind.decode(data, settings).info.frames == 50
    with pytest.raises(InvalidRequest):
        kind.check(data[: len(data) // 2], settings)
    assert kind.content_type(data) == "video/webm"
    assert content_type(clip("mp4-64x48-10fps")) == "video/mp4"
    assert content_type(clip("mkv-50x30-12.5fps-vp8")) == "video/x-matroska"
    assert content_type(clip("avi-64x48-10fps-mpeg4")) == "video/x-msvideo"


def test_frame_at_is_the_frame_shown_at_that_time_of_a_video_or_a_segment() -> None:
    import av

    from media.video import frame_at

    data = make_clip(64, 48, 30, 10)
    with av.open(io.BytesIO(data)) as container:
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    video = open_video(data, max_bytes=1 << 20, max_pixels=1 << 20, max_frames=100)
    for seconds, index in [(0.0, 0), (1.04, 10), (2.9, 29), (99.0, 29), (-1.0, 0)]:
        assert np.array_equal(np.asarray(frame_at(video, seconds)), frames[index]), seconds
    segment = video.segment(10, 20)
    assert (segment.info.start, segment.info.end) == (1.0, 2.0)
    assert np.array_equal(np.asarray(frame_at(segment, 0.5)), frames[15])


def test_segment_bounds_cover_every_frame_with_full_windows() -> None:
    from media.video import segment_bounds

    assert segment_bounds(60, 2.0, 30, 15) == [(0, 60)]  # 30 s: one window, the whole video
    three_minutes = segment_bounds(360, 2.0, 30, 15)
    assert len(three_minutes) == 11
    assert three_minutes[:2] == [(0, 60), (30, 90)]
    assert three_minutes[-2:] == [(270, 330), (300, 360)]
    assert segment_bounds(100, 1.0, 30, 30) == [(0, 30), (30, 60), (60, 90), (70, 100)]
    for total, fps, window, stride in [
        (5395, 29.97, 30, 15),
        (1001, 24.0, 10, 7),
        (61, 2.0, 30, 30),
    ]:
        bounds = segment_bounds(total, fps, window, stride)
        size = round(window * fps)
        assert all(stop - start == size for start, stop in bounds)
        assert (bounds[0][0], bounds[-1][1]) == (0, total)
        covered = set().union(*(range(start, stop) for start, stop in bounds))
        assert covered == set(range(total))


@pytest.mark.parametrize(
    "name", ["mp4-64x48-10fps", "webm-64x64-29.97fps-vp9", "avi-64x48-10fps-mpeg4"]
)
def test_duration_and_frame_rate_limits_name_themselves(name: str) -> None:
    kind = kinds.media_kind("video")
    data = clip(name)
    seconds = kind.decode(data, Settings()).info.end
    kind.check(data, Settings(max_video_seconds=seconds + 0.5, max_video_fps=30))
    with pytest.raises(PayloadTooLarge, match=r"video lasts .* s; the limit is 1 s"):
        kind.check(data, Settings(max_video_seconds=1))
    with pytest.raises(InvalidRequest, match=r"frames a second; the limit is 5"):
        kind.check(data, Settings(max_video_fps=5))
