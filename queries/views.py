"""How documents and ranked hits are shown to clients: one place for the API and workers."""

from __future__ import annotations

import base64
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from core.contract import Hit
from store.states import DocumentStatus, JobState
from store.tables import Document, IngestJob, utcnow


def media_url(key: str) -> str:
    return f"/v1/media/{key}"


def document_view(doc: Document) -> dict[str, Any]:
    return {
        "id": doc.external_id,
        "text": doc.text,
        "metadata": doc.doc_metadata,
        "image_url": media_url(doc.image_key) if doc.image_key else None,
        "media": [{"kind": part.kind, "url": media_url(part.key)} for part in doc.media],
        "status": doc.status,
    }


def ingestible(doc: Document, read: Callable[[str], bytes] | None = None) -> dict[str, Any]:
    """A document in the shape the ingestion endpoint takes (``api.schemas.DocumentIn``):
    its media parts as their URLs, or, given ``read`` (a stored object's bytes by key), as
    base64 ``data`` that ingestion takes back as it is."""
    return {
        "id": doc.external_id,
        "text": doc.text,
        "metadata": doc.doc_metadata,
        "media": [
            {"kind": part.kind, "url": media_url(part.key)}
            if read is None
            else {"kind": part.kind, "data": base64.b64encode(read(part.key)).decode()}
            for part in doc.media
        ],
    }


# Fields of a hit that an answer leaves out where they do not apply (None).
OPTIONAL_SCORES = frozenset({"keyword", "recall", "group", "segment"})


def enrich(
    session: Session, collection_id: int, hits: Sequence[Hit], first_rank: int = 1
) -> list[dict[str, Any]]:
    """Hits, ranked, with their documents' text, metadata and image URL.

    Only documents SQL holds as ``indexed`` are shown: a hit whose document was deleted
    since it was found is left out, and so is one whose current content is not the one its
    vector was made from (sent again and still pending, or failed).
    """
    ids = [h.document_id for h in hits]
    docs = {}
    if ids:
        rows = session.scalars(
            select(Document)
            .where(Document.collection_id == collection_id, Document.external_id.in_(ids))
            .options(selectinload(Document.media))
        )
        docs = {doc.external_id: doc for doc in rows}
    enriched: list[dict[str, Any]] = []
    for hit in hits:
        doc = docs.get(hit.document_id)
        if doc is None or doc.status != DocumentStatus.INDEXED:
            continue
        extra = document_view(doc)
        extra.pop("id", None)
        extra.pop("status", None)
        scores = hit.model_dump(exclude=set(OPTIONAL_SCORES)) | {
            name: value.model_dump() if name == "segment" else value
            for name in OPTIONAL_SCORES
            if (value := getattr(hit, name, None)) is not None
        }
        enriched.append({"rank": first_rank + len(enriched), **scores, **extra})
    return enriched


def ingest_job_view(job: IngestJob) -> dict[str, Any]:
    """An ingestion or reindex job with its progress: rate (documents indexed per second)
    and time left."""
    rate = eta = None
    if job.started_at is not None and job.done:
        elapsed = ((job.finished_at or utcnow()) - job.started_at).total_seconds()
        rate = job.done / max(elapsed, 1e-3)
        remaining = job.total - job.done - job.failed
        eta = remaining / rate if not JobState(job.state).finished else 0.0
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
