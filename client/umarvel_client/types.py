"""Typed views of the API's answers (``GET /openapi.json`` describes the same fields)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

FINISHED_INGEST = ("done", "failed")
FINISHED_QUERY = ("done", "failed", "cancelled", "expired")


@dataclass(frozen=True)
class RerankSettings:
    enabled: bool
    k: int
    weight: float


@dataclass(frozen=True)
class DocumentCounts:
    total: int
    indexed: int
    pending: int
    failed: int


@dataclass(frozen=True)
class Collection:
    name: str
    description: str
    recall_model: str
    rerank: RerankSettings
    metadata_fields: dict[str, str]
    version: int
    generation: int
    documents: DocumentCounts
    reindex: dict[str, Any] | None
    created_at: str
    raw: dict[str, Any] = field(repr=False, compare=False)
    search_mode: str = "dense"  # what queries rank by when they do not say

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> Collection:
        return cls(
            name=body["name"],
            description=body["description"],
            recall_model=body["recall_model"],
            rerank=RerankSettings(**body["rerank"]),
            metadata_fields=dict(body["metadata_fields"]),
            version=body["version"],
            generation=body["generation"],
            documents=DocumentCounts(**body["documents"]),
            reindex=body.get("reindex"),
            created_at=body["created_at"],
            search_mode=body.get("search_mode", "dense"),
            raw=body,
        )


@dataclass(frozen=True)
class ItemError:
    index: int | None
    id: str | None
    message: str


@dataclass(frozen=True)
class IngestJob:
    id: str
    kind: str
    state: str
    total: int
    done: int
    failed: int
    rate: float | None
    eta_seconds: float | None
    errors: list[ItemError]
    raw: dict[str, Any] = field(repr=False, compare=False)

    @property
    def finished(self) -> bool:
        return self.state in FINISHED_INGEST

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> IngestJob:
        return cls(
            id=body["id"],
            kind=body["kind"],
            state=body["state"],
            total=body["total"],
            done=body["done"],
            failed=body["failed"],
            rate=body.get("rate"),
            eta_seconds=body.get("eta_seconds"),
            errors=[
                ItemError(e.get("index"), e.get("id"), e["message"]) for e in body.get("errors", [])
            ],
            raw=body,
        )


@dataclass(frozen=True)
class IngestSummary:
    """What ``Documents.ingest`` sent and what became of it."""

    jobs: list[IngestJob]

    @property
    def total(self) -> int:
        return sum(job.total for job in self.jobs)

    @property
    def done(self) -> int:
        return sum(job.done for job in self.jobs)

    @property
    def failed(self) -> int:
        return sum(job.failed for job in self.jobs)

    @property
    def errors(self) -> list[ItemError]:
        return [error for job in self.jobs for error in job.errors]


@dataclass(frozen=True)
class Document:
    id: str
    text: str | None
    metadata: dict[str, Any]
    image_url: str | None
    status: str
    media: list[dict[str, str]] = field(default_factory=list)
    """Its media parts in the order they were sent: ``{"kind", "url"}``."""

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> Document:
        return cls(
            id=body["id"],
            text=body["text"],
            metadata=body["metadata"],
            image_url=body["image_url"],
            status=body["status"],
            media=list(body.get("media", [])),
        )


@dataclass(frozen=True)
class DocumentPage:
    """A page of a collection's documents, in the order the server keeps them."""

    documents: list[Document]
    next_cursor: str | None
    """The ``cursor`` of the next page; None on the last."""
    raw: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> DocumentPage:
        documents = [Document.from_json(doc) for doc in body["documents"]]
        return cls(documents=documents, next_cursor=body.get("next_cursor"), raw=body)


@dataclass(frozen=True)
class FacetCount:
    value: Any
    count: int


@dataclass(frozen=True)
class Facets:
    """How many documents hold each value of a field: the most frequent first."""

    field: str
    values: list[FacetCount]
    nulls: int
    """Documents without a value for the field."""
    truncated: bool
    """More values were found than were asked for; the rarest are left out."""
    # ``field`` above is this answer's field: the dataclasses function by its full name.
    raw: dict[str, Any] = dataclasses.field(repr=False, compare=False)

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> Facets:
        return cls(
            field=body["field"],
            values=[FacetCount(v["value"], v["count"]) for v in body["values"]],
            nulls=body["nulls"],
            truncated=body["truncated"],
            raw=body,
        )


@dataclass(frozen=True)
class Hit:
    rank: int
    document_id: str
    cosine: float | None  # None: a keyword search (nothing embedded)
    p_yes: float | None
    score: float
    text: str | None
    metadata: dict[str, Any]
    image_url: str | None
    keyword: float | None = None  # the keyword score (keyword and hybrid modes)
    group: Any = None  # the group_by field's value
    segment: dict[str, float] | None = None  # a video's best segment: {"start", "end"} (s)
    media: list[dict[str, str]] = field(default_factory=list)  # {"kind", "url"} of each part

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> Hit:
        return cls(
            rank=body["rank"],
            document_id=body["document_id"],
            cosine=body["cosine"],
            # A partial (recall-only) hit has neither: its score is the recall's.
            p_yes=body.get("p_yes"),
            score=body.get("score", body.get("recall", body["cosine"])),
            text=body["text"],
            metadata=body["metadata"],
            image_url=body["image_url"],
            keyword=body.get("keyword"),
            group=body.get("group"),
            segment=body.get("segment"),
            media=list(body.get("media", [])),
        )


@dataclass(frozen=True)
class SearchResult:
    job_id: str
    status: str
    hits: list[Hit]
    timings: dict[str, float]
    cached: bool
    partial: bool
    raw: dict[str, Any] = field(repr=False, compare=False)

    @property
    def finished(self) -> bool:
        return self.status in FINISHED_QUERY

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> SearchResult:
        return cls(
            job_id=body["id"],
            status=body["status"],
            hits=[Hit.from_json(hit) for hit in body.get("results", [])],
            timings=dict(body.get("timings") or {}),
            cached=bool(body.get("cached")),
            partial=bool(body.get("is_partial")),
            raw=body,
        )
