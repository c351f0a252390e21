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
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


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
    k: int  # the first k candidates are reranked (at least the first page's size)
    weight: float  # of P(Yes) in the fused score


class SearchMode(StrEnum):
    """What the recall ranks candidates by (``recall.hybrid``)."""

    DENSE = "dense"  # the cosine of U-MARVEL embeddings (Milvus)
    KEYWORD = "keyword"  # keyword relevance over document text (the SQL store)
    HYBRID = "hybrid"  # both, fused (``Fusion``)


class Fusion(_Record):
    """How a hybrid search merges its dense and keyword rankings."""

    method: Literal["rrf", "weighted"] = "rrf"
    k: int = 60  # rrf: a candidate's score is the sum over rankings of 1 / (k + rank)
    keyword_weight: float = 0.5  # weighted: (1 - w) * cosine + w * keyword / best keyword


class Examples(_Record):
    """Stored documents a query searches by: their vectors are read, never re-embedded."""

    like: list[str]  # positive examples, at least one
    unlike: list[str] = []
    include: bool = False  # keep the examples themselves in the results


class Grouping(_Record):
    field: str  # a declared metadata field
    size: int  # hits kept per value


# A plan's page: which part of its ranking one request shows. Not part of the digest, so
# every page of one search shares its job and its cached ranking.
PAGE_FIELDS = frozenset({"top_k", "offset"})


class SearchPlan(_Record):
    """A query as the workers run it, every default filled in by the API.

    One object is three things: the job row's ``request`` column, what the query steps
    read, and (through ``digest``) the result-cache key. Two requests that mean the same
    search build equal plans, so they share one job and one cached answer; requests for
    different pages of one search (``PAGE_FIELDS``) share them too.
    """

    text: str | None = None
    image: str | None = None  # the media key of the query image
    video: str | None = None  # the media key of the query video
    instruction: str | None = None
    use_default_instruction: bool = True
    candidates: str = "any"  # what the documents are: picks the default instruction
    mode: SearchMode = Field(SearchMode.DENSE, strict=False)  # stored as its value
    fusion: Fusion | None = None  # hybrid only
    examples: Examples | None = None
    depth: int  # ranked results computed: every page up to it is served from them
    rerank: RerankPlan
    group: Grouping | None = None
    filter: dict[str, Any] | None = None  # as the client wrote it
    expression: str | None = None  # compiled for Milvus; None: no filter
    top_k: int  # the page of the request that made the job (its default page)
    offset: int = 0

    @property
    def media(self) -> str | None:
        """The media key of the query's image or video."""
        return self.image or self.video

    @property
    def embeds_query(self) -> bool:
        """Whether the recall needs the query's embedding (keyword search does not)."""
        return self.mode != SearchMode.KEYWORD

    def digest(self) -> str:
        content = self.model_dump(mode="json", exclude=set(PAGE_FIELDS))
        canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(canonical.encode()).hexdigest()


class MediaPart(_Record):
    """A stored media part of a document: its kind (``media.kinds``) and its media key."""

    kind: str
    key: str


class Segment(_Record):
    """The time span of a video's best-matching segment, in seconds."""

    start: float
    end: float


class Hit(_Record):
    """A recall hit as a job stores it."""

    document_id: str
    cosine: float | None  # None: not computed (a keyword search)
    keyword: float | None = None  # the store's keyword score; None: no keyword match
    recall: float | None = None  # what the recall ranked by; None: the cosine
    segment: Segment | None = None  # a video's: where its vector nearest the query lies

    @property
    def first_stage(self) -> float:
        """The recall's score, which the rerank fuses with P(Yes)."""
        return self.recall if self.recall is not None else float(self.cosine or 0.0)


class RankedHit(Hit):
    """A hit of the final ranking as a job stores it."""

    p_yes: float | None  # None: not reranked
    score: float  # the fused score the ranking is sorted by
    group: Any = None  # the grouping field's value, when the plan groups
