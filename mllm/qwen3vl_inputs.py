"""Input handling shared by Qwen3-VL-Embedding and Qwen3-VL-Reranker
(QWEN3VL-EMBEDDING-SPEC section 1): the content order, the empty item, the image rule.

These models take text raw (no U-MARVEL ``format_string``), put an item's images before its
text, and resize images to multiples of 32 within their own pixel bounds, compositing RGBA
on white; the processor then only rescales, normalises and patchifies (``do_resize=False``).
"""

from __future__ import annotations

from typing import Any

from PIL import Image

from media.images import smart_resize
from mllm.prompt_tokens import Client

IMAGE_FACTOR = 32  # patch 16 x merge 2
MIN_PIXELS = 4 * IMAGE_FACTOR**2  # 4,096
MAX_PIXELS = 1800 * IMAGE_FACTOR**2  # 1,843,200
EMPTY = "NULL"  # the content of an item with no text and no image


def content(text: str | None, images: int) -> list[dict[str, Any]]:
    """The user content of an item: its images, then its text; ``NULL`` when it has neither
    (an empty string is a text, rendered as nothing)."""
    parts: list[dict[str, Any]] = [{"type": "image"} for _ in range(images)]
    if text is not None:
        parts.append({"type": "text", "text": Client(text)})
    return parts or [{"type": "text", "text": EMPTY}]


def prepare_image(image: Image.Image) -> Image.Image:
    """RGBA composited on white (any other mode converted to RGB), then resized (PIL's
    default resampling) to multiples of 32 within 4,096 and 1,843,200 pixels."""
    if image.mode == "RGBA":
        white = Image.new("RGB", image.size, (255, 255, 255))
        white.paste(image, mask=image.split()[3])
        image = white
    else:
        image = image.convert("RGB")
    height, width = smart_resize(
        image.height, image.width, factor=IMAGE_FACTOR, min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS
    )
    if (height, width) != (image.height, image.width):
        image = image.resize((width, height))
    return image


def image_tokens(image: Image.Image) -> int:
    """Placeholder tokens of an image already resized by ``prepare_image``."""
    return (image.height // IMAGE_FACTOR) * (image.width // IMAGE_FACTOR)
