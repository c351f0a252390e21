"""Collections and API keys, read from Redis on the query path, never stale.

A cached query answer needs the caller's key (scopes, collections) and the collection's
metadata (uid, version, models, rerank defaults, fields), both SQL rows. Reading them from
Redis instead saves the query path two SQL round trips; SQL stays the record, and a copy in
Redis is used only while it provably matches it.

Each record ("collection:<name>", or "keys" for every API key) has a *fence*, a unique
token, and a *busy* count of writers in flight. A copy carries the fence its reader saw
before reading SQL, and is filled only if that fence has not moved and no writer is busy
(one Lua script, atomic in Redis). A session that changes a record moves the fence (a fresh
token) and counts itself busy before it commits (a failure there aborts the commit), and
moves the fence again and leaves after it commits. So:

- a copy filled before a writer began is dropped by the writer's first move;
- a reader whose SQL read overlapped the writer's commit saw a fence that the writer's
  second move leaves behind;
- if Redis fails between the commit and the second move, the writer stays counted busy
  (for ``BUSY_SECONDS``): no copy is filled meanwhile, and readers go to SQL.

Redis itself can go back: restarted from an RDB snapshot taken before a change, failed
over to a replica that had not yet received it, or with a fence key evicted. Two rules keep
such a Redis from bringing back what an admin took away (a revoked key, a deleted
collection's answers):

- a fence is never a counter that can come back to an old value: each move writes a fresh
  token, and a missing fence validates no copy (a reader that finds none sets a fresh one,
  which no copy carries);
- a copy is used only in the lifetime of the Redis server that it was filled in (its
  ``run_id``, read once per connection): a restarted or promoted server has another, so a
  copy restored from a snapshot, fence and all, is never used.

The session events in ``watch`` do the writers' part for every ORM change to a
``Collection`` or ``ApiKey`` row; bulk ``UPDATE``/``DELETE`` statements on those tables are
refused, as they would slip past them. A row changed by hand in SQL is seen once its
copies expire (``TTL_SECONDS``), or at once after ``umarvel cache clear``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import redis
from sqlalchemy import event
from sqlalchemy.orm import ORMExecuteState, Session, sessionmaker

from core.errors import Unavailable
from store.redis import PREFIX, server_run
from store.tables import ApiKey, Collection

log = logging.getLogger(__name__)

TTL_SECONDS = 300  # a copy's lifetime: bounds what a change made by hand in SQL leaves
BUSY_SECONDS = 300  # how long a writer that could not say it finished counts as busy
TOUCHED = "fenced_records"  # Session.info: records this transaction changes
BEGUN = "fenced_begun"  # Session.info: records whose writers are counted busy

# KEYS: fence, busy, copy. ARGV: the fence the reader saw ('' for none), the copy, its
# lifetime, the fresh fence to set when there was none (the copy carries it then).
_FILL = """
local fence = redis.call('GET', KEYS[1])
if ARGV[1] == '' then
  if fence then return 0 end
  redis.call('SET', KEYS[1], ARGV[4])
elseif fence ~= ARGV[1] then
  return 0
