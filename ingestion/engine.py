"""Runs one outbox entry, and decides what its failure means (``ingestion.retry``).

A retryable failure leaves the entry in the outbox with a later ``not_before`` and sends
it again after a backoff, for as long as it has been failing less than the settings' retry
budget; after that, or at once for a permanent failure, the entry's own failure handler
records the reason (its documents failed, marked retryable when the cause was an outage;
its build given up) and completes it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from core.contract import Task
from ingestion import ingest, reindex, vectors
from ingestion.outbox import Entry, Kind
from ingestion.resources import Resources
from ingestion.retry import backoff, is_transient, reason
from store.tables import OutboxEntry, utcnow

log = logging.getLogger(__name__)

Handler = Callable[[Resources, Entry], dict[str, Any]]
Failure = Callable[[Resources, Entry, str, bool], None]  # ..., message, retryable

HANDLERS: dict[Kind, Handler] = {
    Kind.INGEST: ingest.run_chunk,
    Kind.PLAN: reindex.plan,
    Kind.REINDEX: reindex.run_chunk,
    Kind.DELETE: vectors.delete,
    Kind.DROP: vectors.drop,
}


GIVE_UP_SECONDS = 3600.0


def _give_up(rt: Resources, entry: Entry, message: str, retryable: bool) -> None:
    """Deletes and drops have no document to blame: the entry stays (with its error, for an
    operator) and is tried again hourly; Milvus keeps an orphan vector meanwhile, which no
    answer shows (answers are read from SQL)."""
    with rt.sessions.begin() as session:
        row = session.get(OutboxEntry, entry.id)
        if row is not None:
            row.attempts, row.last_error = entry.attempts + 1, message
            row.not_before = utcnow() + timedelta(seconds=GIVE_UP_SECONDS)


FAILURES: dict[Kind, Failure] = {
    Kind.INGEST: ingest.fail_chunk,
    Kind.PLAN: reindex.build_failed,  # a build that cannot be planned is given up too
    Kind.REINDEX: reindex.build_failed,
    Kind.DELETE: _give_up,
    Kind.DROP: _give_up,
}


def run(rt: Resources, entry_id: int) -> dict[str, Any]:
    """Do the work of ``entry_id``; nothing when it is done already (a replayed message)."""
    with rt.sessions() as session:
        row = session.get(OutboxEntry, entry_id)
        entry = Entry.of(row) if row is not None else None
    if entry is None:
        return {"entry": entry_id, "outcome": "done before"}
    try:
        outcome = HANDLERS[entry.kind](rt, entry)
    except Exception as exc:
        return _failed(rt, entry, exc)
    return {"entry": entry_id, "kind": entry.kind, "outcome": "done", **outcome}


def _failed(rt: Resources, entry: Entry, exc: Exception) -> dict[str, Any]:
    message = reason(exc)
    attempts = entry.attempts + 1
    retryable = is_transient(exc)
    now = utcnow()
    since = entry.failing_since or now
    if retryable and (now - since).total_seconds() < rt.settings.ingest_retry_seconds:
        delay = backoff(attempts)
        with rt.sessions.begin() as session:
            row = session.get(OutboxEntry, entry.id)
            if row is not None:
                row.attempts, row.last_error, row.failing_since = attempts, message, since
                row.not_before = now + timedelta(seconds=delay)
        log.warning(
            "outbox entry %s (%s) retried in %.1f s after: %s", entry.id, entry.kind, delay, message
        )
        try:
            rt.send(Task.INGEST_RUN, [entry.id], delay)
        except Exception:  # the broker is away too: the sweep sends it later
            log.warning("retry of outbox entry %s not sent", entry.id, exc_info=True)
        return {"entry": entry.id, "kind": entry.kind, "outcome": "retrying", "error": message}
    if retryable:
        failing = (now - since).total_seconds()
        message = f"gave up after {attempts} attempts in {failing:.0f} s: {message}"
    log.error("outbox entry %s (%s) failed: %s", entry.id, entry.kind, message)
    FAILURES[entry.kind](rt, entry, message, retryable)
    return {"entry": entry.id, "kind": entry.kind, "outcome": "failed", "error": message}
