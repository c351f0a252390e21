"""429 before a queue grows without bound; queries and ingestion are counted apart, so a
large ingestion never turns queries away (and queries never block an ingestion)."""

from __future__ import annotations

from collections.abc import Iterable

from api.services import Services
from core.contract import Queue
from core.errors import Overloaded

RETRY_AFTER_SECONDS = 2


def check_backpressure(svc: Services, queues: Iterable[Queue], limit: int) -> None:
    """Overloaded (429 with Retry-After) when ``queues`` hold ``limit`` tasks or more."""
    names = [queue.value for queue in queues]
    lengths = svc.redis.pipeline(transaction=False)
    for name in names:
        lengths.llen(name)
    depth = sum(lengths.execute())  # one round trip for every queue
    if depth >= limit:
        raise Overloaded(
            f"the {'/'.join(names)} queue holds {depth} tasks (limit {limit}); retry shortly",
            {"limit": "queue", "allowed": limit, "retry_after": RETRY_AFTER_SECONDS},
        )
