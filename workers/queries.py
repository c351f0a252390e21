"""The query steps behind the Celery tasks: SQL job state around the recall and rerank
libraries, and the periodic clean-up of what queries leave behind.

Each step reads what it needs by id (job rows, documents, media keys), does its work and
records the outcome on the job row. A failure is recorded on the job, then re-raised.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import timedelta
from operator import itemgetter
from typing import Any, cast

import numpy as np
from sqlalchemy import and_, delete, or_, select
from sqlalchemy.orm import selectinload

from core.contract import Hit, RankedHit, SearchMode, SearchPlan, Segment
from core.metrics import STAGE_SECONDS
from media.kinds import VIDEO
from media.video import frame_at
from queries.cache import ResultCache
from queries.grouping import group_ranking
from queries.keywords import keyword_search
from queries.notices import notify_finished
from queries.views import enrich
from recall.hybrid import dense_hits, example_vector, hybrid_hits, keyword_hits
from recall.index import milvus_name
from recall.instructions import default_instruction
from recall.prompts import Protocol, Query
from rerank.fusion import fuse
from rerank.reranker import RerankCandidate, RerankQuery
from store.audit import expire as expire_audit
from store.states import DocumentStatus, QueryStatus, advance_query
from store.tables import (
    Collection,
    Document,
    DocumentMedia,
    IngestJob,
    OutboxEntry,
    QueryJob,
    utcnow,
)
from store.traffic import mark_queries_active
from store.writes import last_write
from workers.runtime import Runtime

log = logging.getLogger(__name__)


def _finished(job: QueryJob | None) -> bool:
    return job is None or QueryStatus(job.status).finished


def _milvus_collection(rt: Runtime, collection: Collection) -> str:
    return milvus_name(rt.settings.milvus_prefix, collection.storage_name, collection.generation)


# -- queries ---------------------------------------------------------------------------------
@contextmanager
def _recording_failure(rt: Runtime, job_id: str) -> Iterator[None]:
    try:
        yield
    except Exception as exc:
        with rt.sessions.begin() as session:
            job = session.get(QueryJob, job_id)
            if job is not None and advance_query(job, QueryStatus.FAILED, str(exc)):
                ResultCache(rt.redis, rt.settings.result_ttl_seconds).release(job.cache_key)
        notify_finished(rt.redis, job_id)  # after the commit: waiters re-read the row
        raise


def _query_of(rt: Runtime, job: QueryJob) -> Query:
    plan = job.request
    media = rt.media.get(plan.media) if plan.media else None
    if plan.video is not None:
        video = VIDEO.decode(media, rt.settings) if media is not None else None
        return _with_instruction(plan, plan.text, None, video)
    return _with_instruction(plan, plan.text, media)


def _with_instruction(plan: SearchPlan, text: str | None, image: Any, video: Any = None) -> Query:
    """The query of ``text`` and ``image`` (or ``video``) with the plan's instruction, or
    the default one for its modality and the plan's candidates (none for a query of
    examples only: it is not embedded). A text query for videos is in the prompt format of
    U-MARVEL's video evaluation; a video query takes no instruction."""
    protocol: Protocol = "mbeir"
    if video is not None or (image is None and plan.candidates == "video"):
        protocol = "video"
    instruction = plan.instruction
    embedded = bool(text) or image is not None
    if instruction is None and plan.use_default_instruction and video is None and embedded:
        modality = Query(text=text, image=image).modality
        instruction = default_instruction(modality, plan.candidates)
    return Query(text=text, image=image, video=video, instruction=instruction, protocol=protocol)


def _embedding_key(model: str, plan: SearchPlan, query: Query) -> str:
    """Query embeddings are cached per model, text, media (by content hash), instruction and
    prompt format."""
    parts = json.dumps([model, plan.text, plan.media, query.instruction, query.protocol])
    return f"umarvel:qemb:{hashlib.sha256(parts.encode()).hexdigest()}"


