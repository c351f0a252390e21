"""Query traffic, as ingestion sees it: query steps mark it, ingestion pieces wait for a gap."""

from __future__ import annotations

import contextlib
import time

import redis

from store.redis import PREFIX

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
