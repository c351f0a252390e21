"""The bodies of the API's successful answers, for the OpenAPI document.

The views build plain dicts (``render`` in each route module, ``queries.views``); these
models describe those dicts exactly, and the fuzz test (tests/test_fuzz.py) checks real
answers against them. Every model forbids unknown fields, so a new key in a render
function fails that test until it is documented here.

A field typed ``X | None`` is always present and may be null. A field declared with
``omitted(...)`` is left out of the answer when it does not apply, and is never null.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel

from core.contract import SearchMode
from store.states import DocumentStatus, JobKind, JobState, QueryStatus

FieldType = Literal["int", "float", "str", "bool"]


def drop_defaults(schema: dict[str, Any]) -> None:
    # A default means nothing in an answer; in these models it only marks a field that may
    # be left out, which the schema already says by leaving it out of "required".
    for prop in schema.get("properties", {}).values():
        prop.pop("default", None)


class Answer(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra=drop_defaults)


def omitted(description: str) -> Any:
    """A field that the answer leaves out, rather than sending null, when it does not apply."""
    return Field(default=None, description=description)


# Health


class Liveness(Answer):
    status: Literal["ok"]
    version: str = Field(description="The server's version (a release tag without its v).")


class ReadinessCheck(Answer):
    ok: bool
    error: str = omitted("The exception's type, when the check could not run.")
    workers: int = omitted("Queues only: workers seen through their heartbeats.")
    warm: int = omitted("Queues only: workers whose model is loaded and warmed up.")
    failing: int = omitted("Queues only: workers reporting a model error (see their logs).")


class Readiness(Answer):
    """`/readyz` (this API process: `ready` when `database` and `redis` are ok) and
    `/statusz` (the whole system: every check ok, a warm worker for each queue)."""

    status: Literal["ready", "not_ready"]
    checks: dict[str, ReadinessCheck] = Field(
        description="By name: `database`, `redis`, then `queue:<name>` for each queue "
        "(left out while Redis does not answer)."
    )


# Collections


class RerankSettings(Answer):
    enabled: bool
    k: int
    weight: float


class ReindexProgress(Answer):
    job_id: str
    url: str = Field(description="The reindex job, `/v1/ingest-jobs/{id}`.")
    generation: int = Field(description="The generation being built.")
    recall_model: str = Field(description="The model the new generation is embedded with.")


class DocumentCounts(Answer):
    total: int
    indexed: int
    pending: int
    failed: int


class CollectionOut(Answer):
    name: str
    description: str
    recall_model: str
    metric: str
    rerank: RerankSettings
    metadata_fields: dict[str, FieldType]
    search_mode: SearchMode = Field(description="What queries rank by when they do not say.")
    version: int = Field(description="Bumped by every change that search can see.")
    generation: int = Field(description="The generation search is served from.")
    milvus_collection: str
    reindex: ReindexProgress | None = Field(description="The build in progress, if any.")
    documents: DocumentCounts
    created_at: datetime


class Models(Answer):
    recall_models: list[str] = Field(
        description="UMARVEL_RECALL_MODEL first (the default), then the allowed others."
    )


class CollectionList(Answer):
    collections: list[CollectionOut]


# Documents and ingestion jobs


class ItemError(Answer):
    index: int | None = omitted(
        "The item's position in the request; null for a failure of the whole job, left out "
        "for a document that failed in a worker."
    )
    id: str | None = Field(description="The document's id, when the item had a usable one.")
    message: str


class IngestJobOut(Answer):
    id: str
    url: str
    kind: JobKind
    state: JobState
    total: int
    done: int
    failed: int = Field(description="Items rejected at submission plus documents that failed.")
    rate: float | None = Field(description="Documents indexed per second, once started.")
    eta_seconds: float | None
    errors: list[ItemError]
    created_at: datetime
    finished_at: datetime | None


class AuditEventOut(Answer):
    id: int
    at: datetime
    key_id: int | None = Field(description="The key that asked; none when no key was valid.")
    key_prefix: str | None = Field(description="The first characters of an invalid key sent.")
    action: str = Field(description="e.g. collection.create, keys.revoke, request:<endpoint>")
    target: str | None = Field(description="collection[/document or job id], or a key")
    outcome: Literal["ok", "failed", "refused"]
    status: int | None = Field(description="The HTTP status, for actions through the API.")
    detail: str | None


class AuditPage(Answer):
    events: list[AuditEventOut]
    next_cursor: int | None = Field(description="`cursor` for the next (older) page.")


class Deleted(Answer):
    deleted: int = Field(description="How many documents matched the filter and were deleted.")


class MediaOut(Answer):
    kind: str = Field(description="A registered media kind, e.g. image.")
    url: str = Field(description="`/v1/media/{key}`.")


class DocumentOut(Answer):
    id: str
    text: str | None
    metadata: dict[str, Any]
    image_url: str | None = Field(description="`/v1/media/{key}`, when it has an image.")
    media: list[MediaOut] = Field(description="Its media parts, in the order they were sent.")
    status: DocumentStatus


class DocumentPage(Answer):
    documents: list[DocumentOut] = Field(description="In the order of their SQL ids.")
    next_cursor: str | None = Field(
        description="`cursor` of the next page; null on the last. Opaque: send it as it came."
    )


class FacetCount(Answer):
    value: int | float | str | bool = Field(description="A value, of the field's declared type.")
    count: int


class Facets(Answer):
    field: str
    values: list[FacetCount] = Field(
        description="At most `limit`, the most frequent first (ties by value)."
    )
    nulls: int = Field(description="Matching documents without a value for the field.")
    truncated: bool = Field(description="More values matched than `limit`; the rarest left out.")


class ExportMedia(Answer):
    kind: str = Field(description="A registered media kind, e.g. image.")
    url: str = omitted("`/v1/media/{key}` (`media=urls`).")
    data: str = omitted("The stored object's bytes, base64-encoded (`media=inline`).")


class ExportLine(Answer):
    """One line of an export: a document as ingestion takes it (`DocumentIn`)."""

    id: str
    text: str | None
    metadata: dict[str, Any]
    media: list[ExportMedia] = Field(description="Its media parts, in the order they were sent.")


# Query jobs


class SegmentOut(Answer):
    """Where in a video its best-matching segment lies, in seconds."""

    start: float
    end: float


class RecallHit(Answer):
    """A hit of the recall stage, before rerank: what a partial answer holds."""

    rank: int
    document_id: str
    cosine: float | None = Field(description="Null in keyword mode (nothing is embedded).")
    keyword: float | None = omitted("The store's keyword score; left out without a keyword match.")
    recall: float | None = omitted(
        "The score the recall ranked by (keyword and hybrid modes: see recall.hybrid)."
    )
    segment: SegmentOut = omitted(
        "A video's: the time span of its segment nearest the query (a video is found once)."
    )
    text: str | None
    metadata: dict[str, Any]
    image_url: str | None
    media: list[MediaOut]


class RankedHit(RecallHit):
    """A hit of the final ranking."""

    p_yes: float | None = Field(description="The reranker's probability; null without rerank.")
    score: float = Field(description="The fused score the ranking is sorted by.")
    group: Any = omitted("The group_by field's value (grouped queries).")


class Paging(Answer):
    offset: int
    limit: int
    total: int


class QueryJobOut(Answer):
    """A query job as stored."""

    id: str
    url: str
    collection: str
    status: QueryStatus
    is_running: bool
    is_partial: bool = Field(description="The results are the recall stage's, not final.")
    created_at: datetime
    finished_at: datetime | None
    timings: dict[str, float] = Field(description="Seconds spent in each stage.")
    error: str | None
    cached: Literal[False]
    results: list[RankedHit | RecallHit] = omitted("A page of hits, once recall has run.")
    paging: Paging = omitted("Present with results.")


class CachedAnswer(Answer):
    """A finished query answered from the result cache, without a job of its own."""

    id: str = Field(description="The job that computed the cached results.")
    url: str
    collection: str
    status: Literal["done"]
    is_running: Literal[False]
    is_partial: Literal[False]
    timings: dict[str, float]
    error: None
    cached: Literal[True]
    results: list[RankedHit]
    paging: Paging


class QueryPending(Answer):
    """A job that another request has claimed but not yet stored."""

    id: str
    url: str
    status: Literal["queued"]
    is_running: Literal[True]


class QueryAnswer(RootModel[QueryJobOut | CachedAnswer]):
    """A finished query: its job, or results from the cache."""


class QueryAccepted(RootModel[QueryJobOut | QueryPending]):
    """A query still running: poll its `url`."""
