"""Writing documents' vectors so that the newest revision always wins.

The same document can be in two chunks at once (sent twice), a reindex chunk can read
content that an ingestion then replaces, and a document can be deleted, or deleted and
created again, while it is embedded. No lock is held across the Milvus calls; instead
each writer checks, after its upsert, that what it wrote is still each document's current
revision, and repairs what is not: it embeds the current content and writes again, or
removes the vector of a document that is gone. The last write to any document is made by a
writer that checked afterwards, so no stale vector survives. Each write's Milvus timestamp
is recorded in Redis (``store.writes``) before the caller reports anything indexed, for
the searches that must see it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import case, select
from sqlalchemy.orm import selectinload

from core.errors import InvalidRequest, NotFound, PayloadTooLarge, Unavailable
from ingestion.resources import Resources
from ingestion.retry import is_transient, reason
from media.kinds import VIDEO
from media.video import Video, segment_bounds
from recall.prompts import Candidate
from recall.service import IndexDocument, RecallService
from store.states import DocumentStatus
from store.tables import Collection, Document
from store.writes import record_write

if TYPE_CHECKING:
    from core.settings import Settings

MAX_ROUNDS = 5

# Embeddings of one chunk: (model, document row id, revision, segmented) -> the document's
# rows (one, or a long video's segments) and their vectors. A chunk written to two
# generations with the same model embeds each document once.
VectorCache = dict[tuple[str, int, int, bool], tuple[list[IndexDocument], np.ndarray]]


@dataclass(frozen=True)
class Snapshot:
    """A document's content as one revision."""

    row_id: int
    external_id: str
    revision: int
    text: str | None
    image_key: str | None
    metadata: dict[str, Any]
    video_key: str | None = None  # its first video part: what the recall model embeds

    @classmethod
    def of(cls, doc: Document) -> Snapshot:
        """``doc``'s content; load its media parts with it (``with_media``)."""
        video = next((part.key for part in doc.media if part.kind == VIDEO.name), None)
        return cls(
            doc.id,
            doc.external_id,
            doc.revision,
            doc.text,
            doc.image_key,
            dict(doc.doc_metadata),
            video,
        )


def with_media(statement: Any) -> Any:
    """``statement`` (a select of documents) loading their media parts in one more query."""
    return statement.options(selectinload(Document.media))


@dataclass
class Written:
    current: list[Snapshot] = field(default_factory=list)  # written, and still current
    failed: dict[int, tuple[Snapshot, str]] = field(default_factory=dict)  # cannot be embedded
    collection_gone: bool = False


def write(
    rt: Resources,
    collection_id: int,
    target: str,
    model: str,
    fields: dict[str, str],
    snapshots: list[Snapshot],
    cache: VectorCache,
) -> Written:
    """Embed ``snapshots`` with ``model`` and upsert them into the Milvus collection
    ``target``; repair what changed meanwhile. Raises on a transient failure (the caller's
    work is retried whole: upserts are idempotent)."""
    written = Written()
    service = RecallService(rt.embedder(model), rt.index, rt.candidate_encoder(model))
    # Collections created since videos are segmented are; an older one takes whole clips.
    segmented = not rt.index.exists(target) or rt.index.segmented(target)
    pending = snapshots
    for _ in range(MAX_ROUNDS):
        if not pending:
            return written
        ready = _embed(rt, service, (model, segmented), pending, cache, written)
        embedded = [cache[(model, s.row_id, s.revision, segmented)] for s in ready]
        documents = [row for rows, _ in embedded for row in rows]
        vectors = np.concatenate([v for _, v in embedded]) if embedded else np.zeros((0, 1))
        record_write(rt.redis, target, service.upsert(target, documents, vectors, fields))
        # An older revision's vector must not stand for one that cannot be embedded.
        unembeddable = [snap for snap, _ in written.failed.values() if snap in pending]
        pending = _check(rt, collection_id, target, ready, written, unembeddable)
        if written.collection_gone:
            return written
    raise Unavailable(f"documents kept changing while being written to {target}; retrying")


