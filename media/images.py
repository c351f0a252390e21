"""Image decoding with limits, and the U-MARVEL resize rule (SPEC section 4)."""

from __future__ import annotations

import io
import math
import warnings

from PIL import Image, UnidentifiedImageError

from core.errors import InvalidRequest, PayloadTooLarge

IMAGE_FACTOR = 28
MIN_PIXELS = 4 * 28 * 28
MAX_PIXELS = 300 * 28 * 28
MAX_RATIO = 200
# The formats an image may come in (a GIF's first frame, a TIFF's first page); PIL is not
# even asked to try any other (EPS runs Ghostscript, PSD and FITS parsers are large).
FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")  # JPEG opens MPO (phones) too


def decode_image(
    data: bytes, *, max_bytes: int, max_pixels: int, keep_alpha: bool = False
) -> Image.Image:
    """Decode ``data`` to an RGB image, refusing formats not in ``FORMATS``, oversized files
    and decompression bombs: the pixel count is read from the header, before any decode.
    The API and the workers apply this same rule. ``keep_alpha``: an RGBA image stays RGBA
    (a model that composites it on white wants its alpha)."""
    if len(data) > max_bytes:
        raise PayloadTooLarge(f"image is {len(data)} bytes; the limit is {max_bytes}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            Image.init()  # every plugin registered (once): FORMATS names some it loads late
            image = Image.open(io.BytesIO(data), formats=FORMATS)
            width, height = image.size
            if width * height > max_pixels:
                raise PayloadTooLarge(
                    f"image is {width}x{height} pixels; the limit is {max_pixels} pixels"
                )
            check_geometry(width, height)
            image.load()
    except UnidentifiedImageError:
        raise InvalidRequest(
            f"image could not be decoded: not one of {', '.join(FORMATS)}, or damaged"
        ) from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise InvalidRequest(f"image could not be decoded: {exc}") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise PayloadTooLarge(f"image is too large to decode: {exc}") from None
    return image if keep_alpha and image.mode == "RGBA" else image.convert("RGB")


def check_geometry(width: int, height: int) -> None:
    """The shape rule the models apply (qwen-vl-utils): refuse what they would refuse."""
    if min(width, height) < 1:
        raise InvalidRequest(f"image is {width}x{height} pixels: it has no area")
    ratio = max(width, height) / min(width, height)
    if ratio > MAX_RATIO:
        raise InvalidRequest(
            f"image is {width}x{height} pixels: its aspect ratio {ratio:.1f} is over {MAX_RATIO}"
        )


def smart_resize(
    height: int,
    width: int,
    factor: int = IMAGE_FACTOR,
    min_pixels: float = MIN_PIXELS,
    max_pixels: float = MAX_PIXELS,
) -> tuple[int, int]:
    """qwen-vl-utils' rule: multiples of ``factor``, pixel count in bounds, aspect <= 200."""
    check_geometry(width, height)
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = math.floor(height / beta / factor) * factor
        w_bar = math.floor(width / beta / factor) * factor
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def prepare_image(image: Image.Image) -> Image.Image:
    """RGB, resized (PIL default resampling) to the U-MARVEL pixel bounds."""
    image = image.convert("RGB")
    height, width = smart_resize(image.height, image.width)
    if (height, width) != (image.height, image.width):
        image = image.resize((width, height))
    return image
