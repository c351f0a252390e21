"""Stored media (document and query images), served by content hash."""

from __future__ import annotations

import io
from typing import Any

from flask import Blueprint, Response
from PIL import Image, UnidentifiedImageError

from api.auth import require
from api.services import services

bp = Blueprint("media", __name__)


@bp.get("/v1/media/<key>")
def read_media(key: str) -> Any:
    require("search")
    data = services().media.get(key)
    try:
        fmt = Image.open(io.BytesIO(data)).format or ""
    except (UnidentifiedImageError, OSError):
        fmt = ""
    mimetype = Image.MIME.get(fmt, "application/octet-stream")
    return Response(
        data, mimetype=mimetype, headers={"Cache-Control": "max-age=31536000, immutable"}
    )