def _embed(
    rt: Resources,
    service: RecallService,
    how: tuple[str, bool],
    pending: list[Snapshot],
    cache: VectorCache,
    written: Written,
) -> list[Snapshot]:
    """The snapshots whose vectors are in ``cache`` now; the others go to ``written.failed``.
    ``how``: the model, and whether a long video is cut into segments."""
    model, segmented = how
    todo: list[tuple[Snapshot, list[IndexDocument]]] = []
    for snap in pending:
        if (model, snap.row_id, snap.revision, segmented) in cache:
            continue
        try:
            image = rt.media.get(snap.image_key) if snap.image_key else None
            # Decoded here, before the model's batcher: a video never holds it up.
            video = None
            if snap.video_key:
                video = VIDEO.decode(rt.media.get(snap.video_key), rt.settings)
        except (NotFound, InvalidRequest, PayloadTooLarge) as exc:  # gone, or undecodable
            written.failed[snap.row_id] = (snap, reason(exc))
            continue
        parts = _documents(snap, image, video, rt.settings if segmented else None)
        todo.append((snap, parts))
    vectors, errors = service.embed_each([part for _, parts in todo for part in parts])
    transient = [error for error in errors.values() if is_transient(error)]
    if transient:  # not the documents' fault: the whole write is tried again later
        raise transient[0]
    position = 0
    for snap, parts in todo:
        mine = range(position, position + len(parts))
        position += len(parts)
        failure = next((errors[p] for p in mine if p in errors), None)
        if failure is not None:  # one segment that cannot be embedded fails its video
            written.failed[snap.row_id] = (snap, reason(failure))
        else:
            cache[(model, snap.row_id, snap.revision, segmented)] = (parts, vectors[mine])
    return [s for s in pending if (model, s.row_id, s.revision, segmented) in cache]


def _documents(
    snap: Snapshot, image: Any, video: Video | None, segments: Settings | None
) -> list[IndexDocument]:
    """What ``snap`` is embedded as: one item, or with ``segments`` (the settings) a video
    longer than ``UMARVEL_VIDEO_SEGMENT_SECONDS`` as one item per segment, each with the
    document's text. A video's items carry their time spans."""
    if video is None:
        candidate = Candidate(text=snap.text, image=image)
        return [IndexDocument(snap.external_id, candidate, snap.metadata)]
    bounds = [(0, video.info.frames)]
    if segments is not None:
        info = video.info
        window, stride = segments.video_segment_seconds, segments.video_segment_stride
        bounds = segment_bounds(info.frames, info.fps, window, stride)
    parts = []
    for number, (start, stop) in enumerate(bounds):
        clip = video if len(bounds) == 1 else video.segment(start, stop)
        candidate = Candidate(text=snap.text, video=clip)
        span = (clip.info.start, clip.info.end)
        parts.append(IndexDocument(snap.external_id, candidate, snap.metadata, number, span))
    return parts


def _check(
    rt: Resources,
    collection_id: int,
    target: str,
    ready: list[Snapshot],
    written: Written,
    unembeddable: list[Snapshot],
) -> list[Snapshot]:
    """After an upsert: record what is still current; remove the vectors of what was
    deleted, and of what cannot be embedded while that is still the current revision (a
    newer revision's writer owns the vector then); returns the current content of what
    changed, to write again."""
    external_ids = [snap.external_id for snap in [*ready, *unembeddable]]
    gone: list[str] = []
    with rt.sessions() as session:
        if session.get(Collection, collection_id) is None:
            written.collection_gone = True
        rows = {
            doc.external_id: doc
            for doc in session.scalars(
                with_media(
                    select(Document).where(
                        Document.collection_id == collection_id,
                        Document.external_id.in_(external_ids),
                    )
                )
            )
        }
        again: list[Snapshot] = []
        for snap in unembeddable:
            row = rows.get(snap.external_id)
            if row is None or (row.id, row.revision) == (snap.row_id, snap.revision):
                gone.append(snap.external_id)
        for snap in ready:
            row = rows.get(snap.external_id)
            if row is None or (
                row.status == DocumentStatus.FAILED and row.revision != snap.revision
            ):
                gone.append(snap.external_id)
            elif (row.id, row.revision) == (snap.row_id, snap.revision):
                written.current.append(snap)
            else:
                again.append(Snapshot.of(row))
    if written.collection_gone:  # deleted meanwhile: our upsert may have created it again
        if rt.index.exists(target):
            rt.index.drop(target)
        return []
    if gone:
        record_write(rt.redis, target, rt.index.delete(target, gone))
        rt.index.flush(target)
        mine = {s.external_id: s for s in [*ready, *unembeddable]}
        again += _written_since(rt, collection_id, gone, mine)
    return again


def _written_since(
    rt: Resources, collection_id: int, deleted: list[str], ours: dict[str, Snapshot]
) -> list[Snapshot]:
    """Documents of ``deleted`` that a newer revision (or a new document) took over while
    their vectors were being deleted: their writer may have written before the delete, so
    their current content is written again."""
    with rt.sessions() as session:
        rows = session.scalars(
            with_media(
                select(Document).where(
                    Document.collection_id == collection_id,
                    Document.external_id.in_(deleted),
                    Document.status != DocumentStatus.FAILED,
                )
            )
        )
        return [
            Snapshot.of(row)
            for row in rows
            if (mine := ours.get(row.external_id)) is None
            or (row.id, row.revision) != (mine.row_id, mine.revision)
        ]


def at_least(generation: int) -> Any:
    """SQL for "the document's generation, raised to ``generation``" (never lowered)."""
    return case((Document.generation < generation, generation), else_=Document.generation)
