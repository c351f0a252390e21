"""A worker process either consumes, or ends with a non-zero status for its supervisor.

Celery stops a worker whose consumer failed for good (an "Unrecoverable error", or a broker
that stayed unreachable through every reconnection attempt) with a warm shutdown, which
waits for the running tasks. The threads pool cannot interrupt a task, so a single stuck
task would keep alive, forever, a worker that consumes nothing. Meanwhile its heartbeat
would still tell ``/statusz`` that the queue is served.

``watch`` starts a daemon thread for the life of the worker:

- ``consuming()`` says whether the consumer holds a broker connection and the worker runs;
  the heartbeat beats only then, so ``/statusz`` and ``umarvel ready`` never count a worker
  that is reconnecting or stopping;
- once the worker has begun to stop, it gets ``grace`` seconds (the task time limit and a
  margin: a warm shutdown may wait that long for its tasks); past that the watchdog ends
  the process with status 1, without waiting for any thread.

The exit status itself reaches the supervisor through ``cli.main`` (``_exit_with``).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from celery import bootsteps

log = logging.getLogger(__name__)

FORCED_EXIT_STATUS = 1
SHUTDOWN_MARGIN_SECONDS = 30.0


class Watchdog:
    def __init__(
        self,
        consumer: Any,
        grace: float,
        *,
        interval: float = 1.0,
        exit: Callable[[int], object] = os._exit,
    ) -> None:
        self.consumer = consumer  # Celery's Consumer: the sender of ``worker_ready``
        self.grace = grace
        self.interval = interval
        self._exit = exit

    def stopping(self) -> bool:
        controller = getattr(self.consumer, "controller", None)
        state = getattr(getattr(controller, "blueprint", None), "state", None)
        return state is not None and state != bootsteps.RUN

    def consuming(self) -> bool:
        return getattr(self.consumer, "connection", None) is not None and not self.stopping()

    def run(self) -> None:
        since: float | None = None
        while True:
            if self.stopping():
                since = time.monotonic() if since is None else since
                if time.monotonic() - since > self.grace:
                    log.critical(
                        "worker still stopping after %.0f s: ending it with status %d",
                        self.grace,
                        FORCED_EXIT_STATUS,
                    )
                    logging.shutdown()
                    self._exit(FORCED_EXIT_STATUS)
                    return
            time.sleep(self.interval)


def watch(consumer: Any, task_time_limit: float) -> Watchdog:
    watchdog = Watchdog(consumer, grace=task_time_limit + SHUTDOWN_MARGIN_SECONDS)
    threading.Thread(target=watchdog.run, name="watchdog", daemon=True).start()
    return watchdog
