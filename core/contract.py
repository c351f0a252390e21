"""What the API and the workers agree on: queues, task names and their arguments.

The API sends tasks by these names (it never imports ``workers``); the workers register
their tasks under them. Arguments are ids only: everything else is read from SQL.
"""

from __future__ import annotations

from enum import StrEnum


class Queue(StrEnum):
    RECALL = "recall"  # query embedding and search (GPU: the recall model)
    RERANK = "rerank"  # pair scoring (GPU: the reranker)
    INGEST = "ingest"  # outbox work: ingestion chunks, reindex, vector deletes and drops


# Query work: what the query backpressure counts. Ingestion has its own (``Queue.INGEST``).
QUERY_QUEUES = (Queue.RECALL, Queue.RERANK)


class Task(StrEnum):
    """Task names; the prefix before the dot is the queue a task is routed to."""

    RECALL_SEARCH = "recall.search"  # (query job id)
    RERANK_SCORE = "rerank.score"  # (query job id), chained after recall.search
    INGEST_RUN = "ingest.run"  # (outbox entry id): any kind of ingestion work
    INGEST_CLEANUP = "ingest.cleanup"  # (): expired query jobs, unreferenced media

    @property
    def queue(self) -> Queue:
        return Queue(self.value.split(".", 1)[0])


def step_ids(job_id: str) -> tuple[str, str]:
    """The Celery task ids of a query job's two steps, fixed so a cancel can revoke them."""
    return f"{job_id}.recall", f"{job_id}.rerank"
