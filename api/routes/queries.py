"""Asynchronous query jobs, modelled on Elasticsearch's async search.

``POST`` answers 200 with the results when they are cached or finish within ``wait``
seconds (``UMARVEL_QUERY_WAIT_SECONDS``, 1 s, when the request gives none: a plain POST
answers, as synchronous search engines do), else 202 with the job's id and URL; ``GET``
returns status and results.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from datetime import timedelta
from typing import Any, TypeVar

from celery import chain
from flask import Blueprint, g, request
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from api.auth import require
from api.backpressure import check_backpressure
from api.openapi import QueryForm, documented, responses
from api.quotas import check_queued, waiting_slot
from api.responses import CachedAnswer, QueryAccepted, QueryAnswer, QueryJobOut
from api.routes.collections import get_collection
from api.schemas import PageQuery, QueryRequest, decode_base64, query_string, request_parts
from api.services import Services, services
from core.contract import (
    QUERY_QUEUES,
    Examples,
    Fusion,
    Grouping,
    Hit,
    RerankPlan,
    SearchMode,
    SearchPlan,
    Task,
    step_ids,
)
from core.errors import Conflict, InvalidRequest, NotFound, PayloadTooLarge, Unavailable
from core.metrics import CACHE_REQUESTS
from media.kinds import IMAGE, VIDEO, media_kind
from media.store import media_key
from queries.cache import result_key
from queries.notices import notify_finished
from queries.views import enrich
from recall.filters import compile_filter
from store.db import session_scope
from store.fences import collection_record
from store.states import RUNNING_QUERY, DocumentStatus, QueryStatus, advance_query
from store.tables import Collection, Document, QueryJob, QueryJobKey, new_id, utcnow

bp = Blueprint("queries", __name__)

POLL_SECONDS = 0.5  # a safety net only: workers publish when a job finishes
RETRY_AFTER_SECONDS = 2
RUNNING = RUNNING_QUERY
ANONYMOUS = 0  # the caller's key id when auth is disabled
Item = TypeVar("Item")
Page = tuple[int, int]  # (offset, limit) of the ranking an answer shows
LOST_MESSAGE = "the query's tasks were lost (the broker restarted?); send the query again"


@dataclass(frozen=True)
class Searched:
    """What the query path needs of a collection: kept in Redis, fenced (store.fences)."""

    id: int
    name: str
    uid: str
    version: int
    recall_model: str
    rerank_enabled: bool
    rerank_k: int
    rerank_weight: float
    metadata_fields: dict[str, str]
    search_mode: str


def _searched(svc: Services, name: str) -> Searched:
    def load() -> dict[str, Any]:
        with session_scope(svc.sessions) as session:
            row = get_collection(session, name)
            return {field.name: getattr(row, field.name) for field in fields(Searched)}

    record = collection_record(name)
    found = g.get("prefetched", {}).get((record, "searched"))  # read with the key's grant
    return Searched(**svc.fences.through(record, "searched", load, found))


def _max_video_bytes(svc: Services) -> int:
    return min(svc.settings.max_query_video_bytes, svc.settings.max_video_bytes)


def _query_media(body: QueryRequest, uploads: dict[str, bytes]) -> tuple[str | None, bytes | None]:
    """The query's one media part, as (kind, bytes): from base64 in the body or a file part."""
    given = {IMAGE.name: body.image, VIDEO.name: body.video}
    sources = [name for name, value in given.items() if value is not None] + list(uploads)
    if len(sources) > 1:
        if len(set(sources)) == 1:
            raise InvalidRequest(
                f"send the {sources[0]} either as a file part or as base64, not both"
            )
        raise InvalidRequest("a query carries one image or one video, not both")
    if not sources:
        return None, None
    kind = sources[0]
    encoded = given[kind]
    return kind, decode_base64(encoded, kind) if encoded is not None else uploads[kind]


