"""Re-queue ingestion and reindex work that the broker lost.

Late acknowledgement protects a task from the moment kombu records it as unacknowledged.
Just before that moment, Redis has already handed the message to a worker (BRPOP), and the
worker has not yet written it to the ``unacked`` hash. A worker killed then takes the message
with it. This sweep closes that window from the application's side:

- SQL knows the outstanding work: pending documents of running ingestion jobs, and the
  documents a running reindex has not built yet.
- Redis knows the messages that cover some of it: those waiting in the queue and those
  held unacknowledged by a worker.
- Outstanding documents that no message covers, in two sweeps some seconds apart, are
  queued again. A message in transit covers its documents within milliseconds, so it is
  never mistaken for a lost one.

Replays are harmless: upserts are keyed by document id. One recall worker at a time sweeps,
holding a short Redis lock.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Iterable
from typing import Any

from sqlalchemy import select

from core.models import Collection, Document, IngestJob
from core.reindex import behind

log = logging.getLogger(__name__)

QUEUE = "recall"
QUEUE_KEYS = [QUEUE, *(f"{QUEUE}\x06\x16{priority}" for priority in range(1, 10))]
UNACKED = "unacked"  # kombu's hash of delivered, unacknowledged messages
SUSPECTS = "umarvel:redrive:suspects"
LOCK = "umarvel:redrive:lock"
CHUNK_TASKS = {"recall.ingest": "ingest", "recall.reindex_chunk": "reindex"}


def covered(client: Any) -> tuple[set[tuple[str, int]], set[str]]:
    """(("ingest"|"reindex", document row id) pairs, reindex job ids being planned) that
    messages in the recall queue or held by workers refer to."""
    documents: set[tuple[str, int]] = set()
    planned: set[str] = set()
    raws: list[bytes] = []
    for key in QUEUE_KEYS:  # the queue, and kombu's priority sub-queues if any are used
        raws += client.lrange(key, 0, -1)
    raws += [_held(raw) for raw in client.hvals(UNACKED)]
    for raw in raws:
        try:
            message = json.loads(raw)
            task = (message.get("headers") or {}).get("task")
            if task not in CHUNK_TASKS and task != "recall.reindex":
                continue
            args = json.loads(base64.b64decode(message["body"]))[0]
            if task == "recall.reindex":
                planned.add(str(args[0]))
            else:
                documents.update((CHUNK_TASKS[task], int(i)) for i in args[1])
        except (ValueError, TypeError, KeyError, IndexError, AttributeError):
            continue  # not one of ours (or not decodable): it covers nothing we track
    return documents, planned


def _held(raw: bytes) -> bytes:
    """The message inside an ``unacked`` entry (``[message, exchange, routing key]``)."""
    try:
        return json.dumps(json.loads(raw)[0]).encode()
    except (ValueError, TypeError, IndexError, KeyError):
        return b"{}"


def outstanding(session: Any) -> dict[tuple[str, str], list[int]]:
    """Work SQL is waiting for: {(kind, job id): document row ids}."""
    work: dict[tuple[str, str], list[int]] = {}
    rows = session.execute(
        select(Document.ingest_job_id, Document.id)
        .join(IngestJob, IngestJob.id == Document.ingest_job_id)
        .where(Document.status == "pending", IngestJob.state.in_(("queued", "running")))
    )
    for job_id, doc_id in rows:
        work.setdefault(("ingest", job_id), []).append(doc_id)
    for job_id, generation, collection_id in _building(session):
        ids = session.scalars(behind(collection_id, generation)).all()
        if ids:
            work[("reindex", job_id)] = list(ids)
    return work


def built(session: Any) -> list[str]:
    """Reindex jobs with nothing left to embed (their switch may not have happened yet)."""
    return [
        job_id
        for job_id, generation, collection_id in _building(session)
        if not session.scalar(behind(collection_id, generation).limit(1))
    ]


def _building(session: Any) -> list[Any]:
    """(job id, generation, collection id) of every reindex in progress."""
    return list(
        session.execute(
            select(IngestJob.id, IngestJob.generation, Collection.id)
            .join(Collection, Collection.reindex_job_id == IngestJob.id)
            .where(IngestJob.state.in_(("queued", "running")))
        )
    )


def sweep(rt: Any, interval: float) -> list[tuple[str, str, list[int]]]:
    """One sweep; returns the (kind, job id, document ids) chunks to queue again.

    Documents found uncovered are remembered; only those uncovered in two consecutive
    sweeps are returned. A reindex with nothing left to embed is given its switch here,
    in case the chunk that finished it failed before switching.
    """
    client = rt.redis
    if not client.set(LOCK, "1", nx=True, ex=max(1, int(interval * 0.8))):
        return []  # another worker swept moments ago
    with rt.sessions() as session:
        work = outstanding(session)
        complete = built(session)
    if complete:
        from workers import pipeline, tasks

        for job_id in complete:
            tasks.drop_later({"drop": pipeline.maybe_switch(rt, job_id)})
    documents, planned = covered(client)
    # While a reindex builds, an ingestion writes both generations: it covers both kinds.
    any_kind = {doc_id for _, doc_id in documents}
    uncovered = {
        f"{kind}:{job_id}:{doc_id}"
        for (kind, job_id), ids in work.items()
        if not (kind == "reindex" and job_id in planned)
        for doc_id in ids
        if ((kind, doc_id) not in documents if kind == "ingest" else doc_id not in any_kind)
    }
    previous = {raw.decode() for raw in client.smembers(SUSPECTS)}
    pipe = client.pipeline()
    pipe.delete(SUSPECTS)
    if uncovered:
        pipe.sadd(SUSPECTS, *uncovered)
        pipe.expire(SUSPECTS, max(60, int(interval * 4)))
    pipe.execute()
    lost = sorted(uncovered & previous)
    return _chunks(lost, rt.settings.ingest_chunk_size)


def _chunks(lost: Iterable[str], size: int) -> list[tuple[str, str, list[int]]]:
    by_job: dict[tuple[str, str], list[int]] = {}
    for entry in lost:
        kind, job_id, doc_id = entry.split(":")
        by_job.setdefault((kind, job_id), []).append(int(doc_id))
    chunks = []
    for (kind, job_id), ids in sorted(by_job.items()):
        ids.sort()
        chunks += [(kind, job_id, ids[i : i + size]) for i in range(0, len(ids), size)]
    return chunks


def requeue(chunks: list[tuple[str, str, list[int]]]) -> None:
    from workers import tasks

    for kind, job_id, ids in chunks:
        task = tasks.ingest if kind == "ingest" else tasks.reindex_chunk
        task.delay(job_id, ids)
        log.warning(
            "re-queued %d documents the broker lost",
            len(ids),
            extra={"task": f"recall.{kind}", "job_id": job_id, "documents": len(ids)},
        )
