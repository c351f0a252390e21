"""Send again the outbox entries whose messages were lost.

An entry is owed work until a worker completes it. Its message can be lost: Redis restarted
empty, a worker was killed between taking the message (BRPOP) and recording it as
unacknowledged, or the send after the commit failed. Each sweep compares the entries that
are due (``not_before`` passed) with the messages Redis holds for them, waiting in the
queue or held by a worker; an entry that no message covers in two sweeps in a row is sent
again (a message in transit covers its entry within milliseconds, so it is never taken for
lost). A replay is harmless: a completed entry is gone, and the writes are idempotent.

It also switches a build with nothing left to do whose last chunk ended before switching.
One worker at a time sweeps, holding a short Redis lock.
"""

from __future__ import annotations

import base64
import json
import logging
from typing import Any

from sqlalchemy import select

from core.contract import Queue, Task
from ingestion import outbox, reindex
from ingestion.resources import Resources
from store.states import RUNNING_JOB
from store.tables import Collection, IngestJob, OutboxEntry, utcnow

log = logging.getLogger(__name__)

QUEUE_KEYS = [Queue.INGEST.value, *(f"{Queue.INGEST}\x06\x16{p}" for p in range(1, 10))]
UNACKED = "unacked"  # kombu's hash of delivered, unacknowledged messages
SUSPECTS = "umarvel:sweep:suspects"
LOCK = "umarvel:sweep:lock"


def covered(client: Any) -> set[int]:
    """Entry ids that messages waiting in the ingest queue or held by workers carry."""
    raws: list[bytes] = []
    for key in QUEUE_KEYS:  # the queue, and kombu's priority sub-queues if any are used
        raws += client.lrange(key, 0, -1)
    raws += [_held(raw) for raw in client.hvals(UNACKED)]
    entries: set[int] = set()
    for raw in raws:
        try:
            message = json.loads(raw)
            if (message.get("headers") or {}).get("task") != Task.INGEST_RUN:
                continue
            entries.add(int(json.loads(base64.b64decode(message["body"]))[0][0]))
        except (ValueError, TypeError, KeyError, IndexError, AttributeError):
            continue  # not one of ours (or not decodable): it covers nothing we track
    return entries


def _held(raw: bytes) -> bytes:
    """The message inside an ``unacked`` entry (``[message, exchange, routing key]``)."""
    try:
        return json.dumps(json.loads(raw)[0]).encode()
    except (ValueError, TypeError, IndexError, KeyError):
        return b"{}"


def sweep(rt: Resources, interval: float) -> list[int]:
    """One sweep; returns the entry ids sent again."""
    client = rt.redis
    if not client.set(LOCK, "1", nx=True, ex=max(1, int(interval * 0.8))):
        return []  # another worker swept moments ago
    with rt.sessions() as session:
        due = set(session.scalars(select(OutboxEntry.id).where(OutboxEntry.not_before <= utcnow())))
        idle_builds = _idle_builds(session)
    for job_id in idle_builds:
        reindex.maybe_switch(rt, job_id)
    uncovered = {str(i) for i in due - covered(client)}
    previous = {
        raw.decode() if isinstance(raw, bytes) else raw for raw in client.smembers(SUSPECTS)
    }
    pipe = client.pipeline()
    pipe.delete(SUSPECTS)
    if uncovered:
        pipe.sadd(SUSPECTS, *uncovered)
        pipe.expire(SUSPECTS, max(60, int(interval * 4)))
    pipe.execute()
    lost = sorted(int(i) for i in uncovered & previous)
    if lost:
        outbox.dispatch(rt.send, lost)
        log.warning("sent again %d outbox entries whose messages were lost", len(lost))
    return lost


def _idle_builds(session: Any) -> list[str]:
    """Builds in progress with no entry left: their switch may not have happened yet."""
    rows = session.execute(
        select(IngestJob.id)
        .join(Collection, Collection.reindex_job_id == IngestJob.id)
        .where(IngestJob.state.in_(list(RUNNING_JOB)))
    )
    return [
        job_id
        for (job_id,) in rows
        if session.scalar(select(OutboxEntry.id).where(OutboxEntry.job_id == job_id).limit(1))
        is None
    ]