def _plan(
    svc: Services,
    collection: Searched,
    body: QueryRequest,
    kind: str | None,
    media: str | None,
) -> SearchPlan:
    """The request as the workers run it, with every default filled in: also the cache key.
    ``media``: the key of the query's image or video (``kind``)."""
    settings = svc.settings
    top_k = body.top_k or settings.default_top_k
    if top_k > settings.max_top_k:
        raise InvalidRequest(f"top_k must be at most {settings.max_top_k}")
    window = settings.max_result_window
    if body.offset + top_k > window:
        raise InvalidRequest(f"offset + top_k must be at most {window} (UMARVEL_MAX_RESULT_WINDOW)")
    enabled = collection.rerank_enabled if body.rerank.enabled is None else body.rerank.enabled
    if kind == VIDEO.name:
        if body.rerank.enabled:
            raise InvalidRequest("the reranker does not take video queries: rerank.enabled false")
        enabled = False
    if body.rerank.k is not None and body.rerank.k > settings.max_rerank_k:
        raise InvalidRequest(f"rerank.k must be at most {settings.max_rerank_k}")
    k = min(max(body.rerank.k or collection.rerank_k, top_k), max(settings.max_rerank_k, top_k))
    weight = collection.rerank_weight if body.rerank.weight is None else body.rerank.weight
    return SearchPlan(
        text=body.text,
        image=media if kind == IMAGE.name else None,
        video=media if kind == VIDEO.name else None,
        instruction=body.instruction,
        use_default_instruction=body.use_default_instruction,
        candidates=body.candidates,
        **_ranking(collection, body),
        depth=min(window, k * math.ceil((body.offset + top_k) / k)),
        rerank=RerankPlan(enabled=enabled, k=k, weight=float(weight)),
        filter=body.filter,
        expression=compile_filter(body.filter, collection.metadata_fields),
        top_k=top_k,
        offset=body.offset,
    )


def _ranking(collection: Searched, body: QueryRequest) -> dict[str, Any]:
    """The plan's mode, fusion, examples and grouping, checked against each other."""
    mode = SearchMode(body.mode or collection.search_mode)
    if mode == SearchMode.KEYWORD and body.text is None:
        raise InvalidRequest("keyword search needs text")
    if mode == SearchMode.KEYWORD and body.like:
        raise InvalidRequest("search by example (like) needs mode dense or hybrid")
    if body.fusion is not None and mode != SearchMode.HYBRID:
        raise InvalidRequest("fusion applies to mode hybrid only")
    if body.unlike and not body.like:
        raise InvalidRequest("unlike needs at least one like example")
    if body.group_by is not None and body.group_by not in collection.metadata_fields:
        declared = sorted(collection.metadata_fields) or "none"
        raise InvalidRequest(f"cannot group by {body.group_by!r}: declared fields are {declared}")
    fusion = body.fusion.model_dump() if body.fusion is not None else {}
    return {
        "mode": mode,
        "fusion": Fusion(**fusion) if mode == SearchMode.HYBRID else None,
        "examples": (
            Examples(like=body.like, unlike=body.unlike, include=body.include_examples)
            if body.like
            else None
        ),
        "group": (Grouping(field=body.group_by, size=body.group_size) if body.group_by else None),
    }


def _check_examples(svc: Services, collection: Searched, examples: Examples | None) -> None:
    """Every example must be an indexed document of this collection: an id it does not
    hold is a 404, whatever other collection may hold it."""
    if examples is None:
        return
    wanted = list(dict.fromkeys([*examples.like, *examples.unlike]))
    with session_scope(svc.sessions) as session:
        status = dict(
            session.execute(
                select(Document.external_id, Document.status).where(
                    Document.collection_id == collection.id, Document.external_id.in_(wanted)
                )
            ).all()
        )
    missing = [doc for doc in wanted if doc not in status]
    if missing:
        raise NotFound(f"collection {collection.name!r} has no documents {missing}")
    pending = [doc for doc in wanted if status[doc] != DocumentStatus.INDEXED]
    if pending:
        raise Conflict(
            f"documents {pending} are not indexed (yet): they have no vector to search by"
        )


