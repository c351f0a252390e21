"""Celery tasks: thin adapters that validate ids and call ``workers.pipeline``.

Payloads are ids only; text, images and vectors are read from SQL, the media store and
Milvus. A task raises on failure (after recording it on the job), never returns an error.
"""

from __future__ import annotations

from typing import Any

from celery import shared_task

from workers import pipeline
from workers.runtime import runtime


@shared_task(name="recall.ingest")
def ingest(job_id: str, document_ids: list[int]) -> dict[str, Any]:
    try:
        outcome = pipeline.ingest_chunk(runtime(), str(job_id), [int(i) for i in document_ids])
    except Exception:
        drop_later({"drop": pipeline.switch_if_built(runtime(), str(job_id))})
        raise
    drop_later(outcome)
    return outcome


@shared_task(name="recall.reindex")
def reindex(job_id: str) -> int:
    """Fan a reindex job out into chunks on the recall queue (a replay only re-sends
    chunks, which skip what is already done)."""
    chunks = pipeline.plan_reindex(runtime(), str(job_id))
    for chunk in chunks:
        reindex_chunk.delay(str(job_id), chunk)
    if not chunks:  # nothing to embed: an empty collection switches at once
        drop_later({"drop": pipeline.maybe_switch(runtime(), str(job_id))})
    return len(chunks)


@shared_task(name="recall.reindex_chunk")
def reindex_chunk(job_id: str, document_ids: list[int]) -> dict[str, Any]:
    outcome = pipeline.reindex_chunk(runtime(), str(job_id), [int(i) for i in document_ids])
    drop_later(outcome)
    return outcome


def drop_later(outcome: dict[str, Any]) -> None:
    """After a reindex switch (or failure): drop the generation no longer served, once the
    queries that already chose it have had time to finish."""
    target = outcome.get("drop")
    if target:
        delay = runtime().settings.reindex_drop_delay_seconds
        drop.apply_async(args=[target["collection"], target["generations"]], countdown=delay)


@shared_task(name="recall.search")
def search(job_id: str) -> str:
    return pipeline.recall_step(runtime(), str(job_id))


@shared_task(name="rerank.score")
def score(job_id: str) -> str:
    return pipeline.rerank_step(runtime(), str(job_id))


@shared_task(name="recall.cleanup")
def cleanup() -> int:
    """Periodic (Celery beat): delete query jobs past their lifetime."""
    return pipeline.cleanup_jobs(runtime())


@shared_task(name="recall.delete")
def delete(storage: str, generation: int, document_ids: list[str]) -> int:
    """Remove deleted documents' vectors (their SQL rows are already gone)."""
    return pipeline.delete_vectors(runtime(), str(storage), int(generation), list(document_ids))


@shared_task(name="recall.drop")
def drop(storage: str, generations: list[int]) -> int:
    """Drop Milvus collections: a deleted collection's, or a generation no longer served."""
    return pipeline.drop_collections(runtime(), str(storage), [int(g) for g in generations])