end
if tonumber(redis.call('GET', KEYS[2]) or '0') > 0 then return 0 end
redis.call('SET', KEYS[3], ARGV[2], 'EX', ARGV[3])
return 1
"""
# KEYS: fence, busy. ARGV: a fresh fence. The writer's last move; never counts below zero.
_LEAVE = """
redis.call('SET', KEYS[1], ARGV[1])
if tonumber(redis.call('GET', KEYS[2]) or '0') > 0 then redis.call('DECR', KEYS[2]) end
return 1
"""


def new_fence() -> str:
    return uuid.uuid4().hex


KEYS_RECORD = "keys"


def collection_record(name: str) -> str:
    return f"collection:{name}"


@dataclass(frozen=True)
class Lookup:
    """What a reader found for one record: the copy (when usable) and the fence it saw
    (``None``: the record has none yet, or Redis lost it)."""

    value: Any | None
    fence: str | None


class Fences:
    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self._fill = client.register_script(_FILL)
        self._leave = client.register_script(_LEAVE)

    @staticmethod
    def _keys(record: str) -> tuple[str, str]:
        return f"{PREFIX}:fence:{record}", f"{PREFIX}:busy:{record}"

    @staticmethod
    def copy_key(record: str, entry: str) -> str:
        return f"{PREFIX}:copy:{record}:{entry}"

    def read(self, wanted: Sequence[tuple[str, str]]) -> list[Lookup]:
        """(record, entry) pairs, in one round trip; a copy is usable only when it carries
        the current fence, was filled in this Redis server's lifetime, and no writer is
        busy."""
        return self.read_counting(wanted)[0]

    def read_counting(
        self, wanted: Sequence[tuple[str, str]], counter: str | None = None
    ) -> tuple[list[Lookup], int | None]:
        """``read``, and in the same round trip one more count on ``counter`` (a per-second
        counter: it expires after two); the count is None without a counter."""
        keys: list[str] = []
        for record, entry in wanted:
            keys += [*self._keys(record), self.copy_key(record, entry)]
        pipe = self.client.pipeline(transaction=False)
        pipe.mget(keys)
        if counter is not None:
            pipe.incr(counter)
            pipe.expire(counter, 2)
        replies = pipe.execute()
        values, count = replies[0], (int(replies[1]) if counter is not None else None)
        run = server_run(self.client)  # of the connection the round trip just used
        found = []
        for position in range(0, len(values), 3):
            fence, busy, raw = values[position : position + 3]
            seen = _text(fence)
            copy = json.loads(raw) if raw is not None else None
            usable = (
                copy is not None
                and seen is not None
                and copy["fence"] == seen
                and copy.get("run") == run
                and int(busy or 0) <= 0
            )
            found.append(Lookup(copy["value"] if usable and copy else None, seen))
        return found, count

    def fill(self, record: str, entry: str, seen: str | None, value: Any) -> bool:
        """Store ``value`` (read from SQL after ``seen`` was read) unless a writer came by."""
        fence, busy = self._keys(record)
        fresh = new_fence()
        run = server_run(self.client)
        copy = json.dumps({"fence": seen or fresh, "run": run, "value": value})
        keys = [fence, busy, self.copy_key(record, entry)]
        return bool(self._fill(keys=keys, args=[seen or "", copy, TTL_SECONDS, fresh]))

    def through(
        self, record: str, entry: str, load: Callable[[], Any], found: Lookup | None = None
    ) -> Any:
        """The copy of ``entry`` when usable, else ``load()`` (from SQL), kept for next
        time. Redis failing costs only the saving: ``load`` answers. ``found``: what a
        ``read`` earlier in the same request saw, to save the round trip."""
        if found is None:
            try:
                (found,) = self.read([(record, entry)])
            except redis.RedisError:
                return load()
        if found.value is not None:
            return found.value
        value = load()
        with contextlib.suppress(redis.RedisError):
            self.fill(record, entry, found.fence, value)
        return value

    def begin(self, records: Iterable[str]) -> None:
        """Before a commit that changes ``records``: copies stop being used or filled."""
        pipe = self.client.pipeline()
        for record in records:
            fence, busy = self._keys(record)
            pipe.set(fence, new_fence())
            pipe.incr(busy)
            pipe.expire(busy, BUSY_SECONDS)
        try:
            pipe.execute()
        except redis.RedisError as exc:
            raise Unavailable(f"Redis is unreachable; nothing was changed: {exc}") from exc

    def leave(self, records: Iterable[str]) -> None:
        """After the commit (or a rollback): copies may be filled again from SQL."""
        for record in records:
            try:
                self._leave(keys=list(self._keys(record)), args=[new_fence()])
            except redis.RedisError:
                log.warning(
                    "record %s stays fenced for up to %d s (Redis unreachable after a commit)",
                    record,
                    BUSY_SECONDS,
                    exc_info=True,
                )

    def clear(self) -> int:
        """Forget every copy (after rows were changed by hand in SQL); returns how many."""
        removed = 0
        for key in self.client.scan_iter(f"{PREFIX}:copy:*", count=1000):
            removed += int(self.client.delete(key))
        return removed


def _text(value: bytes | str | None) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


def _record_of(row: object) -> str | None:
    if isinstance(row, Collection):
        return collection_record(row.name)
    if isinstance(row, ApiKey):
        return KEYS_RECORD
    return None


FENCED_TABLES = frozenset({Collection.__tablename__, ApiKey.__tablename__})


def watch(factory: sessionmaker[Session], fences: Fences) -> None:
    """Fence every change the factory's sessions make to collections and API keys."""

    @event.listens_for(factory, "before_flush")
    def _note(session: Session, _context: Any, _instances: Any) -> None:
        touched: set[str] = session.info.setdefault(TOUCHED, set())
        for row in (*session.dirty, *session.deleted):
            record = _record_of(row)
            if record is not None:
                touched.add(record)

    @event.listens_for(factory, "do_orm_execute")
    def _refuse_bulk(state: ORMExecuteState) -> None:
        table = getattr(state.statement, "table", None)
        if (state.is_update or state.is_delete) and getattr(table, "name", None) in FENCED_TABLES:
            raise RuntimeError(
                f"change {table.name} rows through the ORM: bulk statements bypass the "  # type: ignore[union-attr]
                "metadata fences (store.fences)"
            )

    @event.listens_for(factory, "before_commit")
    def _begin(session: Session) -> None:
        session.flush()  # the commit's own flush comes after this hook
        records = sorted(session.info.get(TOUCHED, ()))
        if records:
            fences.begin(records)
            session.info[BEGUN] = records

    def _end(session: Session, *_: Any) -> None:
        session.info.pop(TOUCHED, None)
        begun = session.info.pop(BEGUN, None)
        if begun:
            fences.leave(begun)

    event.listen(factory, "after_commit", _end)
    event.listen(factory, "after_rollback", _end)
