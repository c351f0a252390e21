"""The Celery application: explicit ``recall``, ``rerank`` and ``ingest`` queues, JSON
payloads of ids (names and queues in ``core.contract``).

Built from settings alone (never from the Flask app). The API uses it to send tasks by
name without importing them; workers import ``workers.tasks`` to register them.
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from celery.signals import before_task_publish, task_postrun, task_prerun
from kombu import Queue

from core.broker import TRANSPORT
from core.contract import Queue as Queues
from core.contract import Task
from core.logs import REQUEST_ID
from core.settings import Settings

QUEUES = tuple(queue.value for queue in Queues)
CLEANUP_SECONDS = 600.0


def make_celery(settings: Settings, *, include_tasks: bool = False) -> Celery:
    # No result backend: a step records its outcome on the job row and wakes the waiters
    # itself, and a chain hands a step's return value to the next without one. Storing
    # results nobody reads cost two Redis writes a step, and the API a result subscription
    # (and a backend per request thread) for every query it sent.
    app = Celery(
        "umarvel", broker=settings.redis_url, include=["workers.tasks"] if include_tasks else []
    )
    transport = {
        "visibility_timeout": settings.visibility_timeout,
        # Tasks of a killed worker come back once their visibility timeout has passed; sweep
        # for them every few seconds (kombu's default sweep runs only every ~100 s).
        "unacked_restore_interval": max(1, min(10, settings.visibility_timeout // 4)),
        "unacked_restore_throttle": 1,
        # The sweep holds a Redis mutex; one held by a killed worker blocks every sweep
        # until it expires (5 minutes by default).
        "unacked_mutex_expire": 15,
        # A worker consuming "recall,ingest" takes a query whenever one waits: queues are
        # polled in the order given, not in turn.
        "queue_order_strategy": "priority",
    }
    app.conf.update(
        task_queues=[Queue(name) for name in QUEUES],
        task_default_queue=Queues.RECALL.value,
        # Routing by task-name prefix; a queue that is not declared is an error.
        task_routes={f"{queue}.*": {"queue": queue} for queue in QUEUES},
        task_create_missing_queues=False,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        # A task is acknowledged after it finishes: a worker that dies mid-task loses nothing.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        broker_transport_options={**transport, **BROKER_SOCKETS},
        task_ignore_result=True,
        task_time_limit=settings.task_time_limit,
        task_soft_time_limit=max(1, settings.task_time_limit - 10),
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        # No task events: nothing here consumes them (there is no Flower), and each task
        # published three or four of them.
        worker_send_task_events=False,
        task_send_sent_event=False,
        beat_schedule={
            "cleanup-expired-jobs": {"task": Task.INGEST_CLEANUP.value, "schedule": CLEANUP_SECONDS}
        },
    )
    app.conf.update(reconnect_options())
    return app


# Broker sockets (kombu's Redis transport). A connect to a host that is gone gives up after
# a few seconds instead of the system's two minutes, and keepalive notices a dead peer on
# an idle connection. No socket timeout on reads: the consumer's BRPOP blocks by design.
BROKER_SOCKETS = {"socket_connect_timeout": 5, "socket_keepalive": True}


def reconnect_options() -> dict[str, object]:
    """How the broker and publishing ride out a Redis restart."""
    return {
        # kombu's Redis transport with the fix in core.broker: without it a worker that
        # held unacknowledged tasks when Redis died stopped instead of reconnecting.
        "broker_transport": TRANSPORT,
        # The consumer reconnects after 2, 4, 6 ... s, then every 30 s. After 100 failed
        # tries (about 45 minutes) it gives up: the worker exits non-zero (cli.main) and its
        # supervisor starts a fresh one. Sooner would only reload the model in vain.
        "broker_connection_retry": True,
        "broker_connection_max_retries": 100,
        # Publishing (the API's queries, a worker's next chain step) retries for 3.5 s,
        # so a short blip costs a delay, not a 503; a longer outage is a 503 after that.
        "task_publish_retry": True,
        "task_publish_retry_policy": {
            "max_retries": 5,
            "interval_start": 0,
            "interval_step": 0.5,
            "interval_max": 1,
        },
    }


# The request id travels with the tasks it caused: in each message's headers when it is
# published (by the API, or by a task of the chain), and on the worker's log lines while the
# task runs (core.logs).
@before_task_publish.connect
def _send_request_id(headers: dict[str, Any] | None = None, **_: Any) -> None:
    request_id = REQUEST_ID.get()
    if request_id is not None and headers is not None:
        headers.setdefault("request_id", request_id)


@task_prerun.connect
def _receive_request_id(task: Any = None, **_: Any) -> None:
    request = getattr(task, "request", None)
    if request is None:
        return
    headers = getattr(request, "headers", None) or {}
    sent = getattr(request, "request_id", None) or headers.get("request_id")
    request.umarvel_request_token = REQUEST_ID.set(sent)


@task_postrun.connect
def _forget_request_id(task: Any = None, **_: Any) -> None:
    token = getattr(getattr(task, "request", None), "umarvel_request_token", None)
    if token is not None:
        REQUEST_ID.reset(token)
