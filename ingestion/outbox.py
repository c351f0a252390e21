"""The outbox: work the system accepted, recorded in the transaction that accepted it.

A request that is answered 2xx has committed its rows and its outbox entries together; a
request that fails has committed neither. After the commit the entries are sent as
``ingest.run`` messages; one whose message is lost (Redis restarted, a worker killed mid-
delivery, a send that failed) is sent again by the sweep. A worker deletes an entry in the
same transaction that records its work as done, so a replayed message finds nothing to do.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypedDict

from sqlalchemy.orm import Session

from core.contract import Task
from store.states import OutboxKind
from store.tables import OutboxEntry, utcnow

log = logging.getLogger(__name__)

# How a message is sent: (task, args, countdown seconds). Celery's send_task behind it.
Send = Callable[[Task, list[Any], float], None]


Kind = OutboxKind


class Documents(TypedDict):
    """``ingest`` and ``reindex``: document row ids."""

    documents: list[int]


class Vectors(TypedDict):
    """``delete``: primary keys in each generation; ``drop``: whole generations."""

    storage: str
    generations: list[int]
    ids: list[str]


@dataclass(frozen=True)
class Entry:
    """An outbox entry as its handler sees it (read in one transaction, used after it)."""

    id: int
    kind: Kind
    job_id: str | None
    payload: dict[str, Any]
    attempts: int
    failing_since: datetime | None = None  # its first retryable failure, if any

    @classmethod
    def of(cls, row: OutboxEntry) -> Entry:
        return cls(
            row.id, Kind(row.kind), row.job_id, dict(row.payload), row.attempts, row.failing_since
        )


def add(
    session: Session,
    kind: Kind,
    payload: Documents | Vectors | dict[str, Any],
    *,
    job_id: str | None = None,
    delay: float = 0.0,
) -> OutboxEntry:
    """Record an entry in the caller's transaction (flushed, so it has its id)."""
    entry = OutboxEntry(
        kind=kind,
        job_id=job_id,
        payload=dict(payload),
        not_before=utcnow() + timedelta(seconds=delay),
    )
    session.add(entry)
    session.flush()
    return entry


def add_documents(
    session: Session, kind: Kind, job_id: str, chunks: Iterable[Sequence[int]]
) -> list[OutboxEntry]:
    return [add(session, kind, {"documents": list(ids)}, job_id=job_id) for ids in chunks]


def add_vectors(
    session: Session,
    kind: Kind,
    storage: str,
    generations: Sequence[int],
    ids: Sequence[str] = (),
    delay: float = 0.0,
) -> OutboxEntry:
    payload: Vectors = {"storage": storage, "generations": list(generations), "ids": list(ids)}
    return add(session, kind, payload, delay=delay)


def dispatch(send: Send, entries: Iterable[OutboxEntry | int], countdown: float = 0.0) -> int:
    """Send committed entries (to run ``countdown`` seconds from now); returns how many
    went. A failed send is only logged: the entry is recorded, so the sweep sends it when
    the broker is back."""
    sent = 0
    for entry in entries:
        entry_id = entry if isinstance(entry, int) else entry.id
        try:
            send(Task.INGEST_RUN, [entry_id], countdown)
        except Exception as exc:
            log.warning("outbox entry %s not sent (the sweep will): %s", entry_id, exc)
            continue
        sent += 1
    return sent


def complete(session: Session, entry_id: int) -> None:
    """The work of ``entry_id`` is done: in the transaction that recorded it as done."""
    entry = session.get(OutboxEntry, entry_id)
    if entry is not None:
        session.delete(entry)
