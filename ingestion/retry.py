"""The one retry policy: what is worth another try, and when.

Transient: the failure says nothing about the work itself (a connection lost or refused, a
timeout, Milvus or the database unavailable, the GPU out of memory); the same work is tried
again later, with exponential backoff and jitter, up to ``MAX_ATTEMPTS``. Everything else
is permanent: the work (or the one document it is about) fails, with its reason.
"""

from __future__ import annotations

import random

from core.errors import Unavailable

MAX_ATTEMPTS = 8
BASE_SECONDS = 1.0
CAP_SECONDS = 300.0

_TRANSIENT_NAMES = {
    "OutOfMemoryError",  # torch.cuda.OutOfMemoryError: a smaller batch or a later try fits
    "ConnectionError",
    "TimeoutError",
    "OperationalError",  # SQLAlchemy: the database went away or refused us
    "MilvusUnavailableException",
}
_TRANSIENT_TEXT = ("UNAVAILABLE", "DEADLINE_EXCEEDED", "CONNECTION REFUSED", "CONNECT FAILED")


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) is a failure of the surroundings, not the work."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, (Unavailable, ConnectionError, TimeoutError)):
            return True
        if any(cls.__name__ in _TRANSIENT_NAMES for cls in type(current).__mro__):
            return True
        if _is_transient_milvus(current):
            return True
        current = current.__cause__ or current.__context__
    return False


def _is_transient_milvus(exc: BaseException) -> bool:
    if type(exc).__module__.split(".")[0] != "pymilvus":
        return False
    code = getattr(exc, "code", None)
    return code in (1, 2) or any(text in str(exc).upper() for text in _TRANSIENT_TEXT)


def backoff(attempt: int, rng: random.Random | None = None) -> float:
    """Seconds before try ``attempt + 1``: exponential, capped, with full jitter on half."""
    ceiling = min(CAP_SECONDS, BASE_SECONDS * 2 ** max(0, attempt - 1))
    return ceiling / 2 + (rng or random).uniform(0, ceiling / 2)


def reason(exc: BaseException) -> str:
    """How a failure is recorded for people: the exception's type and message."""
    return f"{type(exc).__name__}: {exc}"
