"""Reindex: build generation ``b`` of a collection beside the served ``g``, then switch.

The API opens the job and a ``plan`` entry; the plan cuts the documents ``b`` lacks into
``reindex`` entries. While the build runs, every ingestion writes to both generations, and
each document's ``generation`` column says the newest generation holding its current
revision. The build is complete when no live (not failed) document is below ``b``: one
transaction then serves ``b`` (with its model), and ``g`` is dropped a little later by a
delayed ``drop`` entry, so queries that already chose it can finish.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import Select, func, select, tuple_, update
from sqlalchemy.orm import Session

from core.errors import Conflict
from ingestion import outbox
from ingestion.chunks import chunked
from ingestion.outbox import Kind
from ingestion.resources import Resources
from ingestion.writer import Snapshot, at_least, with_media, write
from recall.index import milvus_name
from store.states import RUNNING_JOB, DocumentStatus, JobKind, JobState, advance
from store.tables import Collection, Document, IngestJob, OutboxEntry

log = logging.getLogger(__name__)


# -- bookkeeping in SQL ----------------------------------------------------------------------
def start(session: Session, collection: Collection, model: str) -> tuple[IngestJob, OutboxEntry]:
    """Open a reindex job building the next generation with ``model``, and its plan entry.

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
        kind=JobKind.REINDEX,
        generation=generation,
        total=live_documents(session, collection.id),
    )
    session.add(job)
    session.flush()
    collection.building_generation = generation
    collection.building_model = model
    collection.reindex_job_id = job.id
    return job, outbox.add(session, Kind.PLAN, {}, job_id=job.id)


def highest_generation(session: Session, collection: Collection) -> int:
    """The highest generation served or ever attempted (a failed build's stays taken)."""
    attempted = session.scalar(
        select(func.max(IngestJob.generation)).where(IngestJob.collection_id == collection.id)
    )
    return max(collection.generation, attempted or 0)


def behind(collection_id: int, generation: int) -> Select[Any]:
    """The live documents whose current revision ``generation`` still lacks."""
    return select(Document).where(
        Document.collection_id == collection_id,
        Document.status != DocumentStatus.FAILED,
        Document.generation < generation,
    )


def live_documents(session: Session, collection_id: int, at_least: int | None = None) -> int:
    """Documents not failed; with ``at_least``, only those already in that generation."""
    query = select(func.count()).where(
        Document.collection_id == collection_id, Document.status != DocumentStatus.FAILED
    )
    if at_least is not None:
        query = query.where(Document.generation >= at_least)
    return int(session.scalar(query) or 0)


def _building(session: Session, job_id: str | None) -> tuple[IngestJob, Collection] | None:
    """The job and its collection while the job is the collection's build in progress."""
    job = session.get(IngestJob, job_id) if job_id else None
    if job is None or JobState(job.state) not in RUNNING_JOB or job.generation is None:
        return None
    collection = session.get(Collection, job.collection_id)
    if collection is None or collection.reindex_job_id != job.id or not collection.building_model:
        return None
    return job, collection


# -- entries ---------------------------------------------------------------------------------
def plan(rt: Resources, entry: outbox.Entry) -> dict[str, Any]:
    """Cut the build into ``reindex`` entries (in the transaction that completes the plan)."""
    with rt.sessions.begin() as session:
        building = _building(session, entry.job_id)
        chunks: list[OutboxEntry] = []
        if building is not None:
            job, collection = building
            advance(job, JobState.RUNNING)
            ids = session.scalars(
                behind(collection.id, int(job.generation or 0))
                .with_only_columns(Document.id)
                .order_by(Document.id)
            ).all()
            chunks = outbox.add_documents(
                session, Kind.REINDEX, job.id, chunked(ids, rt.settings.ingest_chunk_size)
            )
        outbox.complete(session, entry.id)
    outbox.dispatch(rt.send, chunks)
    if building is not None and not chunks:  # nothing to embed: an empty collection
        maybe_switch(rt, str(entry.job_id))
    return {"chunks": len(chunks)}


