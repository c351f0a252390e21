"""The one retry policy: what is transient, and how long to wait."""

from __future__ import annotations

import random

import pytest
import redis
from pymilvus import MilvusException
from sqlalchemy.exc import OperationalError

from core.errors import InvalidRequest, NotFound, Unavailable
from ingestion.retry import CAP_SECONDS, backoff, is_transient


@pytest.mark.parametrize(
    "exc",
    [
        ConnectionRefusedError("refused"),
        TimeoutError("the model did not answer"),
        redis.ConnectionError("Redis went away"),
        OperationalError("SELECT 1", {}, Exception("server closed the connection")),
        MilvusException(code=2, message="channel closed"),
        MilvusException(code=65535, message="<_InactiveRpcError: StatusCode.UNAVAILABLE>"),
        Unavailable("Milvus is not reachable"),
        type("OutOfMemoryError", (RuntimeError,), {})("CUDA out of memory"),
    ],
)
def test_transient_failures(exc: BaseException) -> None:
    assert is_transient(exc)


@pytest.mark.parametrize(
    "exc",
    [
        InvalidRequest("image could not be decoded"),
        NotFound("no media object"),
        OSError("no-such-model is not a folder"),
        ValueError("bad tensor shape"),
        MilvusException(code=1100, message="invalid parameter"),
    ],
)
def test_permanent_failures(exc: BaseException) -> None:
    assert not is_transient(exc)


def test_a_wrapped_connection_error_is_transient() -> None:
    outer = RuntimeError("upsert failed")
    outer.__cause__ = ConnectionResetError("reset")
    assert is_transient(outer)


def test_backoff_grows_is_capped_and_jittered() -> None:
    rng = random.Random(7)
    delays = [backoff(attempt, rng) for attempt in range(1, 12)]
    assert all(0.5 * min(CAP_SECONDS, 2 ** (a - 1)) <= d for a, d in enumerate(delays, 1))
    assert all(d <= CAP_SECONDS for d in delays)
    assert delays[5] > delays[0]
    assert len({round(backoff(3, rng), 6) for _ in range(20)}) > 1  # jitter: not all equal
