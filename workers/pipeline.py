"""The steps behind the Celery tasks: SQL job state around the recall and rerank libraries.

Each step reads what it needs by id (job rows, documents, media keys), does its work and
records the outcome on the job row. A failure is recorded on the job, then re-raised.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import numpy as np
from sqlalchemy import case, delete, func, select, update

from core.cache import ResultCache, notify_finished
from core.metrics import INGEST_DOCUMENTS, STAGE_SECONDS
from core.models import Collection, Document, IngestJob, QueryJob, utcnow
from core.reindex import behind, live_documents
from core.results import enrich
from recall.index import milvus_name
from recall.instructions import default_instruction
from recall.prompts import Candidate, Query
from recall.service import IndexDocument, RecallService
from rerank.fusion import fuse
from rerank.reranker import RerankCandidate, RerankQuery
from workers.runtime import Runtime

log = logging.getLogger(__name__)

FINISHED = ("done", "failed", "cancelled", "expired")


def _milvus_collection(rt: Runtime, collection: Collection) -> str:
    return milvus_name(rt.settings.milvus_prefix, collection.storage_name, collection.generation)


# -- ingestion -------------------------------------------------------------------------------
def ingest_chunk(rt: Runtime, job_id: str, document_ids: list[int]) -> dict[str, Any]:
    """Embed and upsert one chunk of an ingestion job; replaying a chunk changes nothing."""
    with rt.sessions.begin() as session:
        job = session.get(IngestJob, job_id)
        if job is None:
            raise LookupError(f"ingestion job {job_id} does not exist")
        collection = session.get_one(Collection, job.collection_id)
        if job.state == "queued":
            job.state, job.started_at = "running", utcnow()
        docs = session.scalars(
            select(Document).where(Document.id.in_(document_ids), Document.ingest_job_id == job_id)
        ).all()
        # While a reindex builds the next generation, writes go to both (SPEC: no lost update).
        targets = collection.write_targets()
        reindex_job = collection.reindex_job_id
        storage = collection.storage_name
        fields = dict(collection.metadata_fields)
        items = [
            (doc.id, doc.external_id, doc.text, doc.image_key, dict(doc.doc_metadata))
            for doc in docs
        ]
    timings: dict[str, float] = {}
    vectors: dict[str, np.ndarray] = {}
    (served, served_model), *building = targets
    try:
        documents = [_index_document(rt, *item[1:]) for item in items]
        if documents:
            _write(rt, storage, served, served_model, documents, fields, vectors, timings)
    except Exception as exc:
        _record_chunk_failure(rt, job_id, items, exc)
        raise
    written, aborted = served, None
    for generation, model in building if documents else []:
        try:
            _write(rt, storage, generation, model, documents, fields, vectors, timings)
            written = generation
        except Exception as exc:
            # The new generation could not take it. The served write stands; these
            # documents stay outstanding for the build (the sweep queues them as reindex
            # work), and the build is given up only after repeated failures.
            aborted = _reindex_failed(rt, str(reindex_job), exc)
    with rt.sessions.begin() as session:
        session.execute(
            update(Document)
            .where(Document.id.in_([item[0] for item in items]), Document.ingest_job_id == job_id)
            .values(status="indexed", error=None, generation=_at_least(written))
        )
        # The writes are flushed and searchable: make the change visible to the cache.
        session.execute(
            update(Collection)
            .where(Collection.id == collection.id)
            .values(version=Collection.version + 1)
        )
        _refresh_ingest_progress(session, job_id)
    INGEST_DOCUMENTS.labels("indexed").inc(len(items))
    for stage, seconds in timings.items():
        STAGE_SECONDS.labels(f"ingest_{stage}").observe(seconds)
    log.info(
        "chunk indexed",
        extra={
            "task": "recall.ingest",
            "job_id": job_id,
            "collection": collection.name,
            "documents": len(items),
            "ms": round(sum(timings.values()) * 1000, 1),
        },
    )
    outcome: dict[str, Any] = {"job_id": job_id, "indexed": len(items), "timings": timings}
    if aborted is not None:
        outcome["drop"] = aborted
    elif reindex_job is not None:  # these documents may have been the build's last ones
        outcome["drop"] = maybe_switch(rt, reindex_job)
    return outcome


def _index_document(
    rt: Runtime, external_id: str, text: str | None, image_key: str | None, metadata: Any
) -> IndexDocument:
    image = rt.media.get(image_key) if image_key else None
    return IndexDocument(external_id, Candidate(text=text, image=image), metadata)


def _write(
    rt: Runtime,
    storage: str,
    generation: int,
    model: str,
    documents: list[IndexDocument],
    fields: dict[str, str],
    vectors: dict[str, np.ndarray],
    timings: dict[str, float],
) -> None:
    """Upsert into one generation; each model embeds the documents once (``vectors``)."""
    service = RecallService(rt.embedder(model), rt.index)
    started = time.perf_counter()
    if model not in vectors:
        vectors[model] = service.embed(documents)
    embedded = time.perf_counter()
    target = milvus_name(rt.settings.milvus_prefix, storage, generation)
    service.upsert(target, documents, vectors[model], fields)
    timings["embed"] = timings.get("embed", 0.0) + embedded - started
    timings["upsert"] = timings.get("upsert", 0.0) + time.perf_counter() - embedded


def _at_least(generation: int) -> Any:
    """SQL for "the document's generation, raised to ``generation``" (never lowered)."""
    return case((Document.generation < generation, generation), else_=Document.generation)


# -- reindex ---------------------------------------------------------------------------------
# Milvus generations no longer served: {"collection": storage name, "generations": [...]}.
Drop = dict[str, Any]


def _content(doc: Document) -> tuple[Any, ...]:
    return (doc.external_id, doc.text, doc.image_key, dict(doc.doc_metadata))


def plan_reindex(rt: Runtime, job_id: str) -> list[list[int]]:
    """Start a reindex job: the chunks of document row ids its new generation still lacks."""
    with rt.sessions.begin() as session:
        job = session.get(IngestJob, job_id)
        if job is None or job.state not in ("queued", "running"):
            return []
        collection = session.get_one(Collection, job.collection_id)
        if collection.reindex_job_id != job_id:
            return []
        if job.state == "queued":
            job.state, job.started_at = "running", utcnow()
        ids = session.scalars(behind(collection.id, job.generation).order_by(Document.id)).all()
    size = rt.settings.ingest_chunk_size
    return [list(ids[start : start + size]) for start in range(0, len(ids), size)]


REINDEX_MAX_FAILURES = 3  # failed chunks before a build is given up


def reindex_chunk(rt: Runtime, job_id: str, document_ids: list[int]) -> dict[str, Any]:
    """Embed documents into the generation being built, then check whether it is complete.

    A document whose content changed (or that was deleted and created again) while it was
    being embedded is embedded again, even if the build switched meanwhile, so a slow chunk
    never leaves stale content behind the write of a newer ingestion. A document deleted
    meanwhile loses its new vector. A failing chunk raises (the redrive sweep queues it
    again); the build is given up after ``REINDEX_MAX_FAILURES`` failures.
    """
    pending, forced, indexed = list(document_ids), False, 0
    generation = 0
    for _ in range(5):
        with rt.sessions.begin() as session:
            job = session.get(IngestJob, job_id)
            if job is None or job.generation is None:
                return {"job_id": job_id, "indexed": indexed, "drop": None}
            collection = session.get(Collection, job.collection_id)
            generation = job.generation
            model = _generation_model(collection, job, first=not forced)
            if collection is None or model is None:
                return {"job_id": job_id, "indexed": indexed, "drop": None}
            model_is_served = collection.generation == generation
            if job.state == "queued":  # its plan message was lost: the chunks start it
                job.state, job.started_at = "running", utcnow()
            target = milvus_name(rt.settings.milvus_prefix, collection.storage_name, generation)
            fields = dict(collection.metadata_fields)
            query = select(Document).where(Document.id.in_(pending), Document.status != "failed")
            if not forced:
                query = query.where(Document.generation < generation)
            snapshot = {doc.id: _content(doc) for doc in session.scalars(query)}
            collection_id = collection.id
        if not snapshot:
            break
        try:
            documents = [_index_document(rt, *content) for content in snapshot.values()]
            RecallService(rt.embedder(model), rt.index).index_documents(target, documents, fields)
        except Exception as exc:
            if forced and model_is_served:
                # Repairing the served generation failed: say so on the documents.
                _mark_failed(rt, list(snapshot), exc)
                raise
            drop = _reindex_failed(rt, job_id, exc)
            if drop is not None:
                return {"job_id": job_id, "indexed": indexed, "drop": drop}
            raise  # the redrive sweep queues this chunk again
        with rt.sessions.begin() as session:
            current = {
                doc.id: doc
                for doc in session.scalars(select(Document).where(Document.id.in_(snapshot)))
            }
            same = [i for i, doc in current.items() if _content(doc) == snapshot[i]]
            changed = [i for i in current if i not in same]
            gone = {snapshot[i][0] for i in snapshot if i not in current}
            # Deleted, then created again under the same id: embed the new row too.
            recreated = (
                session.scalars(
                    select(Document).where(
                        Document.collection_id == collection_id, Document.external_id.in_(gone)
                    )
                ).all()
                if gone
                else []
            )
            changed += [doc.id for doc in recreated]
            gone -= {doc.external_id for doc in recreated}
            session.execute(
                update(Document)
                .where(Document.id.in_(same))
                .values(generation=_at_least(generation))
            )
        indexed += len(same)
        if gone:
            rt.index.delete(target, sorted(gone))
            rt.index.flush(target)
        pending, forced = changed, True
        if not pending:
            break
    return {"job_id": job_id, "indexed": indexed, "drop": maybe_switch(rt, job_id)}


def _generation_model(collection: Collection | None, job: IngestJob, first: bool) -> str | None:
    """The model of the job's generation while it is worth writing: being built by this
    job, or (to repair a document changed mid-chunk) built and now served."""
    if collection is None:
        return None
    if collection.reindex_job_id == job.id and job.state in ("queued", "running"):
        return collection.building_model
    if not first and collection.generation == job.generation:
        return collection.recall_model
    return None


def _reindex_failed(rt: Runtime, job_id: str, exc: Exception) -> Drop | None:
    """Record a failed write to the generation being built. The build is given up (its
    generation to drop is returned) after ``REINDEX_MAX_FAILURES`` failures, or at once
    when no redrive sweep runs to retry the work."""
    message = _reason(exc)
    with rt.sessions.begin() as session:
        job = session.get_one(IngestJob, job_id, with_for_update=True)
        if job.state not in ("queued", "running"):
            return None
        job.errors = [*job.errors, {"index": None, "id": None, "message": message}]
        failures = len(job.errors)
    if failures >= REINDEX_MAX_FAILURES or rt.settings.redrive_seconds <= 0:
        return _abort_reindex(rt, job_id, exc, record=False)
    return None


def _reason(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}"


def _mark_failed(rt: Runtime, document_ids: list[int], exc: Exception) -> None:
    message = _reason(exc)
    with rt.sessions.begin() as session:
        session.execute(
            update(Document)
            .where(Document.id.in_(document_ids))
            .values(status="failed", error=message)
        )


def switch_if_built(rt: Runtime, ingest_job_id: str) -> Drop | None:
    """After an ingestion chunk failed: its documents may have been the build's last ones."""
    with rt.sessions.begin() as session:
        job = session.get(IngestJob, ingest_job_id)
        collection = session.get(Collection, job.collection_id) if job is not None else None
        reindex_job = collection.reindex_job_id if collection is not None else None
    return maybe_switch(rt, reindex_job) if reindex_job is not None else None


