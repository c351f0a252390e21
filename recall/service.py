"""The recall service: embed, then search or upsert. No Flask, no Celery, no SQL."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from recall.index import (
    DOCUMENT_FIELD,
    END_FIELD,
    PK_FIELD,
    SEGMENT_FIELD,
    START_FIELD,
    VECTOR_FIELD,
    IndexHit,
    MilvusIndex,
    segment_key,
)
from recall.methods import RecallEmbedder
from recall.prompts import Candidate, Query


@dataclass(frozen=True)
class IndexDocument:
    """What one vector is made of: a document, or one segment of a long video."""

    document_id: str
    candidate: Candidate
    metadata: dict[str, Any] = field(default_factory=dict)
    segment: int = 0
    span: tuple[float, float] | None = None  # the segment's start and end, in seconds

    @property
    def key(self) -> str:
        return segment_key(self.document_id, self.segment)


@dataclass(frozen=True)
class RecallResult:
    hits: list[IndexHit]
    timings: dict[str, float]
    vector: np.ndarray  # the query's embedding, for callers that cache it


class RecallService:
    def __init__(
        self,
        embedder: RecallEmbedder,
        index: MilvusIndex,
        encode_candidates: Callable[[list[Candidate]], np.ndarray] | None = None,
    ) -> None:
        """``encode_candidates`` replaces ``embedder.encode_candidates`` (a worker routes it
        through its model's batcher)."""
        self.embedder = embedder
        self.index = index
        self._encode = encode_candidates or embedder.encode_candidates

    def search(
        self,
        collection: str,
        query: Query,
        top_k: int,
        expression: str | None = None,
        vector: np.ndarray | None = None,
        written_at: int | None = None,
    ) -> RecallResult:
        """Embed ``query`` (unless its ``vector`` is given) and search ``collection``, seeing
        every write up to ``written_at`` (``MilvusIndex.search``)."""
        started = time.perf_counter()
        if vector is None:
            vector = self.embedder.encode_queries([query])[0]
        embedded = time.perf_counter()
        hits = self.index.search(collection, vector, top_k, expression, written_at=written_at)
        done = time.perf_counter()
        timings = {"embed": embedded - started, "search": done - embedded}
        return RecallResult(hits, timings, vector)

    def index_documents(
        self,
        collection: str | Sequence[str],
        documents: Sequence[IndexDocument],
        metadata_fields: dict[str, str] | None = None,
    ) -> dict[str, float]:
        """Embed ``documents`` once and upsert them into each collection (created if
        missing), then flush."""
        started = time.perf_counter()
        vectors = self.embed(documents)
        embedded = time.perf_counter()
        for target in [collection] if isinstance(collection, str) else collection:
            self.upsert(target, documents, vectors, metadata_fields)
        return {"embed": embedded - started, "upsert": time.perf_counter() - embedded}

    def embed(self, documents: Sequence[IndexDocument]) -> np.ndarray:
        return self._encode([d.candidate for d in documents])

    def embed_each(
        self, documents: Sequence[IndexDocument]
    ) -> tuple[np.ndarray, dict[int, Exception]]:
        """Embed ``documents``; when a batch fails, halve it until the documents that fail
        alone are found, so one bad document never fails the others. Returns the vectors
        (zero rows for failed documents) and ``{position: error}`` of the failed ones."""
        vectors = np.zeros((len(documents), self.embedder.dim), dtype=np.float32)
        failed: dict[int, Exception] = {}
        pending = [list(range(len(documents)))] if documents else []
        while pending:
            positions = pending.pop()
            try:
                vectors[positions] = self.embed([documents[i] for i in positions])
            except Exception as exc:
                if len(positions) == 1:
                    failed[positions[0]] = exc
                else:
                    half = len(positions) // 2
                    pending += [positions[half:], positions[:half]]
        return vectors, failed

    def upsert(
        self,
        collection: str,
        documents: Sequence[IndexDocument],
        vectors: np.ndarray,
        metadata_fields: dict[str, str] | None = None,
    ) -> int | None:
        """Upsert embedded documents (or segments) into ``collection`` (created if
        missing), then flush; returns the write's timestamp (``MilvusIndex.upsert``). In a
        collection created before segments, a document is one row: segments are refused."""
        fields = metadata_fields or {}
        self.index.create(collection, self.embedder.dim, fields)
        segmented = self.index.segmented(collection)
        rows = []
        for document, vector in zip(documents, vectors, strict=True):
            row: dict[str, Any] = {PK_FIELD: document.key, VECTOR_FIELD: vector.tolist()}
            if segmented:
                start, end = document.span or (0.0, 0.0)
                row |= {
                    DOCUMENT_FIELD: document.document_id,
                    SEGMENT_FIELD: document.segment,
                    START_FIELD: start,
                    END_FIELD: end,
                }
            elif document.segment:
                raise ValueError(f"{collection} holds one vector a document: no segments")
            for name in fields:
                row[name] = document.metadata.get(name)
            rows.append(row)
        written = self.index.upsert(collection, rows, fields)
        if segmented:  # a revision with fewer segments than the last leaves none behind
            counts: dict[str, int] = {}
            for document in documents:
                counts[document.document_id] = counts.get(document.document_id, 0) + 1
            deleted = self.index.delete_stale(collection, counts)
            written = max(written or 0, deleted or 0) or None
        # Unflushed rows search ~10x slower on milvus-lite; flushing makes them durable too.
        self.index.flush(collection)
        return written
