"""The newest write to each Milvus collection, carried from its writers to its searchers.

Ingestion records the timestamp that Milvus returned for each upsert and delete
(``recall.index.MilvusIndex.written``) before it reports the documents indexed in SQL; a
query step reads it and searches at it (``UMARVEL_MILVUS_SEARCH_CONSISTENCY=LastWrite``).
So a search sees every write acknowledged before its query job was accepted, and waits for
the server only while the server has not yet applied the newest of them, instead of
waiting for the next time tick on every search as ``Strong`` does.

The value only grows: one Lua script compares and sets, so a writer that records late
never lowers what a later write recorded. A reader gets ``None``, and searches ``Strong``,
never possibly stale, when nothing is recorded (Redis lost it), when Redis cannot be
reached, or when the value was recorded in another lifetime of the Redis server (its
``run_id``: restarted from an older snapshot or failed over to a lagging replica, it could
hold an older value), as ``store.fences`` does for its copies.
"""

from __future__ import annotations

import contextlib
from typing import cast

import redis

from core.errors import Unavailable
from store.redis import PREFIX, server_run

DIGITS = 20  # a Milvus timestamp is a uint64; zero-padded, Lua compares it as a string
# (Lua's numbers are doubles: two timestamps a few logical ticks apart compare equal).

# KEYS: the collection's key. ARGV: the writer's Redis server run, the padded timestamp.
_RECORD = """
local run = redis.call('HGET', KEYS[1], 'run')
local ts = redis.call('HGET', KEYS[1], 'ts')
if run ~= ARGV[1] or not ts or ts < ARGV[2] then
  redis.call('HSET', KEYS[1], 'run', ARGV[1], 'ts', ARGV[2])
  return 1
end
return 0
"""


def written_key(collection: str) -> str:
    """The Redis key of the Milvus collection ``collection`` (its full Milvus name)."""
    return f"{PREFIX}:milvus-written:{collection}"


def record_write(client: redis.Redis, collection: str, timestamp: int | None) -> None:
    """Raise the recorded write timestamp of ``collection`` to ``timestamp`` (never lower
    it); nothing for ``None`` (milvus-lite: its searches are always strong). Raises
    ``Unavailable`` when Redis cannot record it: the write must then not be reported done,
    since searches could miss it."""
    if timestamp is None:
        return
    try:
        if not server_run(client):  # no connection yet: make one, which reads the run
            client.ping()
        run = server_run(client)
        script = client.register_script(_RECORD)
        script(keys=[written_key(collection)], args=[run, f"{timestamp:0{DIGITS}d}"])
    except redis.RedisError as exc:
        raise Unavailable(f"Redis could not record a write to {collection}: {exc}") from exc


def last_write(client: redis.Redis, collection: str) -> int | None:
    """The newest recorded write timestamp of ``collection``; ``None`` when it is unknown
    (the search must then be ``Strong``)."""
    try:
        found = client.hmget(written_key(collection), ["run", "ts"])
        run, timestamp = cast(list[bytes | None], found)
    except redis.RedisError:
        return None
    if run is None or timestamp is None or run.decode() != server_run(client):
        return None
    return int(timestamp)


def forget_writes(client: redis.Redis, collection: str) -> None:
    """``collection`` was dropped: its record goes too (a reader finding none searches
    ``Strong``). Best effort: a record left behind is harmless."""
    with contextlib.suppress(redis.RedisError):
        client.delete(written_key(collection))