def maybe_switch(rt: Runtime, job_id: str) -> Drop | None:
    """Refresh a reindex job's progress; when every live document is in the new
    generation, serve it (one transaction). Returns the generation to drop."""
    with rt.sessions.begin() as session:
        job = session.get(IngestJob, job_id, with_for_update=True)
        if job is None or job.state not in ("queued", "running") or job.generation is None:
            return None
        collection = session.get_one(Collection, job.collection_id, with_for_update=True)
        if collection.reindex_job_id != job_id or collection.building_model is None:
            return None
        job.total = live_documents(session, collection.id)
        job.done = live_documents(session, collection.id, at_least=job.generation)
        if job.done < job.total:
            return None
        old = collection.generation
        collection.generation, collection.recall_model = job.generation, collection.building_model
        collection.end_build()
        collection.version += 1  # answers from the old generation are never served again
        job.state, job.finished_at = "done", utcnow()
        name, storage = collection.name, collection.storage_name
    log.info(
        "reindex switched",
        extra={"task": "recall.reindex", "job_id": job_id, "collection": name, "generation": old},
    )
    return {"collection": storage, "generations": [old]}


def _abort_reindex(rt: Runtime, job_id: str, exc: Exception, *, record: bool = True) -> Drop | None:
    """Give up a build: search stays on the served generation; the new one is dropped."""
    message = _reason(exc)
    with rt.sessions.begin() as session:
        job = session.get(IngestJob, job_id, with_for_update=True)
        if job is None or job.state not in ("queued", "running"):
            return None
        job.state, job.finished_at = "failed", utcnow()
        if record:
            job.errors = [*job.errors, {"index": None, "id": None, "message": message}]
        collection = session.get_one(Collection, job.collection_id, with_for_update=True)
        if collection.reindex_job_id == job_id:
            collection.end_build()
        name, storage = collection.name, collection.storage_name
        generation = int(job.generation or 0)
    log.error(
        "reindex failed",
        extra={"task": "recall.reindex", "job_id": job_id, "collection": name, "error": message},
    )
    return {"collection": storage, "generations": [generation]}


