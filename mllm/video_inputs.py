"""What a Qwen-VL processor makes of a video's sampled frames (UMARVEL-VIDEO-SPEC section 4).

The frames (``media.video.sample_video``) go to the checkpoint's own video processor. In the
``REFERENCE`` mode it is called as U-MARVEL's evaluation called it, with the frames and no
metadata: Qwen2-VL's processor uses them as given, while Qwen3-VL's samples them again at 2
frames a second of a video it takes for 24 fps (which leaves min(4, n) frames of any clip
sampled to 59 frames or fewer) and the prompt's timestamps count 24 frames a second. In the
``SAMPLED`` mode every sampled frame reaches the model and the timestamps come from the
video's own frame rate; on Qwen2-VL the two modes are the same.

torch and transformers are used through the processor; nothing is imported at module level.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from media.video import SampledVideo
from mllm.families import Family, VideoPrompt

if TYPE_CHECKING:
    import torch

# The frame rate Qwen3-VL's processor assumes for frames that come without metadata.
UNKNOWN_FPS = 24


class VideoFrames(StrEnum):
    """Which of a video's sampled frames reach the model, with which timestamps."""

    # As U-MARVEL's evaluation: the processor does what it does with bare frames.
    REFERENCE = "reference"
    # Every sampled frame, timestamped at the video's own frame rate (not the reference).
    SAMPLED = "sampled"


@dataclass(frozen=True)
class VideoInputs:
    """One video as the model takes it."""

    pixels: torch.Tensor  # this video's rows of ``pixel_values_videos``
    grid: tuple[int, int, int]  # temporal groups, patch rows, patch columns
    # Each temporal group's time in seconds, for families whose prompt carries them.
    timestamps: tuple[float, ...] | None


def process_video(
    processor: Any, family: Family, video: SampledVideo, frames: VideoFrames
) -> VideoInputs:
    """The checkpoint's video processor over ``video``'s frames (float, values 0..255)."""
    video_processor = processor.video_processor
    # transformers 4.57, which the reference ran, capped no frame's pixels.
    options: dict[str, Any] = {"return_metadata": True, "cap_pixels_per_frame": False}
    if frames is VideoFrames.SAMPLED:
        metadata = {
            "total_num_frames": len(video.indices),
            "fps": video.fps,
            "frames_indices": list(video.indices),
        }
        options.update(do_sample_frames=False, video_metadata=[metadata])
    out = video_processor(videos=[video.frames], return_tensors="pt", **options)
    t, h, w = (int(x) for x in out["video_grid_thw"][0])
    timestamps = None
    if family.video_prompt is VideoPrompt.TIMESTAMPED:
        metadata = out["video_metadata"][0]
        timestamps = group_times(
            list(metadata.frames_indices),
            metadata.fps or UNKNOWN_FPS,
            video_processor.temporal_patch_size,
        )
        if len(timestamps) != t:
            raise ValueError(f"{len(timestamps)} timestamps for {t} temporal groups")
    return VideoInputs(out["pixel_values_videos"], (t, h, w), timestamps)


def group_times(indices: list[int], fps: float, group: int) -> tuple[float, ...]:
    """The time of each temporal group of frames: the mean of its first and last frame's
    (index / fps); an incomplete last group repeats its last frame, as the processor's
    frames do."""
    if len(indices) % group:
        indices = indices + [indices[-1]] * (group - len(indices) % group)
    times = [float(index) / fps for index in indices]
    return tuple((times[i] + times[i + group - 1]) / 2 for i in range(0, len(times), group))
