"""Documents and ingestion jobs.

Everything is validated before anything is queued; invalid items are reported per item
and do not block the valid ones.
"""

from __future__ import annotations

import io
import os
from collections import Counter
from pathlib import Path
from typing import Any

from flask import Blueprint, g, request
from pydantic import ValidationError
from sqlalchemy import delete as sa_delete
from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from api.auth import require
from api.backpressure import check_backpressure
from api.errors import validation_error
from api.openapi import JSONL_DOCUMENTS, DocumentFilter, DocumentsForm, documented, responses
from api.responses import Deleted, DocumentOut, IngestJobOut
from api.routes.collections import get_collection
from api.schemas import DocumentIn, DocumentsRequest, MediaIn, decode_base64, json_body
from api.services import Services, services
from api.validation import id_problem, parse_filter, parse_json
from core.contract import MediaPart, Queue
from core.errors import Conflict, InvalidRequest, NotFound, PayloadTooLarge, UmarvelError
from core.metrics import INGEST_DOCUMENTS
from ingestion import outbox
from ingestion.chunks import chunked
from ingestion.outbox import Kind
from media.kinds import IMAGE, media_kind
from queries.views import document_view, ingest_job_view
from recall.filters import check_value, compile_filter, matches
from store.db import session_scope
from store.states import DocumentStatus, JobState, advance
from store.tables import Collection, Document, DocumentMedia, IngestJob

bp = Blueprint("documents", __name__)

DELETE_CHUNK = 1000  # documents per SQL delete and per vector-delete entry


def _validate(
    svc: Services, fields: dict[str, str], raw: Any, files: dict[str, Any]
) -> tuple[DocumentIn, list[MediaPart]]:
    """A valid document and its stored media parts; raises on any problem. Every part is
    checked by its kind's rule before any is stored."""
    try:
        doc = DocumentIn.model_validate(raw)
    except ValidationError as exc:
        raise validation_error(exc) from None
    settings = svc.settings
    parts = doc.parts()
    for kind_name, count in Counter(part.kind for part in parts).items():
        allowed = media_kind(kind_name).per_document
        if count > allowed:
            raise InvalidRequest(f"a document may carry at most {allowed} {kind_name} part(s)")
    if not (doc.text and doc.text.strip()) and not any(media_kind(p.kind).embedded for p in parts):
        raise InvalidRequest("a document needs text, an image, or both (or a video)")
    if doc.text and len(doc.text) > settings.max_text_chars:
        raise InvalidRequest(f"text is longer than {settings.max_text_chars} characters")
    for name, value in doc.metadata.items():
        if name in fields and value is not None:
            check_value(name, fields[name], value)
    checked = []
    for part in parts:
        kind = media_kind(part.kind)
        data = _part_bytes(svc, part, files, kind.max_bytes(settings))
        kind.check(data, settings)
        checked.append((part.kind, data))
    return doc, [MediaPart(kind=kind, key=svc.media.put(data)) for kind, data in checked]


def _part_bytes(svc: Services, part: MediaIn, files: dict[str, Any], limit: int) -> bytes:
    """A part's bytes from its one source; more than ``limit`` of them is a 413."""
    image = part.kind == IMAGE.name  # messages name the image shorthand's own fields
    if part.data is not None:
        data = decode_base64(part.data, "image" if image else f"{part.kind} data")
    elif part.file is not None:
        upload = files.get(part.file)
        if upload is None:
            raise InvalidRequest(f"no file part named {part.file!r} in this request")
        upload.stream.seek(0)
        data = bytes(upload.stream.read(limit + 1))
    else:
        assert part.path is not None  # MediaIn has exactly one source
        field = "image_path" if image else f"{part.kind} path"
        data = _read_server_file(part.path, svc.settings.ingest_roots, limit, field)
    if len(data) > limit:
        raise PayloadTooLarge(f"{part.kind} is larger than {limit} bytes")
    return data