def delete_vectors(rt: Runtime, storage: str, generation: int, ids: list[str]) -> int:
    name = milvus_name(rt.settings.milvus_prefix, storage, generation)
    if rt.index.exists(name):
        rt.index.delete(name, ids)
        rt.index.flush(name)
    return len(ids)


def drop_collections(rt: Runtime, storage: str, generations: list[int]) -> int:
    """Drop Milvus generations of the collection whose ``storage_name`` is ``storage``."""
    dropped = 0
    for generation in generations:
        name = milvus_name(rt.settings.milvus_prefix, storage, generation)
        if rt.index.exists(name):
            rt.index.drop(name)
            dropped += 1
    return dropped


def _record_chunk_failure(rt: Runtime, job_id: str, items: list[Any], exc: Exception) -> None:
    """Mark the chunk's documents failed, with the reason, and count them on the job."""
    message = _reason(exc)
    with rt.sessions.begin() as session:
        session.execute(
            update(Document)
            .where(Document.id.in_([item[0] for item in items]), Document.status != "indexed")
            .values(status="failed", error=message)
        )
        job = session.get_one(IngestJob, job_id, with_for_update=True)
        job.errors = [*job.errors, *({"id": item[1], "message": message} for item in items)]
        _refresh_ingest_progress(session, job_id)
    INGEST_DOCUMENTS.labels("failed").inc(len(items))
    log.error(
        "chunk failed",
        extra={
            "task": "recall.ingest",
            "job_id": job_id,
            "documents": len(items),
            "error": message,
        },
    )


