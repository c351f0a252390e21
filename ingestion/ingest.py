"""An ingestion chunk: embed the documents of one outbox entry and make them searchable.

The served generation is written first; while a reindex builds the next generation, the
chunk writes there too (with the build's model). A document is marked ``indexed`` only for
the revision that was written, and only by the job that owns it: a document sent again by a
later job belongs to that job from then on. One bad document fails alone, with its reason.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from sqlalchemy import func, select, tuple_, update
from sqlalchemy.orm import Session

from core.metrics import INGEST_DOCUMENTS, STAGE_SECONDS
from ingestion import outbox, reindex
from ingestion.outbox import Kind
from ingestion.resources import Resources
from ingestion.retry import reason
from ingestion.writer import Snapshot, VectorCache, Written, at_least, with_media, write
from recall.index import milvus_name
from store.states import DocumentStatus, JobState, advance
from store.tables import Collection, Document, IngestJob

log = logging.getLogger(__name__)


def run_chunk(rt: Resources, entry: outbox.Entry) -> dict[str, Any]:
    """Write the entry's documents; records the outcome and completes the entry."""
    with rt.sessions.begin() as session:
        job = session.get(IngestJob, entry.job_id)
        if job is None or JobState(job.state).finished:
            outbox.complete(session, entry.id)
            return {"indexed": 0, "failed": 0}
        advance(job, JobState.RUNNING)
        collection = session.get_one(Collection, job.collection_id)
        docs = session.scalars(
            with_media(
                select(Document).where(
                    Document.id.in_(entry.payload["documents"]),
                    Document.ingest_job_id == job.id,
                    Document.status == DocumentStatus.PENDING,
                )
            )
        )
        snapshots = [Snapshot.of(doc) for doc in docs]
        # While a reindex builds the next generation, writes go to both (no lost update).
        (served, served_model), *building = collection.write_targets()
        collection_id, storage = collection.id, collection.storage_name
        fields = dict(collection.metadata_fields)
        reindex_job = collection.reindex_job_id
    started = time.perf_counter()
    cache: VectorCache = {}
    prefix = rt.settings.milvus_prefix
    served_write = write(
        rt,
        collection_id,
        milvus_name(prefix, storage, served),
        served_model,
        fields,
        snapshots,
        cache,
    )
    if served_write.collection_gone:
        return {"indexed": 0, "failed": 0}
    generation = {snap.row_id: served for snap in served_write.current}
    for build, model in building:
        target = milvus_name(prefix, storage, build)
        taken = _write_build(rt, collection_id, target, model, fields, served_write, cache)
        generation.update({snap.row_id: build for snap in taken})
        missed = [s.row_id for s in served_write.current if generation[s.row_id] != build]
        if missed and reindex_job is not None:  # the build retries these itself
            with rt.sessions.begin() as session:
                retry = outbox.add(session, Kind.REINDEX, {"documents": missed}, job_id=reindex_job)
            outbox.dispatch(rt.send, [retry])
    with rt.sessions.begin() as session:
        _record(session, job.id, served_write, generation)
        searched = session.get(Collection, collection_id)
        if searched is not None:  # searchable now: answers cached before are stale
            searched.version = Collection.version + 1  # in SQL: concurrent chunks add up
        refresh_progress(session, job.id)
        outbox.complete(session, entry.id)
    seconds = time.perf_counter() - started
    STAGE_SECONDS.labels("ingest_chunk").observe(seconds)
    INGEST_DOCUMENTS.labels("indexed").inc(len(served_write.current))
    INGEST_DOCUMENTS.labels("failed").inc(len(served_write.failed))
    counts = {"indexed": len(served_write.current), "failed": len(served_write.failed)}
    log.info(
        "chunk written",
        extra={"task": "ingest.run", "job_id": job.id, **counts, "ms": round(seconds * 1000, 1)},
    )
    if reindex_job is not None:  # these documents may have been the build's last ones
        reindex.maybe_switch(rt, reindex_job)
    return counts


def _write_build(
    rt: Resources,
    collection_id: int,
    target: str,
    model: str,
    fields: dict[str, str],
    served: Written,
    cache: VectorCache,
) -> list[Snapshot]:
    """Write what the served generation took into the one being built. A failure here
    never fails the ingestion: it counts against the build, which retries the documents."""
    try:
        return write(rt, collection_id, target, model, fields, served.current, cache).current
    except Exception as exc:
        log.warning("write to the generation being built failed: %s", reason(exc))
        return []


def _record(session: Session, job_id: str, written: Written, generation: dict[int, int]) -> None:
    """Mark the written revisions indexed (and in which generation), the others failed."""
    by_generation: dict[int, list[tuple[int, int]]] = {}
    for snap in written.current:
        by_generation.setdefault(generation[snap.row_id], []).append((snap.row_id, snap.revision))
    for value, keys in by_generation.items():
        session.execute(
            update(Document)
            .where(
                tuple_(Document.id, Document.revision).in_(keys), Document.ingest_job_id == job_id
            )
            .values(
                status=DocumentStatus.INDEXED,
                error=None,
                retryable=False,
                generation=at_least(value),
            )
        )
    for snap, message in written.failed.values():
        session.execute(
            update(Document)
            .where(
                Document.id == snap.row_id,
                Document.revision == snap.revision,
                Document.ingest_job_id == job_id,
            )
            .values(status=DocumentStatus.FAILED, error=message, retryable=False)
        )
    if written.failed:
        job = session.get_one(IngestJob, job_id, with_for_update=True)
        named = [{"id": snap.external_id, "message": m} for snap, m in written.failed.values()]
        job.errors = [*job.errors, *named]


def fail_chunk(rt: Resources, entry: outbox.Entry, message: str, retryable: bool) -> None:
    """A chunk that failed for good: its documents still waiting fail with ``message``;
    ``retryable`` (an outage outlasted the retry budget) lets reconciliation queue them
    again once Milvus answers."""
    with rt.sessions.begin() as session:
        job = session.get(IngestJob, entry.job_id)
        if job is not None:
            waiting = (
                Document.id.in_(entry.payload["documents"]),
                Document.ingest_job_id == job.id,
                Document.status == DocumentStatus.PENDING,
            )
            names = list(session.scalars(select(Document.external_id).where(*waiting)))
            session.execute(
                update(Document)
                .where(*waiting)
                .values(status=DocumentStatus.FAILED, error=message, retryable=retryable)
            )
            job = session.get_one(IngestJob, job.id, with_for_update=True)
            job.errors = [*job.errors, *({"id": n, "message": message} for n in names)]
            refresh_progress(session, job.id)
            INGEST_DOCUMENTS.labels("failed").inc(len(names))
        outbox.complete(session, entry.id)
    log.error(
        "chunk failed", extra={"task": "ingest.run", "job_id": entry.job_id, "error": message}
    )


def refresh_progress(session: Session, job_id: str) -> None:
    """Counts from the documents themselves, so a replayed chunk never counts twice."""
    job = session.get_one(IngestJob, job_id, with_for_update=True)
    counts = dict(
        session.execute(
            select(Document.status, func.count())
            .where(Document.ingest_job_id == job_id)
            .group_by(Document.status)
        ).all()
    )
    job.done = int(counts.get(DocumentStatus.INDEXED, 0))
    job.failed = job.rejected + int(counts.get(DocumentStatus.FAILED, 0))
    # Done when none of its documents waits any more. A document sent again by a later job
    # belongs to that job from then on, so this one never waits for it.
    if not counts.get(DocumentStatus.PENDING):
        advance(job, JobState.DONE)
