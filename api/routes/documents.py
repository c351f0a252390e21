"""Documents and ingestion jobs.

Everything is validated before anything is queued; invalid items are reported per item
and do not block the valid ones.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, g, request
from pydantic import ValidationError
from sqlalchemy import select

from api.auth import require
from api.errors import validation_error
from api.openapi import documented, responses
from api.routes.collections import get_collection
from api.schemas import DocumentIn, DocumentsRequest, decode_base64, json_body
from api.services import Services, services
from core.db import session_scope
from core.errors import InvalidRequest, NotFound, UmarvelError, Unavailable
from core.images import decode_image
from core.metrics import INGEST_DOCUMENTS
from core.models import Collection, Document, IngestJob, utcnow
from core.results import document_view
from recall.filters import check_value

bp = Blueprint("documents", __name__)


def _validate(svc: Services, collection: Collection, raw: Any) -> tuple[DocumentIn, str | None]:
    """A valid document and the media key of its stored image; raises on any problem."""
    try:
        doc = DocumentIn.model_validate(raw)
    except ValidationError as exc:
        raise validation_error(exc) from None
    settings = svc.settings
    if not (doc.text and doc.text.strip()) and doc.image is None:
        raise InvalidRequest("a document needs text, an image, or both")
    if doc.text and len(doc.text) > settings.max_text_chars:
        raise InvalidRequest(f"text is longer than {settings.max_text_chars} characters")
    fields = collection.metadata_fields
    for name, value in doc.metadata.items():
        if name in fields and value is not None:
            check_value(name, fields[name], value)
    image_key = None
    if doc.image is not None:
        data = decode_base64(doc.image, "image")
        decode_image(data, max_bytes=settings.max_image_bytes, max_pixels=settings.max_image_pixels)
        image_key = svc.media.put(data)
    return doc, image_key


@bp.post("/v1/collections/<name>/documents")
@documented(json=DocumentsRequest, resp=responses(202, 400, 401, 403, 404, 413), tags=["documents"])
def ingest_documents(name: str) -> Any:
    g.collection = name
    require("admin", name)
    svc = services()
    body = json_body(request)
    items = body.get("documents") if isinstance(body, dict) else None
    if not isinstance(items, list) or not items:
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
                doc, image_key = _validate(svc, collection, raw)
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
    return {
        "id": job.id,
        "url": f"/v1/ingest-jobs/{job.id}",
        "state": job.state,
        "total": job.total,
        "done": job.done,
        "failed": job.failed,
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


@bp.get("/v1/collections/<name>/documents/<path:document_id>")
@documented(resp=responses(200, 401, 403, 404), tags=["documents"])
def read_document(name: str, document_id: str) -> Any:
    require("search", name)
    with session_scope(services().sessions) as session:
        collection = get_collection(session, name)
        doc = session.scalar(
            select(Document).where(
                Document.collection_id == collection.id, Document.external_id == document_id
            )
        )
        if doc is None:
            raise NotFound(f"document {document_id!r} does not exist in {name!r}")
        return document_view(doc)
