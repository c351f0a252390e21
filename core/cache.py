"""Redis result cache and in-flight locks.

A result key carries every version that can change the answer: the collection's name and
version, the recall and rerank model ids, and a hash of the normalised request. A write
to a collection bumps its version, so a stale result is never served.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from typing import Any

import redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.connection import Connection, SSLConnection, UnixDomainSocketConnection
from redis.retry import Retry

from core.metrics import REDIS_ROUND_TRIPS

PREFIX = "umarvel"


def request_hash(request: dict[str, Any]) -> str:
    canonical = json.dumps(request, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def result_key(
    collection_uid: str,
    version: int,
    recall_model: str,
    rerank_model: str,
    request: dict[str, Any],
) -> str:
    """``collection_uid`` is unique per created collection, ``version`` bumps on each write."""
    models = hashlib.sha256(f"{recall_model}\0{rerank_model}".encode()).hexdigest()[:16]
    return f"{PREFIX}:result:{collection_uid}:v{version}:{models}:{request_hash(request)}"


class ResultCache:
    def __init__(self, client: redis.Redis, ttl_seconds: int) -> None:
        self.client = client
        self.ttl = ttl_seconds

    def get(self, key: str) -> dict[str, Any] | None:
        raw = self.client.get(key)
        return None if raw is None else json.loads(raw)

    def put(self, key: str, value: dict[str, Any]) -> None:
        self.client.set(key, json.dumps(value), ex=self.ttl)

    def claim(self, key: str, job_id: str, ttl_seconds: int) -> str:
        """Register ``job_id`` as the job computing ``key``; returns the job that holds it."""
        lock = f"{PREFIX}:inflight:{key}"
        if self.client.set(lock, job_id, nx=True, ex=ttl_seconds):
            return job_id
        holder = self.client.get(lock)
        if holder is None:  # expired in between: ours to take next time
            return job_id
        return holder.decode() if isinstance(holder, bytes) else str(holder)

    def release(self, key: str) -> None:
        self.client.delete(f"{PREFIX}:inflight:{key}")


# The run_id of the Redis server each client's connections last reached, by server address:
# it changes when the server restarts or a replica is promoted (core.fences).
_SERVER_RUNS: dict[str, str] = {}


def _server_address(kwargs: dict[str, Any]) -> str:
    return f"{kwargs.get('path') or kwargs.get('host')}:{kwargs.get('port')}"


def server_run(client: redis.Redis) -> str:
    """The run_id of the server ``client`` last connected to ('' until it has, or when the
    server does not tell)."""
    return _SERVER_RUNS.get(_server_address(client.connection_pool.connection_kwargs), "")


def _counting(base: type[Any]) -> type[Any]:
    class Counting(base):
        """Counts each packet sent: one command, or one whole pipeline. Each new connection
        also reads its server's run_id (one INFO per connection, not per command)."""

        def send_packed_command(self, command: Any, check_health: bool = True) -> None:
            REDIS_ROUND_TRIPS.inc()
            super().send_packed_command(command, check_health)

        def on_connect_check_health(self, check_health: bool = True) -> None:
            super().on_connect_check_health(check_health=check_health)
            try:
                self.send_command("INFO", "server", check_health=False)
                info = self.read_response()
            except redis.ResponseError:  # INFO refused (an ACL): no restart detection
                return
            text = info.decode() if isinstance(info, bytes) else str(info)
            for line in text.splitlines():
                if line.startswith("run_id:"):
                    where = {key: getattr(self, key, None) for key in ("host", "port", "path")}
                    _SERVER_RUNS[_server_address(where)] = line.split(":", 1)[1].strip()

    Counting.__name__ = f"Counting{base.__name__}"
    return Counting


_COUNTING = {cls: _counting(cls) for cls in (Connection, SSLConnection, UnixDomainSocketConnection)}


def _connection_class(url: str) -> type[Any]:
    scheme = url.split("://", 1)[0]
    if scheme == "rediss":
        return SSLConnection
    return UnixDomainSocketConnection if scheme == "unix" else Connection


def make_redis(url: str) -> redis.Redis:
    """The cache, lock and pub/sub client of the API and the workers.

    A command that meets a dropped connection (Redis restarted, a failover) reconnects and
    runs again, with exponential backoff and jitter (five tries, 1-2 s in all, at most
    2.5 s), before the error reaches the caller (the API answers 503). A pub/sub object
    reconnects the same way and subscribes again to its channels. A pooled connection idle
    for 30 s is checked with a PING before use; keepalive notices a peer that vanished.
    """
    return redis.Redis.from_url(
        url,
        connection_class=_COUNTING[_connection_class(url)],
        socket_connect_timeout=2,
        socket_timeout=5,
        socket_keepalive=True,
        health_check_interval=30,
        retry=Retry(ExponentialWithJitterBackoff(base=0.05, cap=1.0), retries=5),
    )


def job_channel(job_id: str) -> str:
    return f"{PREFIX}:job-finished:{job_id}"


def notify_finished(client: redis.Redis, job_id: str) -> None:
    """Wake the requests waiting on ``job_id`` (they re-read its state from SQL)."""
    client.publish(job_channel(job_id), b"1")


QUERIES_ACTIVE = f"{PREFIX}:queries-active"
ACTIVE_MS = 300  # a query step marks query traffic for this long


def mark_queries_active(client: redis.Redis) -> None:
    """A query step is running: ingestion pieces wait for a gap (``yield_to_queries``)."""
    with contextlib.suppress(redis.RedisError):
        client.set(QUERIES_ACTIVE, b"1", px=ACTIVE_MS)


def yield_to_queries(client: redis.Redis, longest: float, poll: float = 0.02) -> float:
    """Wait, at most ``longest`` seconds, until no query step has run for ``ACTIVE_MS``;
    returns the seconds waited. Ingestion thus takes the gaps in query traffic, and under
    a query stream that never pauses it still moves, one piece per ``longest`` seconds."""
    started = time.monotonic()
    deadline = started + longest
    try:
        while time.monotonic() < deadline and client.exists(QUERIES_ACTIVE):
            time.sleep(poll)
    except redis.RedisError:
        pass  # Redis away: nothing to yield to that we can see
    return time.monotonic() - started
