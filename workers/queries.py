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
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, cast

import numpy as np
from sqlalchemy import and_, delete, or_, select

from core.contract import Hit, RankedHit, SearchPlan
from core.metrics import STAGE_SECONDS
from queries.cache import ResultCache
from queries.notices import notify_finished
from queries.views import enrich
from recall.index import milvus_name
from recall.instructions import default_instruction
from recall.prompts import Query
from recall.service import RecallService
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


def _query_of(rt: Runtime, job: QueryJob) -> tuple[Query, str]:
    plan = job.request
    image = rt.media.get(job.query_image_key) if job.query_image_key else None
    query = Query(text=plan.text, image=image)
    instruction = plan.instruction
    if instruction is None and plan.use_default_instruction:
        instruction = default_instruction(query.modality)
    return Query(text=query.text, image=image, instruction=instruction), query.modality


def _embedding_key(model: str, plan: SearchPlan, instruction: str | None) -> str:
    """Query embeddings are cached per model, text, image (by content hash) and instruction."""
    parts = json.dumps([model, plan.text, plan.image, instruction])
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
                select(QueryJob.query_image_key).where(QueryJob.query_image_key.in_(keys))
            )
        )
    return {key for key in used if key is not None}


def recall_step(rt: Runtime, job_id: str) -> str:
    """Embed the query, search Milvus, store the hits on the job; finish it without rerank."""
    mark_queries_active(rt.redis)
    with rt.arrivals["query"].coming() as arrived, _recording_failure(rt, job_id):
        with rt.sessions.begin() as session:
            job = session.get(QueryJob, job_id)
            if job is None or _finished(job):
                return job_id
            advance_query(job, QueryStatus.RECALLING)  # a re-delivered step is recalling already
            collection = session.get_one(Collection, job.collection_id)
            target = _milvus_collection(rt, collection)
            model = collection.recall_model
            collection_name = collection.name
            fields = dict(collection.metadata_fields)
            plan = job.request
            query, _ = _query_of(rt, job)
        cache_key = _embedding_key(model, plan, query.instruction)
        started = time.perf_counter()
        vector = _cached_vector(rt, cache_key)
        if vector is None:
            batcher = rt.query_batcher(model)
            limit = rt.settings.task_time_limit
            vector = batcher.submit([query], timeout=limit, arrived=arrived)[0]
            _store_vector(rt, cache_key, vector)
        arrived()
        embedded = time.perf_counter() - started
        service = RecallService(rt.embedder(model), rt.index)
        expression = rt.index.expression(plan.filter, fields)
        written = last_write(rt.redis, target)  # the newest write it must see (store.writes)
        result = service.search(
            target, query, plan.recall_k, expression, vector=vector, written_at=written
        )
        result.timings["embed"] = embedded
        for stage, seconds in result.timings.items():
            STAGE_SECONDS.labels(stage).observe(seconds)
        hits = [Hit(document_id=h.document_id, cosine=h.score) for h in result.hits]
        with rt.sessions.begin() as session:
            job = session.get_one(QueryJob, job_id)
            if _finished(job):
                return job_id
            job.recall_hits = hits
            job.timings = {**job.timings, **result.timings}
            finished = not (plan.rerank.enabled and hits)
            if finished:
                results = [RankedHit(**h.model_dump(), p_yes=None, score=h.cosine) for h in hits]
                _finish(rt, session, job, results[: plan.top_k])
            else:
                advance_query(job, QueryStatus.RERANKING)
        if finished:
            notify_finished(rt.redis, job_id)
    _log_step("recall.search", job_id, collection_name, result.timings)
    return job_id


def rerank_step(rt: Runtime, job_id: str) -> str:
    """Score the recall hits with the reranker, fuse, store the final ranking and cache it."""
    mark_queries_active(rt.redis)
    with rt.arrivals["pairs"].coming() as arrived, _recording_failure(rt, job_id):
        with rt.sessions.begin() as session:
            job = session.get(QueryJob, job_id)
            if job is None or job.status != QueryStatus.RERANKING:
                return job_id
            plan = job.request
            collection_name = session.get_one(Collection, job.collection_id).name
            hits = list(job.recall_hits or [])
            docs = {
                doc.external_id: doc
                for doc in session.scalars(
                    select(Document).where(
                        Document.collection_id == job.collection_id,
                        Document.external_id.in_([h.document_id for h in hits]),
                        Document.status == DocumentStatus.INDEXED,
                    )
                )
            }
            query, _ = _query_of(rt, job)
        # Deleted since recall, or not indexed at its current revision (queries.views): skip.
        hits = [h for h in hits if h.document_id in docs]
        started = time.perf_counter()
        candidates = [
            RerankCandidate(
                text=docs[h.document_id].text,
                image=rt.media.get(key) if (key := docs[h.document_id].image_key) else None,
            )
            for h in hits
        ]
        rerank_query = RerankQuery(query.text, query.image, query.instruction)
        pairs = [(rerank_query, candidate) for candidate in candidates]
        batcher = rt.pair_batcher(rt.settings.rerank_model)
        p_yes = batcher.submit(pairs, timeout=rt.settings.task_time_limit, arrived=arrived)
        fused = fuse(
            [h.document_id for h in hits],
            [h.cosine for h in hits],
            p_yes,
            plan.rerank.weight,
        )
        seconds = time.perf_counter() - started
        STAGE_SECONDS.labels("rerank").observe(seconds)
        results = [
            RankedHit(document_id=f.document_id, cosine=f.cosine, p_yes=f.p_yes, score=f.score)
            for f in fused[: plan.top_k]
        ]
        with rt.sessions.begin() as session:
            job = session.get_one(QueryJob, job_id)
            if _finished(job):
                return job_id
            job.timings = {**job.timings, "rerank": seconds}
            _finish(rt, session, job, results)
        notify_finished(rt.redis, job_id)
    _log_step("rerank.score", job_id, collection_name, {"rerank": seconds})
    return job_id


def _log_step(task: str, job_id: str, collection: str, timings: dict[str, float]) -> None:
    fields = {"task": task, "job_id": job_id, "collection": collection}
    log.info("step done %s", _timings_text(timings), extra={**fields, "ms": _ms(timings)})


def _ms(timings: dict[str, float]) -> float:
    return round(sum(timings.values()) * 1000, 1)


def _timings_text(timings: dict[str, float]) -> str:
    return " ".join(f"{stage}={seconds * 1000:.1f}ms" for stage, seconds in timings.items())


def _finish(rt: Runtime, session: Any, job: QueryJob, results: list[RankedHit]) -> None:
    """Store the final ranking, cache it enriched with its documents, tell the waiters."""
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