def _cached_vector(rt: Runtime, key: str) -> np.ndarray | None:
    if rt.settings.query_embedding_ttl_seconds <= 0:
        return None
    raw = rt.redis.get(key)
    return None if raw is None else np.frombuffer(cast(bytes, raw), dtype=np.float32)


def _store_vector(rt: Runtime, key: str, vector: np.ndarray) -> None:
    if rt.settings.query_embedding_ttl_seconds > 0:
        data = np.asarray(vector, dtype=np.float32).tobytes()
        rt.redis.set(key, data, ex=rt.settings.query_embedding_ttl_seconds)


def cleanup_jobs(rt: Runtime) -> int:
    """Delete query jobs past their lifetime, finished or not (a job whose messages were
    lost never finishes), ingestion jobs finished longer ago than theirs, and audit events
    past their retention; returns how many. Their media go with the next media clean-up."""
    now = utcnow()
    cutoff = now - timedelta(seconds=rt.settings.job_ttl_seconds)
    ingest_cutoff = now - timedelta(seconds=rt.settings.ingest_job_ttl_seconds)
    with rt.sessions.begin() as session:
        queries = session.execute(
            delete(QueryJob).where(
                or_(
                    and_(QueryJob.finished_at.is_not(None), QueryJob.finished_at < cutoff),
                    and_(QueryJob.finished_at.is_(None), QueryJob.created_at < cutoff),
                )
            )
        )
        building = select(Collection.reindex_job_id).where(Collection.reindex_job_id.is_not(None))
        ingests = session.execute(
            delete(IngestJob).where(
                IngestJob.finished_at.is_not(None),
                IngestJob.finished_at < ingest_cutoff,
                IngestJob.id.not_in(
                    select(OutboxEntry.job_id).where(OutboxEntry.job_id.is_not(None))
                ),
                IngestJob.id.not_in(building),
            )
        )
        audited = expire_audit(session, rt.settings.audit_retention_days)
    counts = (queries, ingests)
    return sum(int(getattr(result, "rowcount", 0) or 0) for result in counts) + audited


def cleanup_media(rt: Runtime, batch: int = 500) -> int:
    """Delete stored media that no document and no query job refers to; returns how many.

    Only objects older than ``media_grace_seconds`` are candidates: a request stores its
    images a moment before it commits the rows that refer to them, and storing bytes that
    are there already makes them young again. Both are checked again just before each
    delete, since a request may have sent an image again, or committed a reference to it,
    while the clean-up was looking.
    """
    deleted = 0
    grace = rt.settings.media_grace_seconds
    keys = rt.media.older_than(grace)
    while chunk := list(itertools.islice(keys, batch)):
        unused = set(chunk) - _referenced(rt, chunk)
        old = [key for key in sorted(unused) if (rt.media.age(key) or 0.0) > grace]
        for key in set(old) - _referenced(rt, old):
            rt.media.delete(key)
            deleted += 1
    return deleted


def _referenced(rt: Runtime, keys: list[str]) -> set[str]:
    """Those of ``keys`` that a document's media part or a query job refers to."""
    if not keys:
        return set()
    with rt.sessions() as session:
        used = set(session.scalars(select(DocumentMedia.key).where(DocumentMedia.key.in_(keys))))
        used |= set(
            session.scalars(
                select(QueryJob.query_media_key).where(QueryJob.query_media_key.in_(keys))
            )
        )
    return {key for key in used if key is not None}


