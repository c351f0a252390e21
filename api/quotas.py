"""Per-key quotas, shared by every API process through Redis (SQL for queued jobs), the
way multi-tenant search services meter their tenants: no key can take the capacity that
the others need.

- **Rate**: requests per second per key (``UMARVEL_KEY_RATE_LIMIT``), counted in a Redis
  counter per key and second, read in the same round trip as the key's grant; over it a
  429 with ``Retry-After`` naming the limit.
- **Waiting**: query POSTs of one key held waiting for their job at once
  (``UMARVEL_KEY_MAX_WAITING``), in a Redis sorted set of deadlines (a crashed process's
  entries expire by themselves). A POST beyond it is not refused: it answers 202 at once,
  with the job to poll, instead of holding an API thread that another key needs.
- **Queued**: query jobs of one key queued or running at once (``UMARVEL_KEY_MAX_QUEUED``),
  counted in SQL when the key would start a new job; over it a 429, before the shared
  queue's own limit turns every key away.

Each key may have its own quotas (``umarvel keys quotas``); 0 means no limit. Refusals are
``Overloaded`` with ``details``: ``limit`` (which one), ``allowed`` and ``retry_after``.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta

import redis
from sqlalchemy import func, select

from api.services import Services
from core.errors import Overloaded
from store.db import session_scope
from store.keys import Grant
from store.redis import PREFIX
from store.states import RUNNING_QUERY
from store.tables import QueryJob, utcnow

RATE_RETRY_SECONDS = 1
QUEUED_RETRY_SECONDS = 2


def rate_counter(digest: str) -> str:
    """The Redis counter of a key's requests in the current second (by the key's hash)."""
    return f"{PREFIX}:rate:{digest[:32]}:{int(time.time())}"


def _allowed(own: float | None, default: float) -> float:
    return default if own is None else own


def check_rate(svc: Services, grant: Grant, count: int | None) -> None:
    """429 when ``count`` (this second's requests of the key, None: not counted) is over
    its rate."""
    allowed = _allowed(grant.quotas.rate, svc.settings.key_rate_limit)
    if count is not None and allowed > 0 and count > allowed:
        raise Overloaded(
            f"this API key made more than {allowed:g} requests in one second; retry shortly",
            {"limit": "rate", "allowed": allowed, "retry_after": RATE_RETRY_SECONDS},
        )


def check_queued(svc: Services, grant: Grant | None) -> None:
    """429 when the key has its whole allowance of query jobs queued or running (jobs
    whose messages were lost stop counting after twice the task time limit)."""
    if grant is None:
        return
    allowed = int(_allowed(grant.quotas.queued, svc.settings.key_max_queued))
    if allowed <= 0:
        return
    since = utcnow() - timedelta(seconds=2 * svc.settings.task_time_limit)
    with session_scope(svc.sessions) as session:
        running = session.scalar(
            select(func.count())
            .select_from(QueryJob)
            .where(
                QueryJob.api_key_id == grant.id,
                QueryJob.status.in_(list(RUNNING_QUERY)),
                QueryJob.created_at > since,
            )
        )
    if (running or 0) >= allowed:
        raise Overloaded(
            f"this API key has {running} query jobs queued or running (limit {allowed}); "
            "retry when some have finished",
            {"limit": "queued", "allowed": allowed, "retry_after": QUEUED_RETRY_SECONDS},
        )


@contextlib.contextmanager
def waiting_slot(svc: Services, grant: Grant | None, seconds: float) -> Iterator[bool]:
    """Whether this request may hold its thread waiting ``seconds`` for its job: a slot
    of the key's waiting allowance, given back when the block ends."""
    allowed = (
        0 if grant is None else int(_allowed(grant.quotas.waiting, svc.settings.key_max_waiting))
    )
    if seconds <= 0 or allowed <= 0:
        yield True
        return
    slots = f"{PREFIX}:waiting:{grant.id}"  # type: ignore[union-attr]
    token, now = uuid.uuid4().hex, time.time()
    try:
        pipe = svc.redis.pipeline(transaction=False)
        pipe.zremrangebyscore(slots, "-inf", now)  # slots of requests that died waiting
        pipe.zadd(slots, {token: now + seconds + 5})
        pipe.zcard(slots)
        pipe.expire(slots, int(seconds) + 10)
        taken = int(pipe.execute()[2])
    except redis.RedisError:
        yield True  # no count without Redis: the request is answered as usual
        return
    if taken > allowed:
        with contextlib.suppress(redis.RedisError):
            svc.redis.zrem(slots, token)
        yield False
        return
    try:
        yield True
    finally:
        with contextlib.suppress(redis.RedisError):
            svc.redis.zrem(slots, token)