@bp.post("/v1/collections/<name>/queries")
@documented(
    json=QueryRequest,
    form=QueryForm,
    query=PageQuery,
    resp=responses({200: QueryAnswer, 202: QueryAccepted}, 400, 401, 403, 404, 409, 413, 429, 503),
    tags=["queries"],
)
def submit_query(name: str) -> Any:
    g.collection = name
    require("search", name)
    svc = services()
    _paging()  # a bad offset or limit is a 400 before any job is made
    limits = {IMAGE.name: svc.settings.max_image_bytes, VIDEO.name: _max_video_bytes(svc)}
    raw, uploads = request_parts(request, limits)
    body = QueryRequest.model_validate(raw)
    kind, data = _query_media(body, uploads)
    if body.text is None and data is None and not body.like:
        raise InvalidRequest("a query needs text, an image, a video, or documents to search like")
    if kind == VIDEO.name and body.instruction is not None:
        raise InvalidRequest("a video query takes no instruction (U-MARVEL embeds videos bare)")
    if body.text and len(body.text) > svc.settings.max_text_chars:
        raise InvalidRequest(f"text is longer than {svc.settings.max_text_chars} characters")
    wait = svc.settings.query_wait_seconds if body.wait is None else body.wait
    if wait > svc.settings.max_wait_seconds:
        raise InvalidRequest(f"wait must be at most {svc.settings.max_wait_seconds} seconds")
    query_key = media_key(data) if data is not None else None  # stored only on a miss

    # A cached answer is found without SQL: the key's grant and the collection come from
    # fenced copies in Redis, the answer from the result cache. Cheap refusals (an unknown
    # collection, a bad option, a full queue) come before the image is decoded or stored;
    # a cached answer needs neither (its image, the same bytes, was checked when it ran).
    collection = _searched(svc, name)
    plan = _plan(svc, collection, body, kind, query_key)
    key = result_key(
        collection.uid,
        collection.version,
        collection.recall_model,
        svc.settings.rerank_model,
        plan,
    )
    cached = svc.cache.get(key)
    CACHE_REQUESTS.labels("hit" if cached is not None else "miss").inc()
    page = (plan.offset, plan.top_k)
    if cached is not None:
        return _render_cached(collection, cached, page), 200
    _check_examples(svc, collection, plan.examples)
    check_queued(svc, g.get("api_key"))  # the key over its share first, then the queue
    check_backpressure(svc, QUERY_QUEUES, svc.settings.max_queue_depth)
    if kind is not None and data is not None:
        if len(data) > limits[kind]:
            raise PayloadTooLarge(f"the query's {kind} is larger than {limits[kind]} bytes")
        media_kind(kind).check(data, svc.settings)
        svc.media.put(data)
    job_id = new_id()
    holder = svc.cache.claim(key, job_id, ttl_seconds=svc.settings.task_time_limit * 2)
    if holder == job_id:
        try:
            with session_scope(svc.sessions) as session:
                session.add(
                    QueryJob(
                        id=job_id,
                        collection_id=collection.id,
                        request=plan,
                        query_media_key=query_key,
                        cache_key=key,
                        api_key_id=g.api_key.id if g.get("api_key") is not None else None,
                    )
                )
                session.flush()
                session.add(QueryJobKey(job_id=job_id, api_key_id=_caller()))
        except Exception:
            svc.cache.release(key)  # no job will ever finish under this claim
            raise
    else:
        _attach(svc, holder)
    g.job_id = holder
    # Watched before the chain is sent, no notice can be missed while the subscription is
    # up: a job this request has just made is known to be queued, and is read only once a
    # worker says it finished. Without the subscription the wait polls the job. A key
    # whose waiting allowance is taken is answered at once (api.quotas).
    with waiting_slot(svc, g.get("api_key"), wait) as may_wait:
        wait = wait if may_wait else 0.0
        watching = svc.notices.watch(holder) if wait > 0 else contextlib.nullcontext(None)
        with watching as finished:
            if holder == job_id:
                _enqueue(svc, job_id, plan.rerank.enabled)
            return _answer(
                svc,
                holder,
                wait,
                finished,
                page,
                queued=holder == job_id and svc.notices.subscribed,
                done=lambda: _finished_answer(svc, collection, key, holder, page),
            )


def _caller() -> int:
    """The id of the key making this request (0 when auth is disabled)."""
    key = g.get("api_key")
    return int(key.id) if key is not None else ANONYMOUS


def _attach(svc: Services, job_id: str) -> None:
    """Record that the caller asked for ``job_id``, a job another request made. Best
    effort: the job may not be committed yet, and then the caller, unrecorded, can still
    read it but never cancels it for the keys that are recorded."""
    with contextlib.suppress(IntegrityError), session_scope(svc.sessions) as session:
        attached = session.get(QueryJobKey, (job_id, _caller()))
        if attached is None:
            session.add(QueryJobKey(job_id=job_id, api_key_id=_caller()))
        else:
            attached.withdrawn = False  # asked again after withdrawing


