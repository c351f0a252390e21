"""Entry point for ``celery -A workers.app worker``: the app with the tasks registered."""

import os
from typing import Any

from celery.signals import worker_ready

from core import tracing
from core.celery_app import make_celery
from core.settings import get_settings

# Traced (with UMARVEL_TRACING) before any client is made, named by the queues it serves.
tracing.setup(get_settings(), f"umarvel-worker-{os.environ.get('UMARVEL_WORKER_QUEUE', 'all')}")
app = make_celery(get_settings(), include_tasks=True)


@worker_ready.connect
def _warm_up_and_beat(sender: Any = None, **_: Any) -> None:
    """Load the model in the background and report readiness (see workers.heartbeat)."""
    from workers import heartbeat, supervision

    settings = get_settings()
    if settings.worker_metrics_port:
        from prometheus_client import start_http_server

        from core.metrics import BUILD_INFO
        from core.version import VERSION

        BUILD_INFO.labels(VERSION).set(1)
        start_http_server(settings.worker_metrics_port, addr="0.0.0.0")
    # A worker that stops consuming for good ends non-zero for its supervisor, and beats only
    # while it consumes (workers.supervision).
    watchdog = supervision.watch(sender, settings.task_time_limit)
    queue = os.environ.get(heartbeat.QUEUE_ENV)
    if queue:
        heartbeat.start(queue, getattr(sender, "hostname", None), consuming=watchdog.consuming)
