"""The states of jobs and documents, and the one place where each may change.

The enums are the columns' types (``store.tables``): a row holds a member, never a bare
string, and a value outside its enum is refused before it reaches SQL.

A row's state is changed only through ``advance`` (jobs) or the document helpers, which
refuse a step the state machine does not have, and stamp the times that go with it. A
finished job never starts again: a late or replayed message finds it finished and stops.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from core.metrics import QUERY_JOBS

if TYPE_CHECKING:
    from store.tables import IngestJob, QueryJob


def utcnow() -> datetime:
    """The time every state change and every row is stamped with."""
    return datetime.now(UTC)


class JobKind(StrEnum):
    INGEST = "ingest"  # documents sent by a client
    REINDEX = "reindex"  # a new generation of every document
    REPAIR = "repair"  # documents whose vectors Milvus lost (ingestion.reconcile)


class OutboxKind(StrEnum):
    """What an outbox entry asks of the ingestion engine (``ingestion.outbox``)."""

    INGEST = "ingest"  # embed and write documents of an ingestion job
    PLAN = "plan"  # cut a reindex job into chunks
    REINDEX = "reindex"  # embed documents into the generation being built
    DELETE = "delete"  # remove deleted documents' vectors
    DROP = "drop"  # drop Milvus generations (a deleted collection, or one no longer served)


class JobState(StrEnum):
    """An ingestion or reindex job."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"

    @property
    def finished(self) -> bool:
        return self in (JobState.DONE, JobState.FAILED)


class DocumentStatus(StrEnum):
    """``pending`` until its current revision is searchable; ``failed`` keeps the reason."""

    PENDING = "pending"
    INDEXED = "indexed"
    FAILED = "failed"


class QueryStatus(StrEnum):
    QUEUED = "queued"
    RECALLING = "recalling"
    RERANKING = "reranking"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"

    @property
    def finished(self) -> bool:
        return self not in RUNNING_QUERY


RUNNING_QUERY = frozenset({QueryStatus.QUEUED, QueryStatus.RECALLING, QueryStatus.RERANKING})
RUNNING_JOB = frozenset({JobState.QUEUED, JobState.RUNNING})

_JOB_STEPS: dict[JobState, frozenset[JobState]] = {
    JobState.QUEUED: frozenset({JobState.RUNNING, JobState.DONE, JobState.FAILED}),
    JobState.RUNNING: frozenset({JobState.DONE, JobState.FAILED}),
    JobState.DONE: frozenset(),
    JobState.FAILED: frozenset(),
}

_QUERY_STEPS: dict[QueryStatus, frozenset[QueryStatus]] = {
    QueryStatus.QUEUED: frozenset(
        {QueryStatus.RECALLING, QueryStatus.FAILED, QueryStatus.CANCELLED}
    ),
    QueryStatus.RECALLING: frozenset(
        {QueryStatus.RERANKING, QueryStatus.DONE, QueryStatus.FAILED, QueryStatus.CANCELLED}
    ),
    QueryStatus.RERANKING: frozenset({QueryStatus.DONE, QueryStatus.FAILED, QueryStatus.CANCELLED}),
    QueryStatus.DONE: frozenset({QueryStatus.EXPIRED}),
    QueryStatus.FAILED: frozenset({QueryStatus.EXPIRED}),
    QueryStatus.CANCELLED: frozenset({QueryStatus.EXPIRED}),
    QueryStatus.EXPIRED: frozenset(),
}


def advance(job: IngestJob, to: JobState) -> bool:
    """Move an ingestion or reindex job to ``to``; False (and no change) when the state
    machine has no such step from where the job is (already there, or finished)."""
    if to not in _JOB_STEPS[JobState(job.state)]:
        return False
    now = utcnow()
    if to is JobState.RUNNING or job.started_at is None:
        job.started_at = job.started_at or now
    if to.finished:
        job.finished_at = now
    job.state = to
    return True


def advance_query(job: QueryJob, to: QueryStatus, error: str | None = None) -> bool:
    """Move a query job to ``to`` (with the error that failed or cancelled it); False when
    that is no step from its status (say, a cancelled job whose step finished late)."""
    if to not in _QUERY_STEPS[QueryStatus(job.status)]:
        return False
    job.status = to
    if to is not QueryStatus.EXPIRED and to.finished:
        QUERY_JOBS.labels(to.value).inc()
    if to in (QueryStatus.FAILED, QueryStatus.CANCELLED):
        job.error = error
    if to.finished and to is not QueryStatus.EXPIRED:
        job.finished_at = utcnow()
    if to is QueryStatus.EXPIRED:
        job.results = job.recall_hits = None
    return True


def job_state(job: Any) -> JobState:
    return JobState(job.state)


def query_status(job: Any) -> QueryStatus:
    return QueryStatus(job.status)
