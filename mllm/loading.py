"""Loading Qwen-VL backbones and processors, and turning image inputs into PIL images and
video inputs into checked videos.

Shared by ``recall`` (the U-MARVEL embedder) and ``rerank`` (the MLLM reranker). torch and
transformers are imported inside functions: importing this module is cheap and safe in a
process that forks later.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from PIL import Image

from core.errors import InvalidRequest
from media.images import decode_image
from media.video import SampledVideo, Video, open_video
from mllm import families
from mllm.families import Family

if TYPE_CHECKING:
    import torch

ImageInput = str | Path | bytes | Image.Image
VideoFile = str | Path | bytes | Video  # a path, the file's bytes, or a checked video
# A video file, or its frames sampled already (``recall.embedder.Embedder.sample``).
VideoInput = VideoFile | SampledVideo


@dataclass(frozen=True)
class Loaded:
    """A backbone and its processor, on a device, in a dtype."""

    model: Any
    processor: Any
    family: Family
    device: torch.device
    dtype: torch.dtype


def resolve_device(device: str) -> torch.device:
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    import torch

    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]


def adapter_base(model_path: str) -> str | None:
    """The base model of a PEFT (LoRA) adapter at ``model_path``, or None for a full model."""
    from peft import PeftConfig

    local = Path(model_path)
    if local.is_dir() and not (local / "adapter_config.json").exists():
        return None
    try:
        return str(PeftConfig.from_pretrained(model_path).base_model_name_or_path)
    except (OSError, ValueError):
        return None


def load_backbone(
    model_path: str,
    processor_path: str | None = None,
    *,
    device: str = "auto",
    dtype: str = "auto",
    attn_implementation: str = "sdpa",
    base_model: str | None = None,
) -> Loaded:
    """Load a checkpoint (hub id or folder) of a registered family, chosen from its config.

    ``model_path`` may also be a LoRA adapter: it is applied to its base model (from the
    adapter's config, or ``base_model``) and merged, so inference runs at full speed.
    """
    base = adapter_base(model_path)
    if base is None:
        return _load(model_path, processor_path or model_path, device, dtype, attn_implementation)
    from peft import PeftModel

    base = base_model or base
    loaded = _load(base, processor_path or base, device, dtype, attn_implementation)
    merged = PeftModel.from_pretrained(loaded.model, model_path).merge_and_unload().eval()
    return Loaded(merged, loaded.processor, loaded.family, loaded.device, loaded.dtype)


def _load(
    model_path: str, processor_path: str, device: str, dtype: str, attn_implementation: str
) -> Loaded:
    from transformers import AutoProcessor, PretrainedConfig

    # The family comes from the raw config: one transformers does not know is refused with
    # the families this service knows, not transformers' advice to upgrade.
    config, _ = PretrainedConfig.get_config_dict(model_path)
    try:
        record = families.family(str(config.get("model_type")))
    except ValueError as exc:
        raise ValueError(f"{model_path}: {exc}") from None
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    model = (
        families.model_class(record)
        .from_pretrained(
            model_path,
            dtype=torch_dtype,
            attn_implementation=attn_implementation,
            device_map=str(torch_device),
        )
        .eval()
    )
    processor = AutoProcessor.from_pretrained(processor_path)
    return Loaded(model, processor, record, torch_device, torch_dtype)


def load_image(
    value: ImageInput, *, max_bytes: int, max_pixels: int, keep_alpha: bool = False
) -> Image.Image:
    """An RGB PIL image from a path, raw bytes or a PIL image (RGBA kept with
    ``keep_alpha``)."""
    if isinstance(value, Image.Image):
        return value if keep_alpha and value.mode == "RGBA" else value.convert("RGB")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return decode_image(
            bytes(value), max_bytes=max_bytes, max_pixels=max_pixels, keep_alpha=keep_alpha
        )
    data = _read(value, "image")
    return decode_image(data, max_bytes=max_bytes, max_pixels=max_pixels, keep_alpha=keep_alpha)


def load_video(value: VideoFile, *, max_bytes: int, max_pixels: int, max_frames: int) -> Video:
    """A checked video (``media.video.open_video``) from a path, raw bytes or a ``Video``."""
    if isinstance(value, Video):
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
    else:
        data = _read(value, "video")
    return open_video(data, max_bytes=max_bytes, max_pixels=max_pixels, max_frames=max_frames)


def _read(value: str | Path, what: str) -> bytes:
    path = Path(value)
    try:
        return path.read_bytes()
    except OSError as exc:
        raise InvalidRequest(f"cannot read {what} {str(path)!r}: {exc.strerror}") from None


@dataclass(frozen=True)
class RunConfig:
    """How a model runs, in batches and callers at once (nothing here changes an output)."""

    batch_size: int = 16
    # Most tokens in one padded batch (items x longest item, images counted in tokens).
    batch_tokens: int = 16384
    max_image_bytes: int = 20 * 1024 * 1024
    max_image_pixels: int = 64_000_000
    max_video_bytes: int = 200 * 1024 * 1024
    max_video_pixels: int = 3840 * 2160
    max_video_frames: int = 18_000
    # Calls run at once (threads of one process); batch_tokens sizes each call's batch.
    concurrent_calls: int = 1

    def __post_init__(self) -> None:
        if self.concurrent_calls < 1:
            raise ValueError(f"concurrent_calls must be at least 1, not {self.concurrent_calls}")


Config = TypeVar("Config", bound=RunConfig)


class LoadedModel(Generic[Config]):
    """A loaded backbone, its processor and run configuration, the base of the embedders and
    rerankers: at most ``concurrent_calls`` callers use it at once (``self._calls``)."""

    def __init__(self, loaded: Loaded, config: Config) -> None:
        self.model = loaded.model
        self.processor = loaded.processor
        self.family = loaded.family
        self.device = loaded.device
        self.dtype = loaded.dtype
        self.config = config
        self._calls = threading.BoundedSemaphore(config.concurrent_calls)

    @property
    def loaded(self) -> Loaded:
        return Loaded(self.model, self.processor, self.family, self.device, self.dtype)

    def image(self, value: ImageInput, *, keep_alpha: bool = False) -> Image.Image:
        """``value`` decoded within this model's image limits."""
        return load_image(
            value,
            max_bytes=self.config.max_image_bytes,
            max_pixels=self.config.max_image_pixels,
            keep_alpha=keep_alpha,
        )

    def video(self, value: VideoFile) -> Video:
        """``value`` checked within this model's video limits."""
        return load_video(
            value,
            max_bytes=self.config.max_video_bytes,
            max_pixels=self.config.max_video_pixels,
            max_frames=self.config.max_video_frames,
        )
