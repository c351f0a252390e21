"""The Redis client of the API and the workers: reconnecting, counting round trips, and
knowing which server run it reached (``store.fences`` needs that after a restart)."""

from __future__ import annotations

from typing import Any

import redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.connection import Connection, SSLConnection, UnixDomainSocketConnection
from redis.retry import Retry

from core.metrics import REDIS_ROUND_TRIPS

# Every key this service writes starts with it.
PREFIX = "umarvel"


# The run_id of the Redis server each client's connections last reached, by server address:
# it changes when the server restarts or a replica is promoted (store.fences).
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
