"""Celery tasks: thin adapters over ``ingestion.engine`` and ``workers.queries``.

Names and queues come from ``core.contract``. Payloads are ids only; text, images and
vectors are read from SQL, the media store and Milvus. A task raises on failure (after
recording it on its job), never returns an error.
"""

from __future__ import annotations

from typing import Any

from celery import shared_task

from core.contract import Task
from ingestion import engine
from workers import queries
from workers.runtime import runtime


@shared_task(name=Task.INGEST_RUN.value)
def run(entry_id: int) -> dict[str, Any]:
    """Any ingestion work: one outbox entry (a chunk, a reindex plan, a delete, a drop)."""
    return engine.run(runtime(), int(entry_id))


@shared_task(name=Task.RECALL_SEARCH.value)
def search(job_id: str) -> str:
    return queries.recall_step(runtime(), str(job_id))


@shared_task(name=Task.RERANK_SCORE.value)
def score(job_id: str) -> str:
    return queries.rerank_step(runtime(), str(job_id))


@shared_task(name=Task.INGEST_CLEANUP.value)
def cleanup() -> dict[str, int]:
    """Periodic (Celery beat): delete query and ingestion jobs past their lifetime, then the
    media that nothing refers to any more (deleted documents and collections, expired
    queries)."""
    jobs = queries.cleanup_jobs(runtime())
    return {"jobs": jobs, "media": queries.cleanup_media(runtime())}
