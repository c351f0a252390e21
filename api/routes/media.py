"""Stored media (documents' media parts and query images), served by content hash to those
who may see them: a key that may read a collection with a document holding the part, or the
key that sent a query with it. Anyone else gets the same 404 as for a hash never stored.
The Content-Type is the one the part's kind gives (``media.kinds``)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, g
from sqlalchemy import select

from api.auth import require
from api.openapi import IMAGE, documented, responses
from api.services import services
from core.errors import NotFound
from media import kinds
from store.db import session_scope
from store.keys import Grant
from store.tables import Collection, Document, DocumentMedia, QueryJob

bp = Blueprint("media", __name__)


def _readable_kind(session: Any, key: Grant | None, media_key: str) -> str | None:
    """The kind of the stored object ``media_key`` if the caller may read it, else None."""
    parts = (
        select(DocumentMedia.kind)
        .join(Document, DocumentMedia.document_id == Document.id)
        .join(Collection, Document.collection_id == Collection.id)
        .where(DocumentMedia.key == media_key)
    )
    if key is not None and key.collections is not None:
        parts = parts.where(Collection.name.in_(key.collections))
    kind = session.scalar(parts.limit(1))
    if kind is not None:
        return str(kind)
    if key is None:  # authentication is off: whatever is stored, as a query's image
        return kinds.IMAGE.name
    own_query = select(QueryJob.id).where(
        QueryJob.query_media_key == media_key, QueryJob.api_key_id == key.id
    )
    return kinds.IMAGE.name if session.scalar(own_query.limit(1)) is not None else None


@bp.get("/v1/media/<key>")
@documented(
    resp=responses({200: None}, 400, 401, 404, 503),
    tags=["media"],
    extra={"responses": {"200": IMAGE}},
)
def read_media(key: str) -> Any:
    require("search")
    svc = services()
    with session_scope(svc.sessions) as session:
        kind = _readable_kind(session, g.get("api_key"), key)
    if kind is None:
        raise NotFound(f"no media object {key!r}")
    data = svc.media.get(key)
    known = kind in kinds.kind_names()  # a kind no longer registered is served as bytes
    mimetype = kinds.media_kind(kind).content_type(data) if known else "application/octet-stream"
    # Content-addressed, so never stale; private, since access depends on the key.
    headers = {
        "Cache-Control": "private, max-age=31536000, immutable",
        "X-Content-Type-Options": "nosniff",  # served as its own type, never sniffed
    }
    return Response(data, mimetype=mimetype, headers=headers)