def _withdraw(session: Any, job_id: str) -> bool:
    """Withdraw the caller's interest in ``job_id`` if another key still wants the job
    (True); else (False) the caller is its last taker, and stays attached."""
    others = select(QueryJobKey.api_key_id).where(
        QueryJobKey.job_id == job_id,
        QueryJobKey.api_key_id != _caller(),
        QueryJobKey.withdrawn.is_(False),
    )
    if session.scalar(others.limit(1)) is None:
        return False
    attached = session.get(QueryJobKey, (job_id, _caller()))
    if attached is None:  # a cached answer's reader, or a joiner that was not recorded
        session.add(QueryJobKey(job_id=job_id, api_key_id=_caller(), withdrawn=True))
    else:
        attached.withdrawn = True
    return True


def _enqueue(svc: Services, job_id: str, rerank: bool) -> None:
    recall_id, rerank_id = step_ids(job_id)
    steps = [svc.celery.signature(Task.RECALL_SEARCH.value, args=[job_id]).set(task_id=recall_id)]
    if rerank:
        steps.append(svc.celery.signature(Task.RERANK_SCORE.value).set(task_id=rerank_id))
    try:
        chain(*steps).apply_async()
    except Exception as exc:
        with session_scope(svc.sessions) as session:
            job = session.get_one(QueryJob, job_id)
            advance_query(job, QueryStatus.FAILED, "queue unavailable")
            svc.cache.release(job.cache_key)
        raise Unavailable(f"the task queue is unavailable: {exc}") from None


def _answer(
    svc: Services,
    job_id: str,
    wait: float,
    finished: threading.Event | None,
    page: Page,
    *,
    queued: bool,
    done: Callable[[], dict[str, Any] | None] | None = None,
) -> Any:
    """The job now, or once it finishes within ``wait`` seconds, woken by ``finished`` (set
    by the job's finished notice; None: no waiting). ``queued``: the job was just made, so
    there is nothing to read before the first notice. ``done``: the job's answer if it is
    done, read without SQL (None while it is not)."""
    deadline = time.monotonic() + wait
    skip_read = queued and finished is not None
    while True:
        if not skip_read and done is not None and (answer := done()) is not None:
            return answer, 200
        if not skip_read:
            with session_scope(svc.sessions) as session:
                job = session.get(QueryJob, job_id)
                remaining = deadline - time.monotonic()
                if job is not None and (job.status not in RUNNING or remaining <= 0):
                    payload = render_job(session, job, page)
                    return payload, (202 if job.status in RUNNING else 200)
                if job is None and remaining <= 0:
                    # Another request holds the job and has not committed it yet.
                    placeholder = {"id": job_id, "url": f"/v1/queries/{job_id}"}
                    return {**placeholder, "status": "queued", "is_running": True}, 202
        skip_read = False
        if finished is not None:
            # Wake on the worker's notice, or re-check now and then as a safety net.
            remaining = deadline - time.monotonic()
            if finished.wait(min(max(remaining, 0.0), POLL_SECONDS)):
                finished.clear()


def _paging() -> PageQuery:
    """``offset`` and ``limit`` from the query string, validated."""
    return query_string(PageQuery)


def _page(results: Sequence[Item], default: Page) -> tuple[list[Item], dict[str, int]]:
    """The page of ``results`` that the query string asks for (``offset``, ``limit``), or
    else ``default``: the request's own, or the job's."""
    page = _paging()
    start = page.offset if "offset" in request.args else default[0]
    count = page.limit or default[1]
    return list(results[start : start + count]), {
        "offset": start,
        "limit": count,
        "total": len(results),
    }


def _published(fields: dict[str, Any]) -> dict[str, Any]:
    """A query answer, through the model the OpenAPI document publishes for it: a field
    not in the model is an error here, not a surprise for clients."""
    model = CachedAnswer if fields["cached"] else QueryJobOut
    return model.model_validate(fields).model_dump(mode="json", exclude_unset=True)


def _head(job_id: str, collection: str, status: QueryStatus) -> dict[str, Any]:
    return {
        "id": job_id,
        "url": f"/v1/queries/{job_id}",
        "collection": collection,
        "status": status,
        "is_running": status in RUNNING,
    }


def render_job(session: Any, job: QueryJob, page: Page | None = None) -> dict[str, Any]:
    """A job as its row holds it, results enriched with their documents: one page, by
    default the one its request asked for."""
    fields = {
        **_head(job.id, session.get_one(Collection, job.collection_id).name, job.status),
        "is_partial": job.status != QueryStatus.DONE and job.recall_hits is not None,
        "created_at": job.created_at,
        "finished_at": job.finished_at,
        "timings": job.timings,
        "error": job.error,
        "cached": False,
    }
    hits: Sequence[Hit] | None = job.results if job.status == QueryStatus.DONE else job.recall_hits
    if hits is not None:
        shown, fields["paging"] = _page(hits, page or (job.request.offset, job.request.top_k))
        fields["results"] = enrich(
            session, job.collection_id, shown, fields["paging"]["offset"] + 1
        )
    return _published(fields)


