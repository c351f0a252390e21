"""Finished-job notices, read through one subscription per process.

A worker publishes on a job's channel once the job has finished and its outcome is
committed (``notify_finished`` below). A process that waits for jobs (the API) keeps
one pub/sub connection, subscribed to the pattern of every job's channel and read by one
thread, which wakes the requests waiting for the job a notice names. A request opening and
closing a subscription of its own instead cost a Redis connection (a TCP handshake and
its setup commands) per query, under a pool lock every waiting request contends for.

A request starts watching before it sends its job, and watching waits until the
subscription is confirmed, so no notice can be missed while it is up. While Redis is
away the thread reconnects with back-off; waiters never rely on a notice alone (they
re-read their job after a bounded wait), so a notice lost in an outage costs a delay.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import redis

from store.redis import PREFIX


def job_channel(job_id: str) -> str:
    return f"{PREFIX}:job-finished:{job_id}"


def notify_finished(client: redis.Redis, job_id: str) -> None:
    """Wake the requests waiting on ``job_id`` (they re-read its state from SQL)."""
    client.publish(job_channel(job_id), b"1")


log = logging.getLogger(__name__)

PATTERN = job_channel("*")
CHANNEL_PREFIX = job_channel("")
READY_SECONDS = 2.0  # the longest a first watcher waits for the subscription


class JobNotices:
    """Wakes the threads watching a job when its finished notice arrives."""

    def __init__(self, client: redis.Redis) -> None:
        self._client = client
        self._lock = threading.Lock()
        self._watchers: dict[str, set[threading.Event]] = {}
        self._thread: threading.Thread | None = None
        self._subscribed = threading.Event()
        self._stopped = threading.Event()

    @contextmanager
    def watch(self, job_id: str) -> Iterator[threading.Event]:
        """An event set when ``job_id``'s finished notice arrives, for the block's length."""
        self._start()
        event = threading.Event()
        with self._lock:
            self._watchers.setdefault(job_id, set()).add(event)
        try:
            yield event
        finally:
            with self._lock:
                watchers = self._watchers.get(job_id, set())
                watchers.discard(event)
                if not watchers:
                    self._watchers.pop(job_id, None)

    @property
    def subscribed(self) -> bool:
        return self._subscribed.is_set()

    def close(self) -> None:
        self._stopped.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _start(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._stopped.clear()
                self._thread = threading.Thread(target=self._run, name="job-notices", daemon=True)
                self._thread.start()
        self._subscribed.wait(READY_SECONDS)

    def _run(self) -> None:
        delay = 0.05
        while not self._stopped.is_set():
            pubsub = self._client.pubsub()
            try:
                pubsub.psubscribe(PATTERN)
                while not self._stopped.is_set():
                    message = pubsub.get_message(timeout=1.0)
                    if message is None:
                        continue
                    if message["type"] == "psubscribe":
                        self._subscribed.set()
                        delay = 0.05
                    elif message["type"] == "pmessage":
                        self._wake(message["channel"])
            except (redis.RedisError, OSError) as exc:
                log.warning("job notices: Redis subscription lost (%s); retrying", exc)
                self._stopped.wait(delay)
                delay = min(delay * 2, 1.0)  # back within READY_SECONDS of Redis
            finally:
                self._subscribed.clear()
                pubsub.close()

    def _wake(self, channel: bytes | str) -> None:
        name = channel.decode() if isinstance(channel, bytes) else channel
        job_id = name[len(CHANNEL_PREFIX) :]
        with self._lock:
            for event in self._watchers.get(job_id, ()):
                event.set()
