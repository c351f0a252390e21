"""Documents and ingestion jobs.

Everything is validated before anything is queued; invalid items are reported per item
and do not block the valid ones.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from flask import Blueprint, g, request
from pydantic import ValidationError
from sqlalchemy import delete as sa_delete
from sqlalchemy import select

from api.auth import require
from api.errors import validation_error
from api.openapi import documented, responses
from api.routes.collections import get_collection
from api.schemas import DocumentIn, DocumentsRequest, decode_base64, json_body
from api.services import Services, services
from core.db import session_scope
from core.errors import InvalidRequest, NotFound, PayloadTooLarge, UmarvelError, Unavailable
from core.images import decode_image
from core.metrics import INGEST_DOCUMENTS
from core.models import Collection, Document, IngestJob, utcnow
from core.results import document_view
from recall.filters import check_value, compile_filter, matches

bp = Blueprint("documents", __name__)


def _validate(
    svc: Services, collection: Collection, raw: Any, files: dict[str, Any]
) -> tuple[DocumentIn, str | None]:
    """A valid document and the media key of its stored image; raises on any problem."""
    try:
        doc = DocumentIn.model_validate(raw)
    except ValidationError as exc:
        raise validation_error(exc) from None
    settings = svc.settings
    data = _image_bytes(svc, doc, files)
    if not (doc.text and doc.text.strip()) and data is None:
        raise InvalidRequest("a document needs text, an image, or both")
    if doc.text and len(doc.text) > settings.max_text_chars:
        raise InvalidRequest(f"text is longer than {settings.max_text_chars} characters")
    fields = collection.metadata_fields
    for name, value in doc.metadata.items():
        if name in fields and value is not None:
            check_value(name, fields[name], value)
    if data is None:
        return doc, None
    decode_image(data, max_bytes=settings.max_image_bytes, max_pixels=settings.max_image_pixels)
    return doc, svc.media.put(data)


def _image_bytes(svc: Services, doc: DocumentIn, files: dict[str, Any]) -> bytes | None:
    limit = svc.settings.max_image_bytes
    if doc.image is not None:
        return decode_base64(doc.image, "image")
    if doc.image_file is not None:
        upload = files.get(doc.image_file)
        if upload is None:
            raise InvalidRequest(f"no file part named {doc.image_file!r} in this request")
        upload.stream.seek(0)
        data = bytes(upload.stream.read(limit + 1))
    elif doc.image_path is not None:
        data = _read_server_file(doc.image_path, svc.settings.ingest_roots, limit)
    else:
        return None
    if len(data) > limit:
        raise PayloadTooLarge(f"image is larger than {limit} bytes")
    return data


def _read_server_file(path: str, roots: list[Path], limit: int) -> bytes:
    """A file's bytes if it lies inside an allowed root (links resolved first)."""
    resolved = Path(path).resolve()
    allowed = [root.resolve() for root in roots]
    if not any(resolved.is_relative_to(root) for root in allowed):
        raise InvalidRequest(f"image_path {path!r} is outside the allowed ingestion folders")
    try:
        with open(resolved, "rb") as handle:
            return handle.read(limit + 1)
    except OSError as exc:
        raise InvalidRequest(f"cannot read image_path {path!r}: {exc.strerror}") from None


def _documents_input(svc: Services) -> tuple[list[Any], dict[str, Any]]:
    """Raw items and file parts from JSON, JSONL (``application/x-ndjson``) or multipart.

    Multipart: a ``documents`` field holding JSON or JSONL, plus file parts that items
    name in ``image_file``. A JSONL line that is not JSON becomes a per-item error.
    """
    limit = svc.settings.max_documents_per_request
    if request.mimetype == "application/x-ndjson":
        return _jsonl_items(request.stream, limit), {}
    if request.mimetype == "multipart/form-data":
        text = request.form.get("documents")
        if text is None:
            raise InvalidRequest("a multipart request needs a 'documents' field (JSON or JSONL)")
        stripped = text.lstrip()
        if stripped.startswith("{") and '"documents"' in stripped[:200]:
            items = _items_of(_parse_json(text))
        else:
            items = _jsonl_items(io.BytesIO(text.encode()), limit)
        return items, dict(request.files)
    return _items_of(json_body(request)), {}