def recall_step(rt: Runtime, job_id: str) -> str:
    """Rank the collection's candidates for the query (``SearchPlan.mode``), store them
    on the job; finish it when there is no rerank."""
    mark_queries_active(rt.redis)
    with rt.arrivals["query"].coming() as arrived, _recording_failure(rt, job_id):
        with rt.sessions.begin() as session:
            job = session.get(QueryJob, job_id)
            if job is None or _finished(job):
                return job_id
            advance_query(job, QueryStatus.RECALLING)  # a re-delivered step is recalling already
            collection = session.get_one(Collection, job.collection_id)
            target = _milvus_collection(rt, collection)
            searched = _Searched(
                target,
                collection.id,
                collection.name,
                collection.recall_model,
                dict(collection.metadata_fields),
                last_write(rt.redis, target),
            )
            plan = job.request
            query = _query_of(rt, job)
        timings: dict[str, float] = {}
        vector = None
        if plan.embeds_query:
            started = time.perf_counter()
            vector = _query_vector(rt, searched, plan, query, arrived)
            timings["embed"] = time.perf_counter() - started
        arrived()
        hits = _recall(rt, searched, plan, vector, timings)
        for stage, seconds in timings.items():
            STAGE_SECONDS.labels(stage).observe(seconds)
        with rt.sessions.begin() as session:
            job = session.get_one(QueryJob, job_id)
            if _finished(job):
                return job_id
            job.recall_hits = hits
            job.timings = {**job.timings, **timings}
            finished = not (plan.rerank.enabled and hits)
            if finished:
                _finish(rt, session, job, [_unscored(h) for h in hits])
            else:
                advance_query(job, QueryStatus.RERANKING)
        if finished:
            notify_finished(rt.redis, job_id)
    _log_step("recall.search", job_id, searched.name, timings)
    return job_id


@dataclass(frozen=True)
class _Searched:
    """What the recall step needs of the collection, read with the job."""

    target: str  # its Milvus collection
    id: int
    name: str
    model: str
    fields: dict[str, str]
    written_at: int | None  # the newest write its searches must see (store.writes)


def _query_vector(
    rt: Runtime, searched: _Searched, plan: SearchPlan, query: Query, arrived: Callable[[], None]
) -> np.ndarray:
    """The vector the dense search looks near: the query's embedding (cached in Redis),
    moved towards and away from the stored vectors of the plan's examples."""
    vector = None
    if plan.text is not None or plan.media is not None:
        cache_key = _embedding_key(searched.model, plan, query)
        vector = _cached_vector(rt, cache_key)
        if vector is None:
            if query.video is not None:  # sampled here: decoding never holds the batcher
                query = replace(query, video=rt.embedder(searched.model).sample(query.video))
            batcher = rt.query_batcher(searched.model)
            limit = rt.settings.task_time_limit
            vector = batcher.submit([query], timeout=limit, arrived=arrived)[0]
            _store_vector(rt, cache_key, vector)
    if plan.examples is None:
        assert vector is not None  # the API refuses a query with nothing to embed
        return vector
    examples = plan.examples
    wanted = [*examples.like, *examples.unlike]
    stored = rt.index.vectors(searched.target, wanted, searched.written_at)
    missing = [doc for doc in wanted if doc not in stored]
    if missing:
        raise LookupError(f"examples without a stored vector (deleted, or not indexed): {missing}")
    like = [stored[doc] for doc in examples.like]
    return example_vector(vector, like, [stored[doc] for doc in examples.unlike])


