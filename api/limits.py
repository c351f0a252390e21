"""Body limits per route, enforced while the body is read and before it is parsed.

Each route takes the smallest body its largest valid request needs: a query one image or
video (as base64, or a file part) and its text; an ingestion request ``UMARVEL_MAX_REQUEST_BYTES``
(its documents-per-request bound with their images); every other route a small JSON
object. A body over its route's limit is answered 413 from its ``Content-Length`` (or as
soon as a chunked body passes it) without being read whole. A JSON or JSONL body is also
counted before it is parsed: its containers and items, outside strings, in one pass of a C
regex; over the route's bound it is answered 413 before any Python walks it (a 16 MiB body
of tiny items cost 23 s and 1.4 GB to refuse after parsing). Checked after auth, so an
unauthenticated client's body is never read.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from flask import Flask, request

from core.errors import PayloadTooLarge
from core.settings import Settings

SMALL_BODY_BYTES = 1024 * 1024  # collection create/update, reindex: a small JSON object
SMALL_BODY_ITEMS = 10_000
QUERY_ITEMS = 20_000  # a filter of a few clauses with `in` lists of up to 1,000 values
ITEMS_PER_DOCUMENT = 256  # id, text, image, and metadata fields
# A JSON string, escapes and all (the unrolled form: no backtracking).
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_JSON_TYPES = ("application/json", "application/x-ndjson", "application/jsonl")


@dataclass(frozen=True)
class BodyLimit:
    bytes: int
    items: int


def body_limit(endpoint: str | None, settings: Settings) -> BodyLimit:
    """The largest body (bytes, and JSON values) the route of ``endpoint`` needs."""
    if endpoint == "queries.submit_query":
        media = max(settings.max_image_bytes, settings.max_query_video_bytes)
        encoded = (media + 2) // 3 * 4  # as base64
        return BodyLimit(encoded + 4 * settings.max_text_chars + SMALL_BODY_BYTES, QUERY_ITEMS)
    if endpoint == "documents.ingest_documents":
        items = settings.max_documents_per_request * ITEMS_PER_DOCUMENT
        return BodyLimit(settings.max_request_bytes, items)
    return BodyLimit(min(SMALL_BODY_BYTES, settings.max_request_bytes), SMALL_BODY_ITEMS)


def json_items(data: bytes) -> int:
    """How many containers and items a JSON (or JSONL) text holds, roughly: the commas,
    brackets and braces outside its strings."""
    bare = _STRING.sub(b"", data)
    return bare.count(b",") + bare.count(b"[") + bare.count(b"{") + bare.count(b"\n")


def register_body_limits(app: Flask, settings: Settings) -> None:
    @app.before_request
    def _limit_body() -> None:
        limit = body_limit(request.endpoint, settings)
        request.max_content_length = limit.bytes  # a chunked body is cut off there
        if (request.content_length or 0) > limit.bytes:
            raise PayloadTooLarge(
                f"the body is {request.content_length} bytes; this route takes at most "
                f"{limit.bytes}"
            )
        if request.mimetype in _JSON_TYPES and (request.content_length or 0) > 0:
            items = json_items(request.get_data(cache=True))  # 413 here when over the bytes
            if items > limit.items:
                raise PayloadTooLarge(
                    f"the body holds about {items} JSON values; this route takes at most "
                    f"{limit.items}"
                )