def _parse_json(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        raise InvalidRequest("the 'documents' field is not valid JSON") from None


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
            items.append(json.loads(line))
        except (json.JSONDecodeError, UnicodeDecodeError):
            items.append(_BadLine(number, f"line {number} is not valid JSON"))
    return items


@bp.post("/v1/collections/<name>/documents")
@documented(json=DocumentsRequest, resp=responses(202, 400, 401, 403, 404, 413), tags=["documents"])
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
    with session_scope(svc.sessions) as session:
        collection = get_collection(session, name)
        job = IngestJob(collection_id=collection.id, total=len(items))
        session.add(job)
        session.flush()
        errors: list[dict[str, Any]] = []
        valid: list[tuple[DocumentIn, str | None]] = []
        seen: set[str] = set()
        for position, raw in enumerate(items):
            item_id = raw.get("id") if isinstance(raw, dict) else None
            try:
                if isinstance(raw, _BadLine):
                    raise InvalidRequest(raw.message)
                doc, image_key = _validate(svc, collection, raw, files)
                if doc.id in seen:
                    raise InvalidRequest(f"document id {doc.id!r} appears twice in this request")
            except UmarvelError as exc:
                errors.append({"index": position, "id": item_id, "message": exc.message})
                continue
            seen.add(doc.id)
            valid.append((doc, image_key))
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
        for doc, image_key in valid:
            row = existing.get(doc.id) or Document(collection_id=collection.id, external_id=doc.id)
            row.text, row.image_key, row.doc_metadata = doc.text, image_key, doc.metadata
            row.status, row.error, row.ingest_job_id = "pending", None, job.id
            row.generation = 0  # this content is in no generation until it is ingested
            session.add(row)
            rows.append(row)
        job.rejected = job.failed = len(errors)
        INGEST_DOCUMENTS.labels("rejected").inc(len(errors))
        job.errors = errors
        if not rows:
            job.state, job.finished_at = "done", utcnow()
        session.flush()
        g.job_id = job.id
        row_ids = [row.id for row in rows]
        payload = render_job(job)
    _enqueue(svc, job.id, row_ids)
    return payload, 202, {"Location": payload["url"]}


def _enqueue(svc: Services, job_id: str, row_ids: list[int]) -> None:
    size = svc.settings.ingest_chunk_size
    try:
        for start in range(0, len(row_ids), size):
            svc.celery.send_task("recall.ingest", args=[job_id, row_ids[start : start + size]])
    except Exception as exc:
        with session_scope(svc.sessions) as session:
            job = session.get_one(IngestJob, job_id)
            job.state, job.finished_at = "failed", utcnow()
            job.errors = [*job.errors, {"index": None, "id": None, "message": "queue unavailable"}]
        raise Unavailable(f"the task queue is unavailable: {exc}") from None


def render_job(job: IngestJob) -> dict[str, Any]:
    rate = eta = None
    if job.started_at is not None and job.done:
        elapsed = ((job.finished_at or utcnow()) - job.started_at).total_seconds()
        rate = job.done / max(elapsed, 1e-3)
        remaining = job.total - job.done - job.failed
        eta = remaining / rate if job.state in ("queued", "running") else 0.0
    return {
        "id": job.id,
        "url": f"/v1/ingest-jobs/{job.id}",
        "kind": job.kind,
        "state": job.state,
        "total": job.total,
        "done": job.done,
        "failed": job.failed,
        "rate": None if rate is None else round(rate, 2),  # documents indexed per second
        "eta_seconds": None if eta is None else round(eta, 1),
        "errors": job.errors,
        "created_at": job.created_at.isoformat(),
        "finished_at": job.finished_at.isoformat() if job.finished_at else None,
    }


@bp.get("/v1/ingest-jobs/<job_id>")
@documented(resp=responses(200, 401, 403, 404), tags=["documents"])
def read_ingest_job(job_id: str) -> Any:
    with session_scope(services().sessions) as session:
        job = session.get(IngestJob, job_id)
        if job is None:
            raise NotFound(f"ingestion job {job_id!r} does not exist")
        require("admin", session.get_one(Collection, job.collection_id).name)
        return render_job(job)


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
@documented(resp=responses(200, 401, 403, 404), tags=["documents"])
def read_document(name: str, document_id: str) -> Any:
    require("search", name)
    with session_scope(services().sessions) as session:
        return document_view(_document(session, get_collection(session, name), document_id))


@bp.delete("/v1/collections/<name>/documents/<path:document_id>")
@documented(resp=responses(204, 401, 403, 404), tags=["documents"])
def delete_document(name: str, document_id: str) -> Any:
    """Gone from SQL (hence from every answer) at once; a worker removes its vector."""
    g.collection = name
    require("admin", name)
    svc = services()
    with session_scope(svc.sessions) as session:
        collection = get_collection(session, name)
        session.delete(_document(session, collection, document_id))
        collection.version += 1  # cached answers that held it are never served again
        generations = [generation for generation, _ in collection.write_targets()]
        storage = collection.storage_name
    for generation in generations:
        svc.celery.send_task("recall.delete", args=[storage, generation, [document_id]])
    return "", 204


@bp.delete("/v1/collections/<name>/documents")
@documented(resp=responses(200, 400, 401, 403, 404), tags=["documents"])
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
    try:
        spec = json.loads(raw)
    except json.JSONDecodeError:
        raise InvalidRequest("filter is not valid JSON") from None
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
        for start in range(0, len(doomed), 1000):
            ids = [row_id for row_id, _ in doomed[start : start + 1000]]
            session.execute(sa_delete(Document).where(Document.id.in_(ids)))
        if doomed:
            collection.version += 1
        generations = [generation for generation, _ in collection.write_targets()]
        storage = collection.storage_name
    external = [ext for _, ext in doomed]
    for generation in generations:
        for start in range(0, len(external), 1000):
            batch = external[start : start + 1000]
            svc.celery.send_task("recall.delete", args=[storage, generation, batch])
    return {"deleted": len(external)}
