"""Running outbox entries: transient failures retried with backoff, permanent ones recorded;
what the API accepted is in the outbox with its rows, and nothing is left of what it refused."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
import redis
from flask.testing import FlaskClient
from pymilvus import MilvusException
from sqlalchemy import func, select

from ingestion import engine, sweep
from ingestion.outbox import Kind
from recall.index import MilvusIndex
from store.redis import make_redis
from store.tables import Document, IngestJob, OutboxEntry, utcnow
from tests.helpers import entries, error, run_entries
from workers.runtime import Runtime


def _submit(client: FlaskClient, docs: list[dict[str, Any]]) -> dict[str, Any]:
    response = client.post("/v1/collections/docs/documents", json={"documents": docs})
    assert response.status_code == 202, response.json
    return dict(response.json)


def test_a_transient_failure_is_retried_later(
    pipeline_env: tuple[FlaskClient, Runtime], monkeypatch: pytest.MonkeyPatch, redis_url: str
) -> None:
    client, rt = pipeline_env
    job = _submit(client, [{"id": "a", "text": "a"}])
    (entry,) = entries(rt, job["id"])
    original = MilvusIndex.upsert

    def flaky(self: MilvusIndex, name: str, rows: Any, fields: Any = None) -> None:
        raise ConnectionResetError("Milvus connection reset")

    monkeypatch.setattr(MilvusIndex, "upsert", flaky)
    redis.Redis.from_url(redis_url).delete("ingest")
    outcome = engine.run(rt, entry.id)
    assert outcome["outcome"] == "retrying"
    with rt.sessions() as session:
        row = session.get_one(OutboxEntry, entry.id)
        assert (row.attempts, "ConnectionResetError" in str(row.last_error)) == (1, True)
        assert row.not_before > utcnow()
        assert session.get_one(Document, entry.payload["documents"][0]).status == "pending"
    # The retry is on its way, held back by its countdown.
    assert redis.Redis.from_url(redis_url).llen("ingest") == 1
    monkeypatch.setattr(MilvusIndex, "upsert", original)
    assert engine.run(rt, entry.id)["outcome"] == "done"
    assert client.get(job["url"]).json["state"] == "done"
    assert entries(rt) == []


def test_retryable_failures_are_retried_for_the_time_budget_then_given_up(
    pipeline_env: tuple[FlaskClient, Runtime], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Retried for UMARVEL_INGEST_RETRY_SECONDS from the first failure, however many tries
    that takes; then the documents fail, marked retryable (reconciliation sends them again)."""
    client, rt = pipeline_env
    job = _submit(client, [{"id": "a", "text": "a"}])
    (entry,) = entries(rt, job["id"])
    restarting = MilvusException(
        code=65535, message="attempt #3: session not found->datanode-3: node not found"
    )
    monkeypatch.setattr(MilvusIndex, "upsert", lambda *a: (_ for _ in ()).throw(restarting))
    outcomes = [engine.run(rt, entry.id)["outcome"] for _ in range(12)]
    assert outcomes == ["retrying"] * 12  # an attempt count never ends it
    with rt.sessions.begin() as session:
        row = session.get_one(OutboxEntry, entry.id)
        first = row.failing_since
        assert first is not None
        assert row.attempts == 12
        # The budget has run out since the first failure (as if it had been failing that long).
        row.failing_since = first - timedelta(seconds=rt.settings.ingest_retry_seconds)
    assert engine.run(rt, entry.id)["outcome"] == "failed"
    failed = client.get(job["url"]).json
    assert (failed["state"], failed["failed"]) == ("done", 1)
    assert failed["errors"][0]["message"].startswith("gave up after 13 attempts in ")
    assert "node not found" in failed["errors"][0]["message"]
    with rt.sessions() as session:
        doc = session.scalars(select(Document).where(Document.ingest_job_id == job["id"])).one()
        assert (doc.status, doc.retryable) == ("failed", True)
    assert entries(rt) == []


def test_a_permanent_failure_fails_its_documents_with_the_reason(
    pipeline_env: tuple[FlaskClient, Runtime], monkeypatch: pytest.MonkeyPatch
) -> None:
    client, rt = pipeline_env
    job = _submit(client, [{"id": "a", "text": "a"}, {"id": "b", "text": "b"}])
    monkeypatch.setattr(
        MilvusIndex, "upsert", lambda *a: (_ for _ in ()).throw(ValueError("schema mismatch"))
    )
    assert [o["outcome"] for o in run_entries(rt, job["id"])] == ["failed"]
    failed = client.get(job["url"]).json
    assert (failed["state"], failed["done"], failed["failed"]) == ("done", 0, 2)
    assert {e["id"] for e in failed["errors"]} == {"a", "b"}
    assert all("schema mismatch" in e["message"] for e in failed["errors"])
    with rt.sessions() as session:  # the content's fault: nothing sends it again by itself
        assert not any(session.scalars(select(Document.retryable)))


