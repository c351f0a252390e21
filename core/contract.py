"""What the API and the workers agree on: queues, task names and their arguments, and the
typed records a query job carries between them.

The API sends tasks by these names (it never imports ``workers``); the workers register
their tasks under them. Arguments are ids only: everything else is read from SQL, where a
query job's plan and hits are stored as the records below.
"""

from __future__ import annotations

import hashlib
import json
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict


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


class _Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


class RerankPlan(_Record):
    enabled: bool
    k: int  # candidates recalled for the reranker (at least top_k)
    weight: float  # of P(Yes) in the fused score


class SearchPlan(_Record):
    """A query as the workers run it, every default filled in by the API.

    One object is three things: the job row's ``request`` column, what the query steps
    read, and (through ``digest``) the result-cache key. Two requests that mean the same
    search build equal plans, so they share one job and one cached answer.
    """

    text: str | None = None
    image: str | None = None  # the media key of the query image
    instruction: str | None = None
    use_default_instruction: bool = True
    top_k: int
    rerank: RerankPlan
    filter: dict[str, Any] | None = None  # as the client wrote it
    expression: str | None = None  # compiled for Milvus; None: no filter

    @property
    def recall_k(self) -> int:
        """How many candidates the recall step searches for."""
        return self.rerank.k if self.rerank.enabled else self.top_k

    def digest(self) -> str:
        canonical = json.dumps(
            self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"), ensure_ascii=False
        )
        return hashlib.sha256(canonical.encode()).hexdigest()


class MediaPart(_Record):
    """A stored media part of a document: its kind (``media.kinds``) and its media key."""

    kind: str
    key: str


class Hit(_Record):
    """A recall hit as a job stores it."""

    document_id: str
    cosine: float


class RankedHit(Hit):
    """A hit of the final ranking as a job stores it."""

    p_yes: float | None  # None: not reranked
    score: float  # the fused score the ranking is sorted by
