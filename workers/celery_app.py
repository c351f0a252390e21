"""The Celery application: explicit ``recall`` and ``rerank`` queues, JSON payloads of ids.

Built from settings alone (never from the Flask app). The API uses it to send tasks by
name without importing them; workers import ``workers.tasks`` to register them.
"""

from __future__ import annotations

from celery import Celery
from kombu import Queue

from core.settings import Settings

RECALL_QUEUE = "recall"
RERANK_QUEUE = "rerank"
QUEUES = (RECALL_QUEUE, RERANK_QUEUE)
CLEANUP_SECONDS = 600.0


def make_celery(settings: Settings, *, include_tasks: bool = False) -> Celery:
    app = Celery(
        "umarvel",
        broker=settings.redis_url,
        backend=settings.redis_url,
        include=["workers.tasks"] if include_tasks else [],
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
    }
    app.conf.update(
        task_queues=[Queue(name) for name in QUEUES],
        task_default_queue=RECALL_QUEUE,
        # Routing by task-name prefix; a queue that is not declared is an error.
        task_routes={"recall.*": {"queue": RECALL_QUEUE}, "rerank.*": {"queue": RERANK_QUEUE}},
        task_create_missing_queues=False,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        # A task is acknowledged after it finishes: a worker that dies mid-task loses nothing.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        broker_transport_options=transport,
        result_backend_transport_options=transport,
        task_time_limit=settings.task_time_limit,
        task_soft_time_limit=max(1, settings.task_time_limit - 10),
        result_expires=settings.result_ttl_seconds,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        worker_send_task_events=True,
        task_send_sent_event=True,
        beat_schedule={
            "cleanup-expired-jobs": {"task": "recall.cleanup", "schedule": CLEANUP_SECONDS}
        },
    )
    return app
