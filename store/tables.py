"""SQLAlchemy models: the metadata that lives in SQL.

Alembic (``migrations/``) owns the schema; these classes are its source of truth.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from pydantic import TypeAdapter
from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship, validates

from core.contract import Hit, RankedHit, SearchMode, SearchPlan
from store.keywords import search_text
from store.states import DocumentStatus, JobKind, JobState, OutboxKind, QueryStatus, utcnow

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every backend (SQLite stores no offset)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime: use timezone-aware UTC values")
        return value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value


class State(TypeDecorator[StrEnum]):
    """A member of ``enum``, stored as its value: a string outside the enum is refused."""

    impl = String(16)
    cache_ok = True

    def __init__(self, enum: type[StrEnum]) -> None:
        super().__init__()
        self.enum = enum

    def process_bind_param(self, value: Any, dialect: Any) -> str | None:
        return None if value is None else self.enum(value).value

    def process_result_value(self, value: str | None, dialect: Any) -> StrEnum | None:
        return None if value is None else self.enum(value)


class Typed(TypeDecorator[Any]):
    """JSON holding a typed record (``core.contract``): validated on the way in, the
    record again on the way out."""

    impl = JSON
    cache_ok = True

    def __init__(self, kind: Any) -> None:
        super().__init__()
        self.kind = kind
        self._adapter: TypeAdapter[Any] = TypeAdapter(kind)

    def process_bind_param(self, value: Any, dialect: Any) -> Any:
        if value is None:
            return None
        return self._adapter.dump_python(self._adapter.validate_python(value), mode="json")

    def process_result_value(self, value: Any, dialect: Any) -> Any:
        return None if value is None else self._adapter.validate_python(value)


def new_id() -> str:
    return uuid.uuid4().hex


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class Collection(Base):
    __tablename__ = "collections"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    # Unique per creation: a collection dropped and created again never shares cache keys.
    uid: Mapped[str] = mapped_column(String(32), default=new_id)
    description: Mapped[str] = mapped_column(Text, default="")
    recall_model: Mapped[str] = mapped_column(String(512))
    metric: Mapped[str] = mapped_column(String(16), default="COSINE")
    rerank_enabled: Mapped[bool] = mapped_column(default=True)
    rerank_k: Mapped[int] = mapped_column(Integer)
    rerank_weight: Mapped[float]
    metadata_fields: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # How its queries search when they do not say (core.contract.SearchMode).
    search_mode: Mapped[SearchMode] = mapped_column(
        State(SearchMode), default=SearchMode.DENSE, server_default=SearchMode.DENSE.value
    )
    # The Milvus collection currently served is <prefix><storage_name>_g<generation>.
    generation: Mapped[int] = mapped_column(Integer, default=1)
    # While a reindex builds the next generation (with this model) beside the served one.
    building_generation: Mapped[int | None] = mapped_column(Integer)
    building_model: Mapped[str | None] = mapped_column(String(512))
    reindex_job_id: Mapped[str | None] = mapped_column(String(32))
    # Bumped by every change that becomes visible to search; part of every cache key.
    version: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    documents: Mapped[list[Document]] = relationship(
        back_populates="collection", cascade="all, delete-orphan", passive_deletes=True
    )

    @property
    def storage_name(self) -> str:
        """The stem of its Milvus collections: the name and a piece of the per-creation uid,
        so a collection deleted and created again never meets the old one's vectors."""
        return f"{self.name}_{self.uid[:12]}"

    def end_build(self) -> None:
        """Forget the reindex in progress (it switched, failed or was never queued)."""
        self.building_generation = self.building_model = self.reindex_job_id = None

    def write_targets(self) -> list[tuple[int, str]]:
        """(generation, model) pairs that new writes go to: the served one, and the one
        being built, if any."""
        targets = [(self.generation, self.recall_model)]
        if self.building_generation is not None and self.building_model is not None:
            targets.append((self.building_generation, self.building_model))
        return targets