def _recall(
    rt: Runtime,
    searched: _Searched,
    plan: SearchPlan,
    vector: np.ndarray | None,
    timings: dict[str, float],
) -> list[Hit]:
    """The plan's ranked candidates, ``plan.depth`` of them, its examples left out (unless
    it keeps them)."""
    examples = plan.examples
    excluded = set() if examples is None or examples.include else {*examples.like, *examples.unlike}
    depth = plan.depth + len(excluded)
    dense: list[tuple[str, float]] = []
    spans: dict[str, Segment] = {}
    if vector is not None:
        started = time.perf_counter()
        expression = rt.index.expression(plan.filter, searched.fields)
        found = rt.index.search(
            searched.target, vector, depth, expression, written_at=searched.written_at
        )
        dense = [(hit.document_id, hit.score) for hit in found if hit.document_id not in excluded]
        spans = {
            hit.document_id: Segment(start=hit.span[0], end=hit.span[1])
            for hit in found
            if hit.span is not None
        }
        timings["search"] = time.perf_counter() - started
    if plan.mode == SearchMode.DENSE:
        return _with_segments(dense_hits(dense)[: plan.depth], spans)
    started = time.perf_counter()
    with rt.sessions() as session:
        window = rt.settings.keyword_window or None
        keyword = keyword_search(
            session, searched.id, plan.text, depth, plan.filter, searched.fields, window
        )
    keyword = [(doc, score) for doc, score in keyword if doc not in excluded]
    timings["keyword"] = time.perf_counter() - started
    if plan.mode == SearchMode.KEYWORD:
        return keyword_hits(keyword)[: plan.depth]
    assert vector is not None
    assert plan.fusion is not None
    found_dense = {doc for doc, _ in dense}
    missing = [doc for doc, _ in keyword if doc not in found_dense]
    # A keyword match the dense search missed gets the cosine of its nearest vector (a
    # video's best segment, whose span it then carries).
    cosines: dict[str, float] = {}
    for doc, rows in rt.index.segment_vectors(
        searched.target, missing, searched.written_at
    ).items():
        cosine, span = max(
            ((_cosine(vector, stored), span) for span, stored in rows), key=itemgetter(0)
        )
        cosines[doc] = cosine
        if span is not None:
            spans[doc] = Segment(start=span[0], end=span[1])
    return _with_segments(hybrid_hits(dense, keyword, cosines, plan.fusion, plan.depth), spans)


def _with_segments(hits: list[Hit], spans: dict[str, Segment]) -> list[Hit]:
    """``hits`` with the time span of each video's segment that the dense search found."""
    return [
        hit.model_copy(update={"segment": spans[hit.document_id]})
        if hit.document_id in spans
        else hit
        for hit in hits
    ]


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    norms = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(np.dot(a, b) / norms) if norms > 0 else 0.0


def rerank_step(rt: Runtime, job_id: str) -> str:
    """Score the first ``rerank.k`` recall hits with the reranker and fuse; the hits past
    them keep the recall's order below. Store the final ranking and cache it."""
    mark_queries_active(rt.redis)
    with rt.arrivals["pairs"].coming() as arrived, _recording_failure(rt, job_id):
        with rt.sessions.begin() as session:
            job = session.get(QueryJob, job_id)
            if job is None or job.status != QueryStatus.RERANKING:
                return job_id
            plan = job.request
            collection_name = session.get_one(Collection, job.collection_id).name
            hits = list(job.recall_hits or [])
            head = [h.document_id for h in hits[: plan.rerank.k]]
            like = [plan.examples.like[0]] if plan.examples is not None else []
            docs = _indexed(session, job.collection_id, [*head, *like])
            query = _query_of(rt, job)
        # Deleted since recall, or not indexed at its current revision (queries.views): skip.
        scored = [h for h in hits[: plan.rerank.k] if h.document_id in docs]
        started = time.perf_counter()
        candidates = [_rerank_candidate(rt, docs[h.document_id], h) for h in scored]
        rerank_query = RerankQuery(query.text, query.image, query.instruction)
        if query.text is None and query.image is None and like and like[0] in docs:
            # The query side: the first example (a video as its middle frame).
            example = _rerank_candidate(rt, docs[like[0]], as_image=True)
            query = _with_instruction(plan, example.text, example.image)
            rerank_query = RerankQuery(query.text, query.image, query.instruction)
        pairs = [(rerank_query, candidate) for candidate in candidates]
        batcher = rt.pair_batcher(rt.settings.rerank_model)
        p_yes = batcher.submit(pairs, timeout=rt.settings.task_time_limit, arrived=arrived)
        by_id = {h.document_id: h for h in scored}
        fused = fuse(
            [h.document_id for h in scored],
            [h.first_stage for h in scored],
            p_yes,
            plan.rerank.weight,
        )
        seconds = time.perf_counter() - started
        STAGE_SECONDS.labels("rerank").observe(seconds)
        results = [
            RankedHit(**by_id[f.document_id].model_dump(), p_yes=f.p_yes, score=f.score)
            for f in fused
        ]
        results += [_unscored(h) for h in hits[plan.rerank.k :]]
        with rt.sessions.begin() as session:
            job = session.get_one(QueryJob, job_id)
            if _finished(job):
                return job_id
            job.timings = {**job.timings, "rerank": seconds}
            _finish(rt, session, job, results)
        notify_finished(rt.redis, job_id)
    _log_step("rerank.score", job_id, collection_name, {"rerank": seconds})
    return job_id


