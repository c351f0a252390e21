"""Request metrics and the ``/metrics`` endpoint of the API."""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any

from flask import Flask, Response, g, request

from api.openapi import PROMETHEUS_TEXT, documented, responses
from api.services import services
from core.contract import Queue
from core.metrics import QUEUE_DEPTH, REQUEST_SECONDS, REQUESTS, render

log = logging.getLogger("api")


def register_metrics(app: Flask) -> None:
    @app.before_request
    def _start_timer() -> None:
        g.started = time.perf_counter()

    @app.after_request
    def _count(response: Response) -> Response:
        # The route's pattern, not the URL: ids must not explode the label space.
        route = request.url_rule.rule if request.url_rule is not None else "unmatched"
        REQUESTS.labels(route, request.method, str(response.status_code)).inc()
        elapsed = time.perf_counter() - g.get("started", time.perf_counter())
        REQUEST_SECONDS.labels(route, request.method).observe(elapsed)
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
        client = services().redis
        for queue in Queue:
            with contextlib.suppress(Exception):  # Redis away: the gauge keeps its last value
                QUEUE_DEPTH.labels(queue).set(client.llen(queue))
        body, content_type = render()
        return Response(body, content_type=content_type)
