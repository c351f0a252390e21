"""Compare each document's state in SQL with what Milvus holds, and repair every difference.

SQL is the record; Milvus is derived from it. They can still disagree afterwards:
milvus-lite killed with -9 can forget the last upsert it acknowledged, a volume can be
restored from an older snapshot, a vector can be deleted by a late replay of an old delete,
and an upsert that Milvus applied can be reported as failed (a server restarting under the
call), so that its documents were marked failed while their vectors are there. Every
``UMARVEL_RECONCILE_SECONDS`` the sweep checks each collection that is quiet (no ingestion
or reindex work owed, no build in progress) for four disagreements:

- **missing**: indexed in SQL, no vector: re-embedded;
- **orphan**: a vector whose id SQL does not hold at all: deleted;
- **stale**: a vector of a document SQL does not hold as indexed (it failed): re-embedded,
  which writes its vector or, when its content cannot be embedded, removes it;
- **outage**: failed for a reason outside the document (an outage that outlasted the retry
  budget): re-embedded, now that Milvus answers again.

Counts are compared first, which is cheap: the vectors of documents not indexed are asked
for by id, and all ids are listed only when the counts still differ or a repair is due.
Reading order makes the repair safe without a lock. A document row is always committed
before its vector is written, and marked ``indexed`` only after. So a document indexed in
SQL before Milvus is read, and absent from Milvus, is missing (it is re-checked in the
repair's own transaction: same state, same revision); and a vector read from Milvus before
SQL is read, whose id SQL no longer has at all, is an orphan. Documents to re-embed are
owned by a ``repair`` job that clients see like any other; orphans are removed by an outbox
delete. Each repair is logged and counted (``umarvel_reconcile_repairs_total{kind}``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from core.metrics import RECONCILE_REPAIRS
from ingestion import outbox
from ingestion.chunks import chunked
from ingestion.outbox import Kind
from ingestion.resources import Resources
from recall.index import milvus_name
from store.states import DocumentStatus, JobKind
from store.tables import Collection, Document, IngestJob, OutboxEntry

log = logging.getLogger(__name__)

LOCK = "umarvel:reconcile:lock"
WORK_KINDS = (Kind.INGEST, Kind.PLAN, Kind.REINDEX)  # entries that make Milvus change


@dataclass(frozen=True)
class State:
    """A document as SQL holds it when the check reads it."""

    status: str
    revision: int
    retryable: bool


@dataclass
class Repair:
    """What one check of one collection found (and queued)."""

    collection: str
    milvus: int
    indexed: int
    missing: list[str] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)
    stale: list[str] = field(default_factory=list)
    outage: list[str] = field(default_factory=list)
    job_id: str | None = None

    @property
    def found(self) -> bool:
        return bool(self.missing or self.orphans or self.stale or self.outage)

    def counts(self) -> dict[str, int]:
        return {
            "missing": len(self.missing),
            "orphan": len(self.orphans),
            "stale": len(self.stale),
            "outage": len(self.outage),
        }


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
        states = {
            external_id: State(status, revision, retryable)
            for external_id, status, revision, retryable in session.execute(
                select(
                    Document.external_id, Document.status, Document.revision, Document.retryable
                ).where(Document.collection_id == collection_id)
            )
        }
    indexed = {i for i, s in states.items() if s.status == DocumentStatus.INDEXED}
    unindexed = sorted(set(states) - indexed)
    target = milvus_name(rt.settings.milvus_prefix, storage, generation)
    exists = rt.index.exists(target)
    milvus_count = rt.index.count(target) if exists else 0
    stale = rt.index.present(target, unindexed) if exists and unindexed else set()
    repair = Repair(name, milvus_count, len(indexed))
    repair.stale = sorted(stale)
    repair.outage = sorted(
        i
        for i in unindexed
        if states[i].status == DocumentStatus.FAILED and states[i].retryable and i not in stale
    )
    # Listing every id costs a page per 5,000 vectors: only when the counts say a vector is
    # missing or extra, or when a repair is due anyway. (A vector lost and an orphan gained
    # at once, and nothing else, balance out here until the counts differ.)
    if milvus_count - len(stale) != len(indexed) or repair.found:
        held = set(rt.index.ids(target)) if exists else set()
        repair.missing = sorted(indexed - held)
        repair.orphans = sorted(held - set(states))
    if not repair.found:
        return None
    _queue(rt, collection_id, storage, generation, states, repair)
    return repair if repair.found else None


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


def _queue(
    rt: Resources,
    collection_id: int,
    storage: str,
    generation: int,
    states: dict[str, State],
    repair: Repair,
) -> None:
    """One transaction: the repair job owns the documents to re-embed (each still in the
    state and at the revision read), and the orphans' delete is recorded; then both are
    sent."""
    entries = []
    wanted = {*repair.missing, *repair.stale, *repair.outage}
    with rt.sessions.begin() as session:
        rows = [
            (row_id, external_id)
            for row_id, external_id, status, revision in session.execute(
                select(Document.id, Document.external_id, Document.status, Document.revision)
                .where(Document.collection_id == collection_id)
                .where(Document.external_id.in_(sorted(wanted)))
                .with_for_update()
            )
            if (status, revision) == (states[external_id].status, states[external_id].revision)
        ]
        kept = {external_id for _, external_id in rows}
        repair.missing = [i for i in repair.missing if i in kept]
        repair.stale = [i for i in repair.stale if i in kept]
        repair.outage = [i for i in repair.outage if i in kept]
        if rows:
            job = IngestJob(collection_id=collection_id, kind=JobKind.REPAIR, total=len(rows))
            session.add(job)
            session.flush()
            session.execute(
                update(Document)
                .where(Document.id.in_([row_id for row_id, _ in rows]))
                .values(
                    status=DocumentStatus.PENDING, error=None, retryable=False, ingest_job_id=job.id
                )
            )
            chunks = chunked(sorted(row_id for row_id, _ in rows), rt.settings.ingest_chunk_size)
            entries += outbox.add_documents(session, Kind.INGEST, job.id, chunks)
            repair.job_id = job.id
        for ids in chunked(repair.orphans, 1000):
            entries.append(outbox.add_vectors(session, Kind.DELETE, storage, [generation], ids))
    outbox.dispatch(rt.send, entries)
    for kind, count in repair.counts().items():
        if count:
            RECONCILE_REPAIRS.labels(kind).inc(count)
    log.warning(
        "collection %s: Milvus held %d vectors for %d indexed documents; re-embedding %d "
        "missing, %d stale and %d failed for an outage, deleting %d orphans",
        repair.collection,
        repair.milvus,
        repair.indexed,
        len(repair.missing),
        len(repair.stale),
        len(repair.outage),
        len(repair.orphans),
        extra={"job_id": repair.job_id, **repair.counts()},
    )