def test_what_is_accepted_is_recorded_with_its_rows(
    pipeline_env: tuple[FlaskClient, Runtime], redis_url: str
) -> None:
    client, rt = pipeline_env
    docs = [{"id": f"d{i}", "text": f"document {i}"} for i in range(5)]
    job = _submit(client, docs)
    chunks = entries(rt, job["id"])
    assert [c.payload["documents"] for c in chunks] == _row_ids(rt, job["id"], [2, 2, 1])
    assert redis.Redis.from_url(redis_url).llen("ingest") == 3  # sent after the commit
    # A refused request leaves nothing behind.
    assert error(client.post("/v1/collections/docs/documents", json={"documents": []}), 400)
    bad = client.post("/v1/collections/nope/documents", json={"documents": docs})
    assert error(bad, 404)
    with rt.sessions() as session:
        assert session.scalar(select(func.count()).select_from(IngestJob)) == 1
        assert session.scalar(select(func.count()).select_from(OutboxEntry)) == 3


def _row_ids(rt: Runtime, job_id: str, sizes: list[int]) -> list[list[int]]:
    with rt.sessions() as session:
        ids = list(
            session.scalars(
                select(Document.id).where(Document.ingest_job_id == job_id).order_by(Document.id)
            )
        )
    out, start = [], 0
    for size in sizes:
        out.append(ids[start : start + size])
        start += size
    return out


def test_a_send_that_fails_after_the_commit_is_sent_by_the_sweep(
    pipeline_env: tuple[FlaskClient, Runtime], monkeypatch: pytest.MonkeyPatch, redis_url: str
) -> None:
    client, rt = pipeline_env
    services = client.application.extensions["umarvel"]

    def broken(*args: Any, **kwargs: Any) -> None:
        raise redis.ConnectionError("Redis went away after the commit")

    monkeypatch.setattr(services, "send", broken)
    job = _submit(client, [{"id": "a", "text": "a"}])  # accepted: the rows and entry are in SQL
    assert redis.Redis.from_url(redis_url).llen("ingest") == 0
    (entry,) = entries(rt, job["id"])
    rt.redis.delete(sweep.LOCK)
    assert sweep.sweep(rt, 30) == []  # suspected once
    rt.redis.delete(sweep.LOCK)
    assert sweep.sweep(rt, 30) == [entry.id]
    assert redis.Redis.from_url(redis_url).llen("ingest") == 1


def test_redis_down_refuses_ingestion_before_writing_anything(
    pipeline_env: tuple[FlaskClient, Runtime], monkeypatch: pytest.MonkeyPatch
) -> None:
    client, rt = pipeline_env
    services = client.application.extensions["umarvel"]
    # The API's Redis client now points at a port where nothing listens (the key's grant
    # is still read through the fences' client, so the request gets past auth).
    monkeypatch.setattr(services, "redis", make_redis("redis://127.0.0.1:9/0"))
    response = client.post(
        "/v1/collections/docs/documents", json={"documents": [{"id": "a", "text": "a"}]}
    )
    assert error(response, 503)
    assert response.headers["Retry-After"]
    with rt.sessions() as session:
        assert session.scalar(select(func.count()).select_from(Document)) == 0
        assert session.scalar(select(func.count()).select_from(OutboxEntry)) == 0


def test_deletes_and_drops_are_in_the_outbox(pipeline_env: tuple[FlaskClient, Runtime]) -> None:
    client, rt = pipeline_env
    job = _submit(client, [{"id": "a", "text": "a"}, {"id": "b", "text": "b"}])
    run_entries(rt, job["id"])
    served = client.get("/v1/collections/docs").json["milvus_collection"]
    assert rt.index.count(served) == 2
    assert client.delete("/v1/collections/docs/documents/a").status_code == 204
    (delete,) = entries(rt, kind=Kind.DELETE)
    assert delete.payload["ids"] == ["a"]
    run_entries(rt, kind=Kind.DELETE)
    assert rt.index.count(served) == 1
    assert client.delete("/v1/collections/docs").status_code == 204
    assert len(entries(rt, kind=Kind.DROP)) == 1  # it outlives the collection's rows
    run_entries(rt, kind=Kind.DROP)
    assert not rt.index.exists(served)
    assert entries(rt) == []