def _refresh_ingest_progress(session: Any, job_id: str) -> None:
    """Counts from the documents themselves, so a replayed chunk never counts twice."""
    job = session.get_one(IngestJob, job_id, with_for_update=True)
    counts = dict(
        session.execute(
            select(Document.status, func.count())
            .where(Document.ingest_job_id == job_id)
            .group_by(Document.status)
        ).all()
    )
    job.done = int(counts.get("indexed", 0))
    job.failed = job.rejected + int(counts.get("failed", 0))
    # Done when none of its documents waits any more. A document sent again by a later job
    # belongs to that job from then on, so this one never waits for it.
    if not counts.get("pending") and job.state not in ("done", "failed"):
        job.state, job.finished_at = "done", utcnow()


# -- queries ---------------------------------------------------------------------------------
@contextmanager
def _recording_failure(rt: Runtime, job_id: str) -> Iterator[None]:
    try:
        yield
    except Exception as exc:
        with rt.sessions.begin() as session:
            job = session.get(QueryJob, job_id)
            if job is not None and job.status not in FINISHED:
                job.status, job.error, job.finished_at = "failed", str(exc), utcnow()
                ResultCache(rt.redis, rt.settings.result_ttl_seconds).release(job.cache_key)
        notify_finished(rt.redis, job_id)  # after the commit: waiters re-read the row
        raise