def run_chunk(rt: Resources, entry: outbox.Entry) -> dict[str, Any]:
    """Embed the entry's documents into the generation being built, then switch if that
    completed it. A document changed meanwhile is written again with its new revision
    (``ingestion.writer``), even if the build switched meanwhile."""
    with rt.sessions.begin() as session:
        building = _building(session, entry.job_id)
        if building is None:  # switched or given up: nothing left to build
            outbox.complete(session, entry.id)
            return {"indexed": 0}
        job, collection = building
        advance(job, JobState.RUNNING)
        generation = int(job.generation or 0)
        docs = session.scalars(
            with_media(
                behind(collection.id, generation).where(Document.id.in_(entry.payload["documents"]))
            )
        )
        snapshots = [Snapshot.of(doc) for doc in docs]
        model = str(collection.building_model)
        target = milvus_name(rt.settings.milvus_prefix, collection.storage_name, generation)
        collection_id, fields = collection.id, dict(collection.metadata_fields)
    written = write(rt, collection_id, target, model, fields, snapshots, {})
    with rt.sessions.begin() as session:
        keys = [(snap.row_id, snap.revision) for snap in written.current]
        if keys:
            session.execute(
                update(Document)
                .where(tuple_(Document.id, Document.revision).in_(keys))
                .values(generation=at_least(generation))
            )
        outbox.complete(session, entry.id)
    if written.failed:  # a document the new model cannot embed: the build cannot complete
        named = "; ".join(f"{snap.external_id}: {m}" for snap, m in written.failed.values())
        chunk_failed(rt, entry, f"documents the new model cannot embed: {named}", complete=False)
    maybe_switch(rt, str(entry.job_id))
    return {"indexed": len(written.current)}


def build_failed(rt: Resources, entry: outbox.Entry, message: str, retryable: bool) -> None:
    """The engine's failure handler: whatever the cause, the build is given up (a new
    reindex starts it again); search stays on the served generation."""
    chunk_failed(rt, entry, message)


def chunk_failed(
    rt: Resources, entry: outbox.Entry, message: str, *, complete: bool = True
) -> None:
    """A build chunk failed for good (its transient failures were retried already): the
    build cannot complete, so it is given up; search stays on the served generation."""
    if complete:
        with rt.sessions.begin() as session:
            outbox.complete(session, entry.id)
    abort(rt, str(entry.job_id), message)


def maybe_switch(rt: Resources, job_id: str) -> bool:
    """Refresh a build's progress; when every live document is in the new generation,
    serve it (one transaction) and schedule the old one's drop."""
    with rt.sessions.begin() as session:
        job = session.get(IngestJob, job_id, with_for_update=True)
        collection = (
            session.get(Collection, job.collection_id, with_for_update=True) if job else None
        )
        building = _building(session, job_id) if collection is not None else None
        if building is None or job is None or collection is None:
            return False
        job.total = live_documents(session, collection.id)
        job.done = live_documents(session, collection.id, at_least=job.generation)
        if job.done < job.total:
            return False
        old = collection.generation
        collection.generation = int(job.generation or 0)
        collection.recall_model = str(collection.building_model)
        collection.end_build()
        collection.version += 1  # answers from the old generation are never served again
        advance(job, JobState.DONE)
        drop = outbox.add_vectors(
            session,
            Kind.DROP,
            collection.storage_name,
            [old],
            delay=rt.settings.reindex_drop_delay_seconds,
        )
        name = collection.name
    log.info(
        "reindex switched",
        extra={"task": "ingest.run", "job_id": job_id, "collection": name, "generation": old},
    )
    outbox.dispatch(rt.send, [drop], countdown=rt.settings.reindex_drop_delay_seconds)
    return True


def abort(rt: Resources, job_id: str, message: str) -> None:
    """Give up a build: search stays on the served generation; the new one is dropped."""
    with rt.sessions.begin() as session:
        job = session.get(IngestJob, job_id, with_for_update=True)
        if job is None or not advance(job, JobState.FAILED):
            return
        job.errors = [*job.errors, {"index": None, "id": None, "message": message}]
        collection = session.get_one(Collection, job.collection_id, with_for_update=True)
        if collection.reindex_job_id == job_id:
            collection.end_build()
        drop = outbox.add_vectors(
            session, Kind.DROP, collection.storage_name, [job.generation or 0]
        )
        name = collection.name
    log.error(
        "reindex failed",
        extra={"task": "ingest.run", "job_id": job_id, "collection": name, "error": message},
    )
    outbox.dispatch(rt.send, [drop])
