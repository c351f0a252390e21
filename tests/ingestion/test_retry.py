"""The one retry policy: what is transient, and how long to wait."""

from __future__ import annotations

import random

import pytest
import redis
from pymilvus import MilvusException
from pymilvus.exceptions import DataNotMatchException, ParamError
from sqlalchemy.exc import OperationalError

from core.errors import InvalidRequest, NotFound, Unavailable
from ingestion.retry import CAP_SECONDS, REASON_CHARS, backoff, is_transient, reason


@pytest.mark.parametrize(
    "exc",
    [
        ConnectionRefusedError("refused"),
        TimeoutError("the model did not answer"),
        redis.ConnectionError("Redis went away"),
        OperationalError("SELECT 1", {}, Exception("server closed the connection")),
        MilvusException(code=2, message="channel closed"),
        MilvusException(code=65535, message="<_InactiveRpcError: StatusCode.UNAVAILABLE>"),
        # What a restarted Milvus server answers while it recovers its channels.
        MilvusException(
            code=65535,
            message="attempt #0: session not found->datanode-3: node not found[node=3]: "
            "unrecoverable error",
        ),
        MilvusException(
            code=65535, message="attempt #3: node not match[expectedNodeID=4][actualNodeID=5]"
        ),
        MilvusException(code=101, message="failed to search: collection not loaded"),
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
        ParamError(message="the dim (16) of field data(vector) is not equal to schema dim (8)"),
        DataNotMatchException(message="The data does not match the schema"),
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


def test_a_milvus_stack_trace_is_recorded_by_its_ends() -> None:
    trace = "\n".join(f"/milvus/internal/file{i}.go:{i} github.com/milvus-io/x" for i in range(60))
    exc = MilvusException(code=65535, message=f"attempt #0: stack trace: {trace}: node not found")
    recorded = reason(exc)
    assert len(recorded) <= REASON_CHARS + 3
    assert recorded.startswith("MilvusException")
    assert recorded.endswith("node not found)>")