class Document(Base):
    __tablename__ = "documents"
    __table_args__ = (
        UniqueConstraint("collection_id", "external_id"),
        # A collection's documents in id order: the keyset pages of a listing or an export.
        Index("ix_documents_collection_id_id", "collection_id", "id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    collection_id: Mapped[int] = mapped_column(
        ForeignKey("collections.id", ondelete="CASCADE"), index=True
    )
    external_id: Mapped[str] = mapped_column(String(256))
    text: Mapped[str | None] = mapped_column(Text)
    # Its text's terms for keyword search (store.keywords), kept in step with ``text``.
    search_text: Mapped[str | None] = mapped_column(Text)
    # The key of its image part (``media``), the one the recall model embeds. Indexed: the
    # media route and the media clean-up look documents up by image.
    image_key: Mapped[str | None] = mapped_column(String(128), index=True)
    doc_metadata: Mapped[dict[str, Any]] = mapped_column("metadata", default=dict)
    # Bumped by every write of new content: a vector is kept only for the current revision.
    revision: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    # The ingestion job that last wrote this document; its progress counts these rows.
    ingest_job_id: Mapped[str | None] = mapped_column(String(32), index=True)
    # The newest generation whose Milvus collection holds this document's current content.
    generation: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # Pending until its vector is visible to search, then indexed; failed keeps `error`.
    status: Mapped[DocumentStatus] = mapped_column(
        State(DocumentStatus), default=DocumentStatus.PENDING
    )
    error: Mapped[str | None] = mapped_column(Text)
    # Failed for a reason outside the document (an outage that outlasted the retry budget),
    # not for its content: reconciliation queues it again once Milvus answers.
    retryable: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    collection: Mapped[Collection] = relationship(back_populates="documents")

    @validates("text")
    def _keep_search_text(self, _key: str, value: str | None) -> str | None:
        self.search_text = search_text(value)
        return value

    # Its media parts in the order they were sent, replaced as a whole by a new revision.
    media: Mapped[list[DocumentMedia]] = relationship(
        order_by="DocumentMedia.position",
        cascade="all, delete-orphan",
        passive_deletes=True,
    )


class DocumentMedia(Base):
    """One media part of a document: its kind (``media.kinds``) and its stored object."""

    __tablename__ = "document_media"

    document_id: Mapped[int] = mapped_column(
        ForeignKey("documents.id", ondelete="CASCADE"), primary_key=True
    )
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    # Indexed: the media route and the media clean-up look parts up by key.
    key: Mapped[str] = mapped_column(String(128), index=True)


class IngestJob(Base):
    __tablename__ = "ingest_jobs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    collection_id: Mapped[int] = mapped_column(
        ForeignKey("collections.id", ondelete="CASCADE"), index=True
    )
    kind: Mapped[JobKind] = mapped_column(
        State(JobKind), default=JobKind.INGEST, server_default="ingest"
    )
    # The generation a reindex job builds (never reused, even after a failed attempt).
    generation: Mapped[int | None] = mapped_column(Integer)
    state: Mapped[JobState] = mapped_column(State(JobState), default=JobState.QUEUED)
    total: Mapped[int] = mapped_column(Integer, default=0)
    done: Mapped[int] = mapped_column(Integer, default=0)
    failed: Mapped[int] = mapped_column(Integer, default=0)
    # Items refused at submission (never stored); `failed` adds documents that failed later.
    rejected: Mapped[int] = mapped_column(Integer, default=0)
    errors: Mapped[list[Any]] = mapped_column(default=list)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class OutboxEntry(Base):
    """Work accepted but not yet confirmed by Milvus: written in the same transaction as the
    rows it is about, deleted in the transaction that records the work done. The sweep
    sends again every entry whose message was lost (``ingestion.sweep``)."""

    __tablename__ = "outbox"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[OutboxKind] = mapped_column(State(OutboxKind))
    # The ingestion or reindex job it belongs to; gone with the job (and its collection).
    job_id: Mapped[str | None] = mapped_column(
        ForeignKey("ingest_jobs.id", ondelete="CASCADE"), index=True
    )
    payload: Mapped[dict[str, Any]] = mapped_column(default=dict)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # Not sent before this (a retry's backoff, a delayed drop).
    not_before: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    last_error: Mapped[str | None] = mapped_column(Text)
    # Since when its work has kept failing for a retryable reason (none: it has not failed);
    # retried until UMARVEL_INGEST_RETRY_SECONDS past this (ingestion.engine).
    failing_since: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class QueryJob(Base):
    __tablename__ = "query_jobs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    collection_id: Mapped[int] = mapped_column(
        ForeignKey("collections.id", ondelete="CASCADE"), index=True
    )
    status: Mapped[QueryStatus] = mapped_column(State(QueryStatus), default=QueryStatus.QUEUED)
    # What the steps run; its digest is part of cache_key (core.contract.SearchPlan).
    request: Mapped[SearchPlan] = mapped_column(Typed(SearchPlan))
    query_media_key: Mapped[str | None] = mapped_column(String(128), index=True)
    # The key that submitted the query: its image is served to that key only.
    api_key_id: Mapped[int | None] = mapped_column(
        ForeignKey("api_keys.id", ondelete="SET NULL"), index=True
    )
    cache_key: Mapped[str] = mapped_column(String(255), index=True)
    recall_hits: Mapped[list[Hit] | None] = mapped_column(Typed(list[Hit]))
    results: Mapped[list[RankedHit] | None] = mapped_column(Typed(list[RankedHit]))
    timings: Mapped[dict[str, Any]] = mapped_column(default=dict)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class QueryJobKey(Base):
    """A key that asked for a query job. Identical queries share one job; each key that
    asked keeps its own attachment, and the job is cancelled (or deleted) only when no key
    still wants it. ``api_key_id`` 0: auth is disabled (one anonymous principal)."""

    __tablename__ = "query_job_keys"

    job_id: Mapped[str] = mapped_column(
        ForeignKey("query_jobs.id", ondelete="CASCADE"), primary_key=True
    )
    api_key_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    withdrawn: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    prefix: Mapped[str] = mapped_column(String(16))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    scopes: Mapped[list[Any]] = mapped_column(default=list)
    collections: Mapped[list[Any] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # This key's quotas (api.quotas); None: the deployment's default (UMARVEL_KEY_*).
    rate_limit: Mapped[float | None] = mapped_column(Float)
    max_waiting: Mapped[int | None] = mapped_column(Integer)
    max_queued: Mapped[int | None] = mapped_column(Integer)


class AuditEvent(Base):
    """One admin action or one refused request (store.audit): who, what, on what, how it
    ended, and when."""

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    key_id: Mapped[int | None] = mapped_column(Integer, index=True)  # None: no valid key
    key_prefix: Mapped[str | None] = mapped_column(String(16))
    action: Mapped[str] = mapped_column(String(64), index=True)
    target: Mapped[str | None] = mapped_column(String(600))
    outcome: Mapped[str] = mapped_column(String(16))  # store.audit.Outcome
    status: Mapped[int | None] = mapped_column(Integer)  # the HTTP status, for API actions
    detail: Mapped[str | None] = mapped_column(Text)