def _read_server_file(path: str, roots: list[Path], limit: int, field: str) -> bytes:
    """A file's bytes if it lies inside an allowed root (links resolved first)."""
    try:
        resolved = Path(path).resolve()
    except (OSError, ValueError, RuntimeError):
        raise InvalidRequest(f"{field} {path!r} is not a usable path") from None
    allowed = [root.resolve() for root in roots]
    if not any(resolved.is_relative_to(root) for root in allowed):
        raise InvalidRequest(f"{field} {path!r} is outside the allowed ingestion folders")
    try:
        # The check above and this open are two steps: a link swapped in between must not
        # lead outside the roots. The last part may not be a link at all (O_NOFOLLOW), and
        # what was opened is checked again by the kernel's own name for it.
        fd = os.open(resolved, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        raise InvalidRequest(f"cannot read {field} {path!r}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as handle:
        opened = (
            Path(os.readlink(f"/proc/self/fd/{fd}")) if Path("/proc/self/fd").is_dir() else resolved
        )
        if not any(opened.is_relative_to(root) for root in allowed):
            raise InvalidRequest(f"{field} {path!r} is outside the allowed ingestion folders")
        try:
            return handle.read(limit + 1)
        except OSError as exc:
            raise InvalidRequest(f"cannot read {field} {path!r}: {exc.strerror}") from None


def _documents_input(svc: Services) -> tuple[list[Any], dict[str, Any]]:
    """Raw items and file parts from JSON, JSONL (``application/x-ndjson``) or multipart.

    Multipart: a ``documents`` field holding JSON or JSONL, plus file parts that items
    name in ``image_file``. A JSONL line that is not JSON becomes a per-item error.
    """
    limit = svc.settings.max_documents_per_request
    if request.mimetype == "application/x-ndjson":
        # The cached body, not the stream: a retried transaction reads it again.
        return _jsonl_items(io.BytesIO(request.get_data()), limit), {}
    if request.mimetype == "multipart/form-data":
        text = request.form.get("documents")
        if text is None:
            raise InvalidRequest("a multipart request needs a 'documents' field (JSON or JSONL)")
        stripped = text.lstrip()
        if stripped.startswith("{") and '"documents"' in stripped[:200]:
            items = _items_of(parse_json(text, "the 'documents' field"))
        else:
            items = _jsonl_items(io.BytesIO(text.encode()), limit)
        return items, dict(request.files)
    return _items_of(json_body(request)), {}


def _items_of(body: Any) -> list[Any]:
    items = body.get("documents") if isinstance(body, dict) else None
    if not isinstance(items, list):
        raise InvalidRequest('send {"documents": [...]} with at least one document')
    return items


class _BadLine:
    """A JSONL line that did not parse: reported as that item's error."""

    def __init__(self, number: int, message: str) -> None:
        self.number, self.message = number, message


def _jsonl_items(stream: Any, limit: int) -> list[Any]:
    items: list[Any] = []
    for number, line in enumerate(stream, start=1):
        if not line.strip():
            continue
        if len(items) >= limit:
            raise InvalidRequest(f"at most {limit} documents per request")
        try:
            items.append(parse_json(line, f"line {number}"))
        except InvalidRequest as exc:
            items.append(_BadLine(number, exc.message))
    return items


@bp.post("/v1/collections/<name>/documents")
@documented(
    json=DocumentsRequest,
    form=DocumentsForm,
    resp=responses({202: IngestJobOut}, 400, 401, 403, 404, 409, 413, 503),
    tags=["documents"],
    extra={"requestBody": JSONL_DOCUMENTS},
)
def ingest_documents(name: str) -> Any:
    g.collection = name
    require("admin", name)
    svc = services()
    items, files = _documents_input(svc)
    if not items:
        raise InvalidRequest('send {"documents": [...]} with at least one document')
    if len(items) > svc.settings.max_documents_per_request:
        raise InvalidRequest(
            f"at most {svc.settings.max_documents_per_request} documents per request"
        )
    check_backpressure(svc, [Queue.INGEST], svc.settings.max_ingest_queue_depth)
    with session_scope(svc.sessions) as session:  # a read: it locks nothing
        collection = get_collection(session, name)
        uid, fields = collection.uid, dict(collection.metadata_fields)
    # Decoding and storing images takes seconds for a large request: done before the write
    # transaction, which on SQLite holds every other writer back meanwhile.
    errors, valid = _validate_items(svc, fields, items, files)
    with session_scope(svc.sessions) as session:
        collection = get_collection(session, name)
        if collection.uid != uid:
            raise Conflict(f"collection {name!r} was deleted and created again meanwhile")
        job = IngestJob(collection_id=collection.id, total=len(items))
        session.add(job)
        session.flush()
        existing = {
            d.external_id: d
            for d in session.scalars(
                select(Document).where(
                    Document.collection_id == collection.id,
                    Document.external_id.in_([doc.id for doc, _ in valid]),
                )
            )
        }
        rows = []
        for doc, parts in valid:
            row = existing.get(doc.id)
            if row is None:
                row = Document(collection_id=collection.id, external_id=doc.id, revision=1)
            else:
                row.revision += 1  # a vector of an older revision is never kept for it
            row.text, row.doc_metadata = doc.text, doc.metadata
            row.image_key = next((p.key for p in parts if p.kind == IMAGE.name), None)
            row.status, row.error, row.ingest_job_id = DocumentStatus.PENDING, None, job.id
            row.generation = 0  # this content is in no generation until it is ingested
            session.add(row)
            rows.append(row)
        job.rejected = job.failed = len(errors)
        INGEST_DOCUMENTS.labels("rejected").inc(len(errors))
        job.errors = errors
        if not rows:
            advance(job, JobState.DONE)
        session.flush()
        _replace_media(session, [row.id for row in existing.values()], rows, [p for _, p in valid])
        g.job_id = job.id
        size = svc.settings.ingest_chunk_size
        # Recorded with the rows: what is accepted here is written to Milvus whatever fails.
        entries = outbox.add_documents(
            session, Kind.INGEST, job.id, chunked([row.id for row in rows], size)
        )
        payload = ingest_job_view(job)
    outbox.dispatch(svc.send, entries)
    return payload, 202, {"Location": payload["url"]}


def _replace_media(
    session: Session, rewritten: list[int], rows: list[Document], parts: list[list[MediaPart]]
) -> None:
    """Each row's media parts, as they were sent: the old parts of rewritten documents go.
    Written as two statements for the whole request, not as ORM objects per part."""
    if rewritten:
        session.execute(sa_delete(DocumentMedia).where(DocumentMedia.document_id.in_(rewritten)))
    values = [
        {"document_id": row.id, "position": i, "kind": part.kind, "key": part.key}
        for row, row_parts in zip(rows, parts, strict=True)
        for i, part in enumerate(row_parts)
    ]
    if values:
        session.execute(insert(DocumentMedia), values)


def _validate_items(
    svc: Services, fields: dict[str, str], items: list[Any], files: dict[str, Any]
) -> tuple[list[dict[str, Any]], list[tuple[DocumentIn, list[MediaPart]]]]:
    """Each item validated, its media stored: (errors by item, valid documents)."""
    errors: list[dict[str, Any]] = []
    valid: list[tuple[DocumentIn, list[MediaPart]]] = []
    seen: set[str] = set()
    for position, raw in enumerate(items):
        item_id = raw.get("id") if isinstance(raw, dict) else None
        if not isinstance(item_id, str) or id_problem(item_id):
            item_id = None  # the error names the item by its index instead
        try:
            if isinstance(raw, _BadLine):
                raise InvalidRequest(raw.message)
            doc, parts = _validate(svc, fields, raw, files)
            if doc.id in seen:
                raise InvalidRequest(f"document id {doc.id!r} appears twice in this request")
        except UmarvelError as exc:
            errors.append({"index": position, "id": item_id, "message": exc.message})
            continue
        seen.add(doc.id)
        valid.append((doc, parts))
    return errors, valid


@bp.get("/v1/ingest-jobs/<job_id>")
@documented(resp=responses({200: IngestJobOut}, 400, 401, 403, 404, 503), tags=["documents"])
def read_ingest_job(job_id: str) -> Any:
    with session_scope(services().sessions) as session:
        job = session.get(IngestJob, job_id)
        if job is None:
            raise NotFound(f"ingestion job {job_id!r} does not exist")
        require("admin", session.get_one(Collection, job.collection_id).name)
        return ingest_job_view(job)


def _document(session: Any, collection: Collection, document_id: str) -> Document:
    doc = session.scalar(
        select(Document).where(
            Document.collection_id == collection.id, Document.external_id == document_id
        )
    )
    if doc is None:
        raise NotFound(f"document {document_id!r} does not exist in {collection.name!r}")
    return doc


@bp.get("/v1/collections/<name>/documents/<path:document_id>")
@documented(resp=responses({200: DocumentOut}, 400, 401, 403, 404, 503), tags=["documents"])
def read_document(name: str, document_id: str) -> Any:
    require("search", name)
    with session_scope(services().sessions) as session:
        return document_view(_document(session, get_collection(session, name), document_id))


@bp.delete("/v1/collections/<name>/documents/<path:document_id>")
@documented(resp=responses({204: None}, 400, 401, 403, 404, 409, 503), tags=["documents"])
def delete_document(name: str, document_id: str) -> Any:
    """Gone from SQL (hence from every answer) at once; a worker removes its vector."""
    g.collection = name
    require("admin", name)
    svc = services()
    with session_scope(svc.sessions) as session:
        collection = get_collection(session, name)
        session.delete(_document(session, collection, document_id))
        collection.version += 1  # cached answers that held it are never served again
        entry = _vector_deletes(session, collection, [document_id])
    outbox.dispatch(svc.send, entry)
    return "", 204


def _vector_deletes(session: Any, collection: Collection, ids: list[str]) -> list[Any]:
    """Outbox entries removing these documents' vectors from every generation written."""
    generations = [generation for generation, _ in collection.write_targets()]
    return [
        outbox.add_vectors(session, Kind.DELETE, collection.storage_name, generations, chunk)
        for chunk in chunked(ids, DELETE_CHUNK)
    ]


@bp.delete("/v1/collections/<name>/documents")
@documented(
    query=DocumentFilter,
    resp=responses({200: Deleted}, 400, 401, 403, 404, 409, 503),
    tags=["documents"],
)
def delete_documents(name: str) -> Any:
    """Delete every document whose metadata matches ``?filter=<JSON>`` (the filter language).

    SQL is the source of truth: matching rows go at once, then a worker removes the vectors.
    """
    g.collection = name
    require("admin", name)
    raw = request.args.get("filter")
    if not raw:
        raise InvalidRequest(
            "give ?filter=<JSON>; deleting every document needs DELETE of the collection"
        )
    spec = parse_filter(raw)
    svc = services()
    with session_scope(svc.sessions) as session:
        collection = get_collection(session, name)
        fields = dict(collection.metadata_fields)
        if compile_filter(spec, fields) is None:
            raise InvalidRequest(
                "the filter is empty; deleting every document needs DELETE of the collection"
            )
        rows = session.execute(
            select(Document.id, Document.external_id, Document.doc_metadata).where(
                Document.collection_id == collection.id
            )
        ).yield_per(1000)
        doomed = [(row_id, ext) for row_id, ext, meta in rows if matches(spec, fields, meta or {})]
        for chunk in chunked([row_id for row_id, _ in doomed], DELETE_CHUNK):
            session.execute(sa_delete(Document).where(Document.id.in_(chunk)))
        entries = []
        if doomed:
            collection.version += 1
            entries = _vector_deletes(session, collection, [ext for _, ext in doomed])
    outbox.dispatch(svc.send, entries)
    return {"deleted": len(doomed)}