def _query_of(rt: Runtime, job: QueryJob) -> tuple[Query, str]:
    request = job.request
    image = rt.media.get(job.query_image_key) if job.query_image_key else None
    query = Query(text=request.get("text"), image=image)
    instruction = request.get("instruction")
    if instruction is None and request.get("use_default_instruction", True):
        instruction = default_instruction(query.modality)
    return Query(text=query.text, image=image, instruction=instruction), query.modality


def _embedding_key(model: str, request: dict[str, Any], instruction: str | None) -> str:
    """Query embeddings are cached per model, text, image (by content hash) and instruction."""
    parts = json.dumps([model, request.get("text"), request.get("image"), instruction])
    return f"umarvel:qemb:{hashlib.sha256(parts.encode()).hexdigest()}"


def _cached_vector(rt: Runtime, key: str) -> np.ndarray | None:
    if rt.settings.query_embedding_ttl_seconds <= 0:
        return None
    raw = rt.redis.get(key)
    return None if raw is None else np.frombuffer(raw, dtype=np.float32)


def _store_vector(rt: Runtime, key: str, vector: np.ndarray) -> None:
    if rt.settings.query_embedding_ttl_seconds > 0:
        data = np.asarray(vector, dtype=np.float32).tobytes()
        rt.redis.set(key, data, ex=rt.settings.query_embedding_ttl_seconds)


def cleanup_jobs(rt: Runtime) -> int:
    """Delete query jobs finished longer ago than their lifetime; returns how many."""
    cutoff = utcnow() - timedelta(seconds=rt.settings.job_ttl_seconds)
    with rt.sessions.begin() as session:
        result = session.execute(
            delete(QueryJob).where(QueryJob.finished_at.is_not(None), QueryJob.finished_at < cutoff)
        )
    return int(getattr(result, "rowcount", 0) or 0)


