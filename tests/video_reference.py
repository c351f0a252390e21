"""UMARVEL-VIDEO-SPEC section 2 written out again for the tests, the way the evaluation ran
it: every frame decoded by PyAV (as torchvision's ``read_video`` did: frames at time 0 or
later, one per timestamp, ``to_rgb()``), the frame count rule, ``torch.linspace`` indices and
torchvision's bicubic antialiased resize of the uint8 frames, then ``.float()``."""

from __future__ import annotations

import io
import math

import numpy as np
import torch


def read_all_frames(data: bytes) -> tuple[torch.Tensor, float]:
    """Every frame as uint8 T x 3 x H x W, and the container's average frame rate."""
    import av

    with av.open(io.BytesIO(data), metadata_errors="ignore") as container:
        stream = container.streams.video[0]
        by_pts = {frame.pts: frame for frame in container.decode(video=0)}
        frames = [by_pts[pts] for pts in sorted(by_pts) if pts >= 0]
        rgb = np.stack([frame.to_rgb().to_ndarray() for frame in frames])
        return torch.as_tensor(rgb).permute(0, 3, 1, 2), float(stream.average_rate)


def nframes_of(total: int, fps: float, nframes: int | None = None) -> int:
    if nframes is not None:
        return round(nframes / 2) * 2
    low, high = 4, math.floor(min(768, total) / 2) * 2
    return round(min(max(total / fps * 2.0, low), high) / 2) * 2


def fetch_video(data: bytes, nframes: int | None = None) -> tuple[torch.Tensor, list[int], float]:
    """The float frames the processor got, the indices they came from, the frame rate."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.functional import resize
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

    video, fps = read_all_frames(data)
    n = nframes_of(len(video), fps, nframes)
    assert 2 <= n <= len(video)
    indices = torch.linspace(0, len(video) - 1, n).round().long()
    video = video[indices]
    min_pixels = 128 * 28 * 28
    max_pixels = max(min(768 * 28 * 28, 24576 * 28 * 28 / n * 2), int(min_pixels * 1.05))
    h, w = smart_resize(video.shape[2], video.shape[3], 28, min_pixels, max_pixels)
    video = resize(video, [h, w], interpolation=InterpolationMode.BICUBIC, antialias=True)
    return video.float(), indices.tolist(), fps
