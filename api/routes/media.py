"""Stored media (document and query images), served by content hash to those who may see
them: a key that may read a collection with a document holding the image, or the key that
sent a query with it. Anyone else gets the same 404 as for a hash that was never stored."""

from __future__ import annotations

import io
from typing import Any

from flask import Blueprint, Response, g
from flask.typing import ResponseReturnValue
from PIL import Image, UnidentifiedImageError
from sqlalchemy import select

from api.auth import require
from api.openapi import IMAGE, documented, responses
from api.services import services
from core.errors import NotFound
from media.images import FORMATS
from store.db import session_scope
from store.keys import Grant
from store.tables import Collection, Document, QueryJob

bp = Blueprint("media", __name__)


def _may_read(session: Any, key: Grant | None, media_key: str) -> bool:
    if key is None:  # authentication is off
        return True
    collections = select(Collection.name).join(Document, Document.collection_id == Collection.id)
    collections = collections.where(Document.image_key == media_key)
    if key.collections is not None:
        collections = collections.where(Collection.name.in_(key.collections))
    if session.scalar(collections.limit(1)) is not None:
        return True
    own_query = select(QueryJob.id).where(
        QueryJob.query_image_key == media_key, QueryJob.api_key_id == key.id
    )
    return session.scalar(own_query.limit(1)) is not None


@bp.get("/v1/media/<key>")
@documented(
    resp=responses({200: None}, 400, 401, 404, 503),
    tags=["media"],
    extra={"responses": {"200": IMAGE}},
)
def read_media(key: str) -> ResponseReturnValue:
    require("search")
    svc = services()
    with session_scope(svc.sessions) as session:
        if not _may_read(session, g.get("api_key"), key):
            raise NotFound(f"no media object {key!r}")
    data = svc.media.get(key)
    try:
        Image.init()
        fmt = Image.open(io.BytesIO(data), formats=FORMATS).format or ""
    except (UnidentifiedImageError, OSError):
        fmt = ""
    mimetype = Image.MIME.get(fmt, "application/octet-stream")
    # Content-addressed, so never stale; private, since access depends on the key.
    headers = {
        "Cache-Control": "private, max-age=31536000, immutable",
        "X-Content-Type-Options": "nosniff",  # served as its own type, never sniffed
    }
    return Response(data, mimetype=mimetype, headers=headers)