def recall_step(rt: Runtime, job_id: str) -> str:
    """Embed the query, search Milvus, store the hits on the job; finish it without rerank."""
    with _recording_failure(rt, job_id):
        with rt.sessions.begin() as session:
            job = session.get(QueryJob, job_id)
            if job is None or job.status in FINISHED:
                return job_id
            job.status = "recalling"
            collection = session.get_one(Collection, job.collection_id)
            target = _milvus_collection(rt, collection)
            model = collection.recall_model
            collection_name = collection.name
            request = dict(job.request)
            query, _ = _query_of(rt, job)
        rerank = request["rerank"]
        k = rerank["k"] if rerank["enabled"] else request["top_k"]
        cache_key = _embedding_key(model, request, query.instruction)
        started = time.perf_counter()
        vector = _cached_vector(rt, cache_key)
        if vector is None:
            batcher = rt.query_batcher(model)
            vector = batcher.submit([query], timeout=rt.settings.task_time_limit)[0]
            _store_vector(rt, cache_key, vector)
        embedded = time.perf_counter() - started
        service = RecallService(rt.embedder(model), rt.index)
        result = service.search(target, query, k, request.get("expression"), vector=vector)
        result.timings["embed"] = embedded
        for stage, seconds in result.timings.items():
            STAGE_SECONDS.labels(stage).observe(seconds)
        hits = [{"document_id": h.document_id, "cosine": h.score} for h in result.hits]
        with rt.sessions.begin() as session:
            job = session.get_one(QueryJob, job_id)
            if job.status in FINISHED:
                return job_id
            job.recall_hits = hits
            job.timings = {**job.timings, **result.timings}
            finished = not (rerank["enabled"] and hits)
            if finished:
                results = [{**h, "p_yes": None, "score": h["cosine"]} for h in hits]
                _finish(rt, session, job, results[: request["top_k"]])
            else:
                job.status = "reranking"
        if finished:
            notify_finished(rt.redis, job_id)
    _log_step("recall.search", job_id, collection_name, result.timings)
    return job_id


def rerank_step(rt: Runtime, job_id: str) -> str:
    """Score the recall hits with the reranker, fuse, store the final ranking and cache it."""
    with _recording_failure(rt, job_id):
        with rt.sessions.begin() as session:
            job = session.get(QueryJob, job_id)
            if job is None or job.status != "reranking":
                return job_id
            request = dict(job.request)
            collection_name = session.get_one(Collection, job.collection_id).name
            hits = list(job.recall_hits or [])
            docs = {
                doc.external_id: doc
                for doc in session.scalars(
                    select(Document).where(
                        Document.collection_id == job.collection_id,
                        Document.external_id.in_([h["document_id"] for h in hits]),
                    )
                )
            }
            query, _ = _query_of(rt, job)
        hits = [h for h in hits if h["document_id"] in docs]  # deleted since recall: skip
        started = time.perf_counter()
        candidates = [
            RerankCandidate(
                text=docs[h["document_id"]].text,
                image=rt.media.get(key) if (key := docs[h["document_id"]].image_key) else None,
            )
            for h in hits
        ]
        rerank_query = RerankQuery(query.text, query.image, query.instruction)
        pairs = [(rerank_query, candidate) for candidate in candidates]
        batcher = rt.pair_batcher(rt.settings.rerank_model)
        p_yes = batcher.submit(pairs, timeout=rt.settings.task_time_limit)
        fused = fuse(
            [h["document_id"] for h in hits],
            [h["cosine"] for h in hits],
            p_yes,
            request["rerank"]["weight"],
        )
        seconds = time.perf_counter() - started
        STAGE_SECONDS.labels("rerank").observe(seconds)
        results = [
            {"document_id": f.document_id, "cosine": f.cosine, "p_yes": f.p_yes, "score": f.score}
            for f in fused[: request["top_k"]]
        ]
        with rt.sessions.begin() as session:
            job = session.get_one(QueryJob, job_id)
            if job.status in FINISHED:
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


def _finish(rt: Runtime, session: Any, job: QueryJob, results: list[dict[str, Any]]) -> None:
    """Store the final ranking, cache it enriched with its documents, tell the waiters."""
    job.results, job.status, job.finished_at = results, "done", utcnow()
    cache = ResultCache(rt.redis, rt.settings.result_ttl_seconds)
    payload = {
        "job_id": job.id,
        "results": enrich(session, job.collection_id, results),
        "timings": job.timings,
    }
    cache.put(job.cache_key, payload)
    cache.release(job.cache_key)
