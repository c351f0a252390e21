"""Worker readiness: load the model, run a warm-up inference, then beat in Redis.

Once the worker is ready (Celery's ``worker_ready``), a background thread of the worker
process loads the model of its queue, runs one small inference, and from then on writes
``umarvel:heartbeat:<queue>:<hostname>`` every few seconds with a short lifetime. The API's
``/statusz`` reads these keys: a queue is ready while one of its workers beats with a warm
model. The worker runs tasks in threads of this same process, so nothing crosses a fork.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from core.contract import Queue
from core.settings import Settings
from store.heartbeats import heartbeat_key

log = logging.getLogger(__name__)

QUEUE_ENV = "UMARVEL_WORKER_QUEUE"


def warm_up(queue: str, rt: Any) -> str:
    """Load the queue's model and run one inference; returns the model id."""
    settings: Settings = rt.settings
    if queue in (Queue.RECALL, Queue.INGEST):  # ingestion embeds with the recall model
        from recall import Query

        rt.embedder(settings.recall_model).encode_queries([Query(text="warm-up")])
        rt.index.client.list_collections()  # Milvus reachable
        return settings.recall_model
    from rerank import RerankCandidate, RerankQuery

    rt.reranker(settings.rerank_model).score(RerankQuery(text="warm-up"), [RerankCandidate("x")])
    return settings.rerank_model


def start(
    queues: str, hostname: str | None = None, consuming: Callable[[], bool] | None = None
) -> list[threading.Thread]:
    """Warm up, then beat until the process ends (daemon threads), for each of the
    comma-separated ``queues``; a worker of the ingest queue also sweeps the outbox."""
    from workers.runtime import runtime

    hostname = hostname or socket.gethostname()
    rt = runtime()
    threads = [
        threading.Thread(
            target=_run, args=(queue, hostname, rt, consuming), name=f"heartbeat-{queue}"
        )
        for queue in queues.split(",")
    ]
    for thread in threads:
        thread.daemon = True
        thread.start()
    if Queue.INGEST in queues.split(",") and rt.settings.redrive_seconds > 0:
        threading.Thread(target=_sweep, args=(rt,), name="sweep", daemon=True).start()
    return threads


def _run(queue: str, hostname: str, rt: Any, consuming: Callable[[], bool] | None = None) -> None:
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
        # No beat while the Celery consumer is reconnecting or the worker stopping
        # (workers.supervision): the key expires and /statusz stops counting this worker.
        if consuming is not None and not consuming():
            time.sleep(interval)
            continue
        try:
            state["at"] = time.time()
            rt.redis.set(key, json.dumps(state), ex=max(1, int(interval * 3)))
        except Exception:  # Redis away: keep trying, /statusz reports not ready meanwhile
            log.warning("heartbeat to Redis failed", exc_info=True)
        time.sleep(interval)


def _sweep(rt: Any) -> None:
    """Every UMARVEL_REDRIVE_SECONDS, send again the outbox entries whose messages were lost
    (``ingestion.sweep``), and every UMARVEL_RECONCILE_SECONDS compare Milvus with SQL
    (``ingestion.reconcile``). Its own thread: a long sweep never delays the heartbeat; an
    error (Redis, SQL or Milvus away) is logged, never raised, and the next sweep tries
    again."""
    from ingestion import reconcile, sweep

    seconds = rt.settings.redrive_seconds
    while True:
        time.sleep(seconds)
        try:
            sweep.sweep(rt, seconds)
            if reconcile.due(rt):
                reconcile.reconcile(rt)
        except Exception:
            log.warning("outbox sweep failed", exc_info=True)
