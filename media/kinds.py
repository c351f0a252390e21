"""Kinds of media a document may carry, one record each.

A record says how a part of its kind is checked at the API (before anything is stored),
how large it may be, how many a document may carry, how it is decoded for a model and what
content type it is served with. The API, the stores and the media route read the record;
none of them names a kind. A new kind is one ``register(MediaKind(...))`` and its decoder::

    register(MediaKind(name="audio", max_bytes=lambda s: s.max_audio_bytes,
                       check=check_audio, decode=decode_audio, content_type=audio_type))

What a model does with a decoded part (its tokens, its place in the prompt) is the model
side's business (``mllm``); a kind no model embeds is stored and served alongside.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from core.errors import InvalidRequest
from media.images import FORMATS, decode_image
from media.video import Video, open_video
from media.video import content_type as video_type

if TYPE_CHECKING:
    from core.settings import Settings

KIND_NAME = r"^[a-z][a-z0-9_]{0,31}$"


@dataclass(frozen=True)
class MediaKind:
    name: str
    # The most bytes one part of this kind may have (a setting, so operators can change it).
    max_bytes: Callable[[Settings], int]
    # Raises InvalidRequest or PayloadTooLarge, naming the rule, for what the workers could
    # not decode; the same rule the workers apply.
    check: Callable[[bytes, Settings], None]
    # What a model takes: an RGB PIL image for "image", a checked ``media.video.Video`` for
    # "video".
    decode: Callable[[bytes, Settings], Any]
    # The Content-Type the media route serves a stored part with.
    content_type: Callable[[bytes], str]
    per_document: int = 1
    # Whether the recall model embeds it: a document needs text or a part of such a kind.
    embedded: bool = True


_KINDS: dict[str, MediaKind] = {}


def register(kind: MediaKind) -> MediaKind:
    """Add (or replace) ``kind`` in the registry."""
    _KINDS[kind.name] = kind
    return kind


def unregister(name: str) -> None:
    _KINDS.pop(name, None)


def media_kind(name: str) -> MediaKind:
    """The record of ``name``; a 400 that lists the known kinds otherwise."""
    try:
        return _KINDS[name]
    except KeyError:
        raise InvalidRequest(
            f"media kind {name!r} is not one of {', '.join(sorted(_KINDS))}"
        ) from None


def kind_names() -> tuple[str, ...]:
    return tuple(_KINDS)


def _decode_image(data: bytes, settings: Settings) -> Any:
    return decode_image(
        data, max_bytes=settings.max_image_bytes, max_pixels=settings.max_image_pixels
    )


def _image_type(data: bytes) -> str:
    from PIL import Image, UnidentifiedImageError

    try:
        Image.init()
        fmt = Image.open(io.BytesIO(data), formats=FORMATS).format or ""
    except (UnidentifiedImageError, OSError):
        fmt = ""
    return Image.MIME.get(fmt, "application/octet-stream")


def _decoding_kind(
    name: str,
    max_bytes: Callable[[Settings], int],
    decode: Callable[[bytes, Settings], Any],
    content_type: Callable[[bytes], str],
) -> MediaKind:
    """A kind checked by its decoder: the API refuses what the workers could not decode."""

    def check(data: bytes, settings: Settings) -> None:
        decode(data, settings)

    return register(MediaKind(name, max_bytes, check, decode, content_type))


def _decode_video(data: bytes, settings: Settings) -> Video:
    return open_video(
        data,
        max_bytes=settings.max_video_bytes,
        max_pixels=settings.max_video_pixels,
        max_frames=settings.max_video_frames,
        max_seconds=settings.max_video_seconds,
        max_fps=settings.max_video_fps,
    )


IMAGE = _decoding_kind("image", lambda s: s.max_image_bytes, _decode_image, _image_type)
VIDEO = _decoding_kind("video", lambda s: s.max_video_bytes, _decode_video, video_type)
