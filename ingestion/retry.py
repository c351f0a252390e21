"""The one retry policy: what is worth another try, and when.

Retryable: the failure says nothing about the work itself. Every write the engine makes is
idempotent (an upsert by primary key, a delete by ids, a flush, a drop), so any error the
Milvus server answers is retried, whatever its code: a restarted server answers with
session and node-id errors (``session not found``, ``node not match``) for as long as it
takes to recover its channels. So are a connection lost or refused, a timeout, the database
unavailable and the GPU out of memory. Only an error caused by the input is permanent: a
client-side check of the data (dimension, type, schema) or the server's "invalid parameter",
and everything outside Milvus that is not a failure of the surroundings (a document that
cannot be decoded, a model folder that does not exist).

A retryable failure is tried again after ``backoff`` (1 s doubling to at most
``CAP_SECONDS``, the upper half jittered) until it has been failing for the settings' time
budget (``UMARVEL_INGEST_RETRY_SECONDS``), not for a number of attempts: an outage of any
length up to the budget heals by itself, and a chunk retries within ``CAP_SECONDS`` of its
dependency's return.
"""

from __future__ import annotations

import random

from core.errors import Unavailable

BASE_SECONDS = 1.0
CAP_SECONDS = 60.0

_TRANSIENT_NAMES = {
    "OutOfMemoryError",  # torch.cuda.OutOfMemoryError: a smaller batch or a later try fits
    "ConnectionError",
    "TimeoutError",
    "OperationalError",  # SQLAlchemy: the database went away or refused us
}
# pymilvus' own checks of the data, made before anything is sent: the input is wrong.
_MILVUS_INPUT_ERRORS = {
    "ParamError",
    "DataTypeNotMatchException",
    "DataTypeNotSupportException",
    "DataNotMatchException",
    "PrimaryKeyException",
    "PartitionKeyException",
    "FieldsTypeException",
    "FieldTypeException",
    "AutoIDException",
    "CannotInferSchemaException",
}
# The server's own word that a parameter is wrong (merr's ParameterInvalid, -Missing).
_MILVUS_INPUT_CODES = {1100, 1101}


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
        if _is_milvus(current):
            return not _is_milvus_input_error(current)
        current = current.__cause__ or current.__context__
    return False


def _is_milvus(exc: BaseException) -> bool:
    return type(exc).__module__.split(".")[0] == "pymilvus"


def _is_milvus_input_error(exc: BaseException) -> bool:
    if any(cls.__name__ in _MILVUS_INPUT_ERRORS for cls in type(exc).__mro__):
        return True
    return getattr(exc, "code", None) in _MILVUS_INPUT_CODES


def backoff(attempt: int, rng: random.Random | None = None) -> float:
    """Seconds before try ``attempt + 1``: exponential, capped, with full jitter on half."""
    ceiling = min(CAP_SECONDS, BASE_SECONDS * 2 ** max(0, min(attempt, 32) - 1))
    return ceiling / 2 + (rng or random).uniform(0, ceiling / 2)


REASON_CHARS = 600


def reason(exc: BaseException) -> str:
    """How a failure is recorded for people: the exception's type and message. A Milvus
    server error carries its Go stack trace in the message: only its ends are kept."""
    text = f"{type(exc).__name__}: {exc}"
    if len(text) <= REASON_CHARS:
        return text
    return f"{text[: REASON_CHARS // 3]} … {text[-REASON_CHARS // 2 :]}"
