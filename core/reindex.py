"""Reindex bookkeeping in SQL: which generation is being built, and when it is complete.

A reindex builds generation ``b`` of a collection (possibly with a new recall model) beside
the served generation ``g``. While it runs, every ingestion writes to both, and each
document's ``generation`` column says the newest generation holding its current content.
The build is complete when no live (not failed) document is below ``b``; then one
transaction makes ``b`` the served generation, and ``g`` is dropped a little later.
"""

from __future__ import annotations

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from core.errors import Conflict
from core.models import Collection, Document, IngestJob


def start_reindex(session: Session, collection: Collection, model: str) -> IngestJob:
    """Open a reindex job building the next generation with ``model``.

    The collection row must be locked by the caller (``with_for_update``).
    """
    if collection.reindex_job_id is not None:
        raise Conflict(
            f"collection {collection.name!r} is already being reindexed "
            f"(job {collection.reindex_job_id})"
        )
    generation = highest_generation(session, collection) + 1
    job = IngestJob(
        collection_id=collection.id,
        kind="reindex",
        generation=generation,
        total=live_documents(session, collection.id),
    )
    session.add(job)
    session.flush()
    collection.building_generation = generation
    collection.building_model = model
    collection.reindex_job_id = job.id
    return job


def highest_generation(session: Session, collection: Collection) -> int:
    """The highest generation served or ever attempted (a failed build's stays taken)."""
    attempted = session.scalar(
        select(func.max(IngestJob.generation)).where(IngestJob.collection_id == collection.id)
    )
    return max(collection.generation, attempted or 0)


def behind(collection_id: int, generation: int) -> Select[int]:
    """Ids of the live documents whose current content ``generation`` still lacks."""
    return select(Document.id).where(
        Document.collection_id == collection_id,
        Document.status != "failed",
        Document.generation < generation,
    )


def live_documents(session: Session, collection_id: int, at_least: int | None = None) -> int:
    """Documents not failed; with ``at_least``, only those already in that generation."""
    query = select(func.count()).where(
        Document.collection_id == collection_id, Document.status != "failed"
    )
    if at_least is not None:
        query = query.where(Document.generation >= at_least)
    return int(session.scalar(query) or 0)
