"""Compare what Milvus holds with what SQL says is indexed, and repair the difference.

SQL is the record; Milvus is derived from it. Milvus can still disagree afterwards:
milvus-lite killed with -9 can forget the last upsert it acknowledged, a volume can be
restored from an older snapshot, a vector can be deleted by a late replay of an old delete.
Every ``UMARVEL_RECONCILE_SECONDS`` the sweep checks each collection that is quiet (no
ingestion or reindex work owed, no build in progress): first by counts, which is cheap,
and only when they differ by ids.

Reading order makes the repair safe without a lock. A document row is always committed
before its vector is written, and marked ``indexed`` only after. So a document indexed in
SQL before Milvus is read, and absent from Milvus, is missing (it is re-checked in the
repair's own transaction: still indexed, same revision); and a vector read from Milvus
before SQL is read, whose id SQL no longer has at all, is an orphan. Missing documents are
re-embedded by a ``repair`` job that clients see like any other; orphans are removed by
an outbox delete.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from sqlalchemy import ColumnElement, select, update
from sqlalchemy.orm import Session

from core.models import Collection, Document, IngestJob, OutboxEntry
from core.states import DocumentStatus, JobKind
from ingestion import outbox
from ingestion.chunks import chunked
from ingestion.outbox import Kind
from ingestion.resources import Resources
from recall.index import milvus_name

log = logging.getLogger(__name__)

LOCK = "umarvel:reconcile:lock"
WORK_KINDS = (Kind.INGEST, Kind.PLAN, Kind.REINDEX)  # entries that make Milvus change


@dataclass
class Repair:
    """What one check of one collection found (and queued)."""

    collection: str
    milvus: int
    indexed: int
    missing: list[str] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)
    job_id: str | None = None


def due(rt: Resources) -> bool:
    """True at most once per ``reconcile_seconds`` across all workers."""
    seconds = rt.settings.reconcile_seconds
    return seconds > 0 and bool(rt.redis.set(LOCK, "1", nx=True, ex=max(1, int(seconds))))


def reconcile(rt: Resources) -> list[Repair]:
    """Check every quiet collection; returns those that disagreed (with what was queued)."""
    with rt.sessions() as session:
        ids = list(session.scalars(select(Collection.id).order_by(Collection.id)))
    repairs = []
    for collection_id in ids:
        repair = check(rt, collection_id)
        if repair is not None:
            repairs.append(repair)
    return repairs


def check(rt: Resources, collection_id: int) -> Repair | None:
    """Compare one collection; queue the repair of what differs. ``None``: it agrees, or
    it is busy (its counts move while work is owed) or gone."""
    with rt.sessions() as session:
        collection = session.get(Collection, collection_id)
        if collection is None or collection.building_generation is not None:
            return None
        if _owed(session, collection_id):
            return None
        name, storage = collection.name, collection.storage_name
        generation = collection.generation
        indexed = dict(
            session.execute(
                select(Document.external_id, Document.revision).where(*_indexed(collection_id))
            ).all()
        )
    target = milvus_name(rt.settings.milvus_prefix, storage, generation)
    exists = rt.index.exists(target)
    milvus_count = rt.index.count(target) if exists else 0
    if milvus_count == len(indexed):
        return None  # equal counts: nothing lost, nothing left over
    held = set(rt.index.ids(target)) if exists else set()
    with rt.sessions() as session:
        known = set(
            session.scalars(
                select(Document.external_id).where(Document.collection_id == collection_id)
            )
        )
    repair = Repair(name, milvus_count, len(indexed))
    repair.missing = sorted(set(indexed) - held)
    repair.orphans = sorted(held - known)
    if repair.missing or repair.orphans:
        _queue(rt, collection_id, storage, generation, indexed, repair)
    return repair


def _owed(session: Session, collection_id: int) -> bool:
    """Ingestion or reindex work of this collection is still owed."""
    return (
        session.scalar(
            select(OutboxEntry.id)
            .join(IngestJob, IngestJob.id == OutboxEntry.job_id)
            .where(IngestJob.collection_id == collection_id, OutboxEntry.kind.in_(WORK_KINDS))
            .limit(1)
        )
        is not None
    )


def _indexed(collection_id: int) -> tuple[ColumnElement[bool], ...]:
    return (Document.collection_id == collection_id, Document.status == DocumentStatus.INDEXED)


def _queue(
    rt: Resources,
    collection_id: int,
    storage: str,
    generation: int,
    revisions: dict[str, int],
    repair: Repair,
) -> None:
    """One transaction: the repair job owns the missing documents (still indexed at the
    revision read), and the orphans' delete is recorded; then both are sent."""
    entries = []
    with rt.sessions.begin() as session:
        rows = [
            (row_id, external_id)
            for row_id, external_id, revision in session.execute(
                select(Document.id, Document.external_id, Document.revision)
                .where(*_indexed(collection_id), Document.external_id.in_(repair.missing))
                .with_for_update()
            )
            if revisions.get(external_id) == revision
        ]
        repair.missing = sorted(external_id for _, external_id in rows)
        if rows:
            job = IngestJob(collection_id=collection_id, kind=JobKind.REPAIR, total=len(rows))
            session.add(job)
            session.flush()
            session.execute(
                update(Document)
                .where(Document.id.in_([row_id for row_id, _ in rows]))
                .values(status=DocumentStatus.PENDING, ingest_job_id=job.id)
            )
            chunks = chunked(sorted(row_id for row_id, _ in rows), rt.settings.ingest_chunk_size)
            entries += outbox.add_documents(session, Kind.INGEST, job.id, chunks)
            repair.job_id = job.id
        for ids in chunked(repair.orphans, 1000):
            entries.append(outbox.add_vectors(session, Kind.DELETE, storage, [generation], ids))
    outbox.dispatch(rt.send, entries)
    log.warning(
        "collection %s: Milvus held %d vectors for %d indexed documents; re-embedding %d "
        "missing, deleting %d orphans",
        repair.collection,
        repair.milvus,
        repair.indexed,
        len(repair.missing),
        len(repair.orphans),
        extra={"job_id": repair.job_id},
    )
