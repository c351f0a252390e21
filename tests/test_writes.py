"""The newest Milvus write of each collection in Redis (``store.writes``): it only grows,
and whatever Redis cannot vouch for reads as unknown (a ``Strong`` search)."""

from __future__ import annotations

import pytest

from core.errors import Unavailable
from store.redis import make_redis, server_run
from store.writes import forget_writes, last_write, record_write, written_key

# Milvus timestamps are ~2**58: physical milliseconds << 18, plus a logical counter. Two of
# them a tick apart are the same double, so the comparison must not go through one.
BASE = 470_987_319_707_959_300


def test_the_recorded_write_only_grows(redis_url: str) -> None:
    client = make_redis(redis_url)
    assert last_write(client, "c") is None  # nothing recorded: search Strong
    record_write(client, "c", BASE)
    assert last_write(client, "c") == BASE
    record_write(client, "c", BASE + 1)
    assert last_write(client, "c") == BASE + 1
    record_write(client, "c", BASE)  # a writer whose write landed earlier records late
    assert last_write(client, "c") == BASE + 1
    record_write(client, "c", None)  # milvus-lite: nothing to record
    assert last_write(client, "c") == BASE + 1
    record_write(client, "c", 10 * BASE)  # one more digit
    assert last_write(client, "c") == 10 * BASE
    assert last_write(client, "other") is None  # per collection
    forget_writes(client, "c")
    assert last_write(client, "c") is None


def test_a_value_from_another_redis_lifetime_is_not_trusted(redis_url: str) -> None:
    """A Redis restarted from an older snapshot, or a promoted replica, has another run_id:
    what it holds may be older than the newest write, so it is not used, and the next
    write replaces it even with a lower timestamp."""
    client = make_redis(redis_url)
    record_write(client, "c", BASE)
    assert server_run(client)  # the client knows its server's run
    client.hset(written_key("c"), "run", "a-run-before-the-restart")
    assert last_write(client, "c") is None
    record_write(client, "c", BASE - 5)
    assert last_write(client, "c") == BASE - 5


def test_without_redis_searches_are_strong_and_writes_are_not_done() -> None:
    client = make_redis("redis://127.0.0.1:1/0")  # nothing listens there
    assert last_write(client, "c") is None
    with pytest.raises(Unavailable):
        record_write(client, "c", BASE)
    forget_writes(client, "c")  # best effort