def _finished_answer(
    svc: Services, collection: Searched, key: str, job_id: str, page: Page
) -> dict[str, Any] | None:
    """Job ``job_id``'s answer from the result cache its last step filled before waking the
    waiters (the same answer its row gives, without SQL); None until it is there."""
    cached = svc.cache.get(key)
    if cached is None or cached.get("job_id") != job_id or "created_at" not in cached:
        return None
    stamps = {"created_at": cached["created_at"], "finished_at": cached["finished_at"]}
    return _published({**_cached_fields(collection, cached, page), **stamps, "cached": False})


def _render_cached(collection: Searched, cached: dict[str, Any], page: Page) -> dict[str, Any]:
    return _published(_cached_fields(collection, cached, page))


def _cached_fields(collection: Searched, cached: dict[str, Any], page: Page) -> dict[str, Any]:
    shown, paging = _page(cached["results"], page)
    return {
        **_head(cached["job_id"], collection.name, QueryStatus.DONE),
        "is_partial": False,
        "timings": cached.get("timings", {}),
        "error": None,
        "cached": True,
        # Cached results are stored enriched (a write changes the key): no SQL here.
        "results": [
            {**hit, "rank": rank} for rank, hit in enumerate(shown, start=paging["offset"] + 1)
        ],
        "paging": paging,
    }


def _job(session: Any, job_id: str, lock: bool = False) -> QueryJob:
    """The job, checked against the caller's key, expired when past its lifetime; a job
    the caller withdrew from (``DELETE``) is gone for it. ``lock``: held until the commit."""
    job = session.get(QueryJob, job_id, with_for_update=lock)
    attached = session.get(QueryJobKey, (job_id, _caller())) if job is not None else None
    if job is None or (attached is not None and attached.withdrawn):
        raise NotFound(f"query job {job_id!r} does not exist")
    g.job_id, g.collection = job.id, session.get_one(Collection, job.collection_id).name
    require("search", g.collection)
    svc = services()
    ttl = timedelta(seconds=svc.settings.job_ttl_seconds)
    if job.finished_at is not None and job.finished_at + ttl < utcnow():
        advance_query(job, QueryStatus.EXPIRED)
    # Its steps cannot still be running past twice their time limit: their messages were
    # lost (a broker that restarted empty). Say so rather than let clients wait forever.
    lost = job.created_at + timedelta(seconds=2 * svc.settings.task_time_limit) < utcnow()
    if lost and advance_query(job, QueryStatus.FAILED, LOST_MESSAGE):
        svc.cache.release(job.cache_key)
    return job


@bp.get("/v1/queries/<job_id>")
@documented(
    query=PageQuery,
    resp=responses({200: QueryJobOut}, 400, 401, 403, 404, 409, 503),
    tags=["queries"],
)
def read_query(job_id: str) -> Any:
    _paging()  # a bad offset or limit is a 400 whatever the job's state
    with session_scope(services().sessions) as session:
        return render_job(session, _job(session, job_id))


@bp.delete("/v1/queries/<job_id>")
@documented(
    query=PageQuery,
    resp=responses({200: QueryJobOut, 204: None}, 400, 401, 403, 404, 409, 503),
    tags=["queries"],
)
def delete_query(job_id: str) -> Any:
    """Withdraw the caller from a job. Identical queries of several keys share one job: it
    is cancelled (its queued steps revoked), or deleted when finished, only once every key
    that asked for it has withdrawn; until then it goes on for the others (204)."""
    svc = services()
    _paging()  # a bad offset or limit is a 400 before anything is revoked
    with session_scope(svc.sessions) as session:
        job = _job(session, job_id, lock=True)  # withdrawals of one job one at a time
        if _withdraw(session, job.id):
            return "", 204
        if job.status not in RUNNING:
            session.delete(job)
            return "", 204
        advance_query(job, QueryStatus.CANCELLED, "cancelled by the client")
        svc.cache.release(job.cache_key)
        svc.celery.control.revoke(list(step_ids(job.id)))
        payload = render_job(session, job)
    notify_finished(svc.redis, job_id)  # requests waiting on it answer now
    return payload, 200
