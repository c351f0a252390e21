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
    return pipeline.ingest_chunk(runtime(), str(job_id), [int(i) for i in document_ids])


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
def delete(collection: str, generation: int, document_ids: list[str]) -> int:
    """Remove deleted documents' vectors (their SQL rows are already gone)."""
    return pipeline.delete_vectors(runtime(), str(collection), int(generation), list(document_ids))


@shared_task(name="recall.drop")
def drop(collection: str, generations: list[int]) -> int:
    """Drop a deleted collection's Milvus collections."""
    return pipeline.drop_collections(runtime(), str(collection), [int(g) for g in generations])