def _unscored(hit: Hit) -> RankedHit:
    """A hit the reranker did not score: ranked by the recall's score."""
    return RankedHit(**hit.model_dump(), p_yes=None, score=hit.first_stage)


def _indexed(session: Any, collection_id: int, ids: list[str]) -> dict[str, Document]:
    rows = session.scalars(
        select(Document)
        .where(
            Document.collection_id == collection_id,
            Document.external_id.in_(ids),
            Document.status == DocumentStatus.INDEXED,
        )
        .options(selectinload(Document.media))
    )
    return {doc.external_id: doc for doc in rows}


def _rerank_candidate(
    rt: Runtime, doc: Document, hit: Hit | None = None, *, as_image: bool = False
) -> RerankCandidate:
    """The document as the reranker sees it: its text and its image or video. A video is
    the hit's segment (the whole video without one), sampled here so that decoding never
    holds the reranker's batcher; a reranker without video input (or ``as_image``: a
    query's side takes no video) sees the segment's middle frame as an image."""
    image = rt.media.get(doc.image_key) if doc.image_key else None
    video_key = next((part.key for part in doc.media if part.kind == VIDEO.name), None)
    if image is not None or video_key is None:
        return RerankCandidate(text=doc.text, image=image)
    video = VIDEO.decode(rt.media.get(video_key), rt.settings)
    segment = hit.segment if hit is not None else None
    start, end = (segment.start, segment.end) if segment else (0.0, video.info.end)
    scorer = rt.reranker(rt.settings.rerank_model)
    if as_image or not scorer.takes_videos:
        return RerankCandidate(text=doc.text, image=frame_at(video, (start + end) / 2))
    first = min(round(start * video.info.fps), video.info.frames - 2)
    last = max(min(round(end * video.info.fps), video.info.frames), first + 2)
    clip = video if (first, last) == (0, video.info.frames) else video.segment(first, last)
    return RerankCandidate(text=doc.text, video=scorer.sample(clip))


def _log_step(task: str, job_id: str, collection: str, timings: dict[str, float]) -> None:
    fields = {"task": task, "job_id": job_id, "collection": collection}
    log.info("step done %s", _timings_text(timings), extra={**fields, "ms": _ms(timings)})


def _ms(timings: dict[str, float]) -> float:
    return round(sum(timings.values()) * 1000, 1)


def _timings_text(timings: dict[str, float]) -> str:
    return " ".join(f"{stage}={seconds * 1000:.1f}ms" for stage, seconds in timings.items())


def _finish(rt: Runtime, session: Any, job: QueryJob, results: list[RankedHit]) -> None:
    """Store the final ranking (grouped, when the plan groups), cache it enriched with its
    documents, tell the waiters."""
    if job.request.group is not None:
        results = group_ranking(session, job.collection_id, results, job.request.group)
    job.results = results
    advance_query(job, QueryStatus.DONE)
    cache = ResultCache(rt.redis, rt.settings.result_ttl_seconds)
    payload = {
        "job_id": job.id,
        "created_at": job.created_at.isoformat(),
        "finished_at": job.finished_at.isoformat() if job.finished_at else None,
        "results": enrich(session, job.collection_id, results),
        "timings": job.timings,
    }
    cache.put(job.cache_key, payload)
    cache.release(job.cache_key)
