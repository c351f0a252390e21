"""Browsing a collection's documents: pages under a filter, counts per value of a field,
and an export as JSONL that ingestion takes back (``queries.browse``).

Read with the scope that reads one document. Filters are the query language, applied in
SQL (``queries.sql_filters``), so they hold for pending and failed documents too.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
from collections.abc import Iterable, Iterator
from typing import Any

from flask import Blueprint
from sqlalchemy import ColumnElement
from sqlalchemy.orm import Session

from api.auth import require
from api.openapi import documented, jsonl_answer, responses
from api.responses import DocumentPage, ExportLine, Facets
from api.routes.collections import get_collection
from api.schemas import DocumentSelection, DocumentsQuery, ExportQuery, FacetsQuery, query_string
from api.services import services
from api.validation import parse_filter
from core.errors import InvalidRequest
from queries import browse
from queries.views import document_view, ingestible
from store.db import session_scope
from store.states import DocumentStatus
from store.tables import Collection

log = logging.getLogger(__name__)

bp = Blueprint("browse", __name__, url_prefix="/v1/collections")

EXPORT_PAGE = 500  # documents an export reads per SQL transaction
EXPORT_CHUNK_BYTES = 64 * 1024  # lines are sent in chunks of about this size
# Line ends that JSON allows raw in strings, but on which a reader splitting lines by
# Unicode's rules (Python's ``str.splitlines``) would cut a line: written as escapes.
_LINE_ENDS = {ord(ch): f"\\u{ord(ch):04x}" for ch in "\x85\u2028\u2029"}

_CURSOR = re.compile(r"after:(0|[1-9][0-9]{0,18})")


def encode_cursor(after: int | None) -> str | None:
    """The cursor of the page after the document with SQL id ``after``."""
    if after is None:
        return None
    return base64.urlsafe_b64encode(f"after:{after}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> int | None:
    """The SQL id a cursor of ``encode_cursor`` continues after; anything else is a 400."""
    if cursor is None:
        return None
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
    except (binascii.Error, ValueError):
        text = ""
    match = _CURSOR.fullmatch(text)
    after = int(match.group(1)) if match is not None else -1
    # Decoding skips characters outside the alphabet: only the exact encoding is a cursor.
    if not 0 <= after < 2**63 or encode_cursor(after) != cursor:
        raise InvalidRequest(
            "query.cursor is not a cursor of this listing: send next_cursor of the previous "
            "page as it came, or no cursor for the first page",
            [{"field": "query.cursor", "message": "not a cursor of this listing"}],
        )
    return after


def _selected(
    session: Session, name: str, query: DocumentSelection
) -> tuple[Collection, list[ColumnElement[bool]]]:
    """The collection and the clauses selecting the documents that ``query`` asks for."""
    spec = parse_filter(query.filter) if query.filter is not None else None
    collection = get_collection(session, name)
    status = DocumentStatus(query.status) if query.status is not None else None
    fields = dict(collection.metadata_fields)
    return collection, browse.selection(collection.id, fields, spec, status)


@bp.get("/<name>/documents")
@documented(
    query=DocumentsQuery,
    resp=responses({200: DocumentPage}, 400, 401, 403, 404, 503),
    tags=["documents"],
)
def list_documents(name: str) -> Any:
    """A page of the documents matching ``filter`` (and ``status``), in the order of their
    SQL ids; ``next_cursor`` continues after it."""
    require("search", name)
    query = query_string(DocumentsQuery)
    after = decode_cursor(query.cursor)
    with session_scope(services().sessions) as session:
        _, where = _selected(session, name, query)
        documents, last = browse.page(session, where, after, query.limit)
        return {
            "documents": [document_view(doc) for doc in documents],
            "next_cursor": encode_cursor(last),
        }


@bp.get("/<name>/facets")
@documented(
    query=FacetsQuery,
    resp=responses({200: Facets}, 400, 401, 403, 404, 503),
    tags=["documents"],
)
def count_values(name: str) -> Any:
    """How many documents matching ``filter`` hold each value of a declared field."""
    require("search", name)
    query = query_string(FacetsQuery)
    with session_scope(services().sessions) as session:
        collection, where = _selected(session, name, query)
        fields = collection.metadata_fields
        if query.field not in fields:
            raise InvalidRequest(
                f"cannot count values of {query.field!r}: declared fields are "
                f"{sorted(fields) or 'none'}",
                [{"field": "query.field", "message": "not a declared metadata field"}],
            )
        found = browse.counts(session, where, query.field, fields[query.field], query.limit)
    return {
        "field": query.field,
        "values": [{"value": value, "count": count} for value, count in found.values],
        "nulls": found.nulls,
        "truncated": found.truncated,
    }


@bp.get("/<name>/export")
@documented(
    query=ExportQuery,
    resp=responses({200: None}, 400, 401, 403, 404, 503),
    tags=["documents"],
    extra=jsonl_answer(
        ExportLine,
        "Every document matching the filter, one JSON line each, in the order of their SQL "
        "ids: the shape ingestion takes (media as URLs unless `media=inline`).",
    ),
)
def export_documents(name: str) -> Any:
    """Every document matching ``filter`` (and ``status``) as JSONL, streamed: read a page
    at a time, never all at once."""
    require("search", name)
    query = query_string(ExportQuery)
    svc = services()
    with session_scope(svc.sessions) as session:  # a bad filter or collection is a 4xx here
        _, where = _selected(session, name, query)
    read = svc.media.get if query.media == "inline" else None
    records = (
        ingestible(doc, read)
        for documents in browse.pages(svc.sessions, where, EXPORT_PAGE)
        for doc in documents
    )
    # The lines as a generator, not a Response: spectree reads a Response's body whole
    # (to validate it), which would load the export in memory; Flask streams a generator.
    return _jsonl(records, name), 200, {"Content-Type": "application/x-ndjson"}


def _jsonl(records: Iterable[dict[str, Any]], name: str) -> Iterator[bytes]:
    """Records as JSON lines, in chunks. A failure once the answer has begun can only cut
    it short: the client sees a body that ends before its last chunk."""
    chunk: list[bytes] = []
    size = 0
    try:
        for record in records:
            line = json.dumps(record, ensure_ascii=False).translate(_LINE_ENDS) + "\n"
            chunk.append(line.encode())
            size += len(chunk[-1])
            if size >= EXPORT_CHUNK_BYTES:
                yield b"".join(chunk)
                chunk, size = [], 0
    except Exception:
        log.exception("export of collection %r cut short", name)
        raise
    if chunk:
        yield b"".join(chunk)
