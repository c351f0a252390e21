"""Worker readiness: load the model, run a warm-up inference, then beat in Redis.

Once the worker is ready (Celery's ``worker_ready``), a background thread of the worker
process loads the model of its queue, runs one small inference, and from then on writes
``umarvel:heartbeat:<queue>:<hostname>`` every few seconds with a short lifetime. The API's
``/readyz`` reads these keys: a queue is ready while one of its workers beats with a warm
model. The worker runs tasks in threads of this same process, so nothing crosses a fork.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from typing import Any

from core.settings import Settings

log = logging.getLogger(__name__)

PREFIX = "umarvel:heartbeat"
QUEUE_ENV = "UMARVEL_WORKER_QUEUE"


def heartbeat_key(queue: str, hostname: str) -> str:
    return f"{PREFIX}:{queue}:{hostname}"


def read_heartbeats(client: Any, queue: str) -> list[dict[str, Any]]:
    beats = []
    for key in client.scan_iter(match=f"{PREFIX}:{queue}:*"):
        raw = client.get(key)
        if raw is not None:
            beats.append(json.loads(raw))
    return beats


def warm_up(queue: str, rt: Any) -> str:
    """Load the queue's model and run one inference; returns the model id."""
    settings: Settings = rt.settings
    if queue == "recall":
        from recall import Query

        rt.embedder(settings.recall_model).encode_queries([Query(text="warm-up")])
        rt.index.client.list_collections()  # Milvus reachable
        return settings.recall_model
    from rerank import RerankCandidate, RerankQuery

    rt.reranker(settings.rerank_model).score(RerankQuery(text="warm-up"), [RerankCandidate("x")])
    return settings.rerank_model


def start(queue: str, hostname: str | None = None) -> threading.Thread:
    """Warm up, then beat until the process ends (a daemon thread)."""
    from workers.runtime import runtime

    hostname = hostname or socket.gethostname()
    rt = runtime()
    thread = threading.Thread(
        target=_run, args=(queue, hostname, rt), name="heartbeat", daemon=True
    )
    thread.start()
    if queue == "recall" and rt.settings.redrive_seconds > 0:
        threading.Thread(target=_redrive, args=(rt,), name="redrive", daemon=True).start()
    return thread


def _run(queue: str, hostname: str, rt: Any) -> None:
    settings: Settings = rt.settings
    state: dict[str, Any] = {
        "queue": queue,
        "hostname": hostname,
        "pid": os.getpid(),
        "warm": False,
        "model": None,
        "error": None,
    }
    started = time.perf_counter()
    try:
        state["model"] = warm_up(queue, rt)
        state["warm"] = True
        state["warm_up_seconds"] = round(time.perf_counter() - started, 3)
        log.info(
            "queue=%s model=%s warm in %.1f s", queue, state["model"], time.perf_counter() - started
        )
    except Exception as exc:  # reported through the heartbeat, never raised away
        state["error"] = f"{type(exc).__name__}: {exc}"
        log.exception("queue=%s warm-up failed", queue)
    interval = settings.heartbeat_seconds
    key = heartbeat_key(queue, hostname)
    while True:
        try:
            state["at"] = time.time()
            rt.redis.set(key, json.dumps(state), ex=max(1, int(interval * 3)))
        except Exception:  # Redis away: keep trying, /readyz reports not ready meanwhile
            log.warning("heartbeat to Redis failed", exc_info=True)
        time.sleep(interval)


def _redrive(rt: Any) -> None:
    """Every UMARVEL_REDRIVE_SECONDS, queue again what the broker lost (workers.redrive).

    Its own thread: a long sweep never delays the heartbeat; an error is logged, never
    raised.
    """
    from workers import redrive

    seconds = rt.settings.redrive_seconds
    while True:
        time.sleep(seconds)
        try:
            redrive.requeue(redrive.sweep(rt, seconds))
        except Exception:
            log.warning("redrive sweep failed", exc_info=True)
