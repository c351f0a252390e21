"""Request metrics and the ``/metrics`` endpoint of the API."""

from __future__ import annotations

import contextlib
import logging
import time
from datetime import UTC, datetime
from typing import Any

from flask import Flask, Response, g, request
from sqlalchemy import func, select

from api.openapi import PROMETHEUS_TEXT, documented, responses
from api.services import services
from core.contract import Queue
from core.logs import REQUEST_ID, REQUEST_ID_HEADER, request_id_from
from core.metrics import (
    BUILD_INFO,
    OUTBOX_ENTRIES,
    OUTBOX_OLDEST_SECONDS,
    QUEUE_DEPTH,
    REQUEST_SECONDS,
    REQUESTS,
    WORKERS,
    render,
)
from core.version import VERSION
from store.db import session_scope
from store.heartbeats import read_heartbeats
from store.tables import OutboxEntry, utcnow

log = logging.getLogger("api")


def register_metrics(app: Flask) -> None:
    @app.before_request
    def _start_timer() -> None:
        g.started = time.perf_counter()
        g.request_id = request_id_from(request.headers.get(REQUEST_ID_HEADER))
        g.request_id_token = REQUEST_ID.set(g.request_id)

    @app.teardown_request
    def _forget_request_id(_exc: BaseException | None) -> None:
        token = g.pop("request_id_token", None)
        if token is not None:
            REQUEST_ID.reset(token)

    @app.after_request
    def _count(response: Response) -> Response:
        # The route's pattern, not the URL: ids must not explode the label space.
        route = request.url_rule.rule if request.url_rule is not None else "unmatched"
        REQUESTS.labels(route, request.method, str(response.status_code)).inc()
        elapsed = time.perf_counter() - g.get("started", time.perf_counter())
        REQUEST_SECONDS.labels(route, request.method).observe(elapsed)
        if g.get("request_id"):
            response.headers[REQUEST_ID_HEADER] = g.request_id
        log.info(
            "request",
            extra={
                "event": "request",
                "method": request.method,
                "route": route,
                "status": response.status_code,
                "ms": round(elapsed * 1000, 1),
                "job_id": g.get("job_id"),
                "collection": g.get("collection"),
            },
        )
        return response

    @app.get("/metrics")
    @documented(
        resp=responses({200: None}, 400),
        tags=["health"],
        security={},
        extra={"responses": {"200": PROMETHEUS_TEXT}},
    )
    def metrics() -> Any:
        svc = services()
        BUILD_INFO.labels(VERSION).set(1)
        for queue in Queue:
            with contextlib.suppress(Exception):  # Redis away: the gauges keep their values
                QUEUE_DEPTH.labels(queue).set(svc.redis.llen(queue))
                _workers(queue, read_heartbeats(svc.redis, queue))
        with contextlib.suppress(Exception):  # SQL away: the same
            _outbox(svc)
        body, content_type = render()
        return Response(body, content_type=content_type)


def _workers(queue: str, beats: list[dict[str, Any]]) -> None:
    failing = sum(1 for beat in beats if beat.get("error"))
    warm = sum(1 for beat in beats if beat.get("warm"))
    for state, count in (("warm", warm), ("failing", failing), ("cold", len(beats) - warm)):
        WORKERS.labels(queue, state).set(count)


def _outbox(svc: Any) -> None:
    with session_scope(svc.sessions) as session:
        count, oldest = session.execute(
            select(func.count(), func.min(OutboxEntry.created_at))
        ).one()
    OUTBOX_ENTRIES.set(count)
    age = (utcnow() - _aware(oldest)).total_seconds() if oldest is not None else 0.0
    OUTBOX_OLDEST_SECONDS.set(max(age, 0.0))


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
