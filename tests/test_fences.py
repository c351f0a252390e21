"""The query path's copies of API keys and collections in Redis (store.fences), against real
PostgreSQL (and SQLite) and Redis: a cached answer reads no SQL, and no interleaving of a
reader with a writer, nor a writer that loses Redis, leaves a copy that disagrees with SQL."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import redis
from flask.testing import FlaskClient
from sqlalchemy import event, select, update

from api.app import create_app
from cli.stack import RedisServer
from core.errors import Unavailable
from core.settings import Settings
from store.db import make_engine, make_session_factory, session_scope
from store.fences import Fences, collection_record
from store.keys import revoke
from store.redis import make_redis
from store.tables import Collection
from tests.helpers import error, ingest_in_process, make_key, redis_binary
from workers.queries import recall_step
from workers.runtime import Runtime

QUERY = {"text": "document 1", "top_k": 2, "rerank": {"enabled": False}, "wait": 0}


@contextmanager
def _sql_statements(client: FlaskClient) -> Iterator[list[str]]:
    """The SQL statements the API sends meanwhile."""
    engine = client.application.extensions["umarvel"].sessions.kw["bind"]
    seen: list[str] = []

    def note(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        seen.append(statement)

    event.listen(engine, "before_cursor_execute", note)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", note)


def _answered(client: FlaskClient, rt: Runtime, body: dict[str, Any]) -> dict[str, Any]:
    """POST a query and run its recall step in process; the job's finished answer."""
    job = client.post("/v1/collections/docs/queries", json=body).json
    if not job.get("cached"):
        recall_step(rt, job["id"])
    return client.get(f"/v1/queries/{job['id']}").json


def test_a_cached_answer_reads_no_sql(pipeline_env: tuple[FlaskClient, Runtime]) -> None:
    client, rt = pipeline_env
    ingest_in_process(client, rt, [{"id": f"d{i}", "text": f"document {i}"} for i in range(3)])
    first = _answered(client, rt, QUERY)
    assert first["status"] == "done"
    from core.metrics import REDIS_ROUND_TRIPS

    round_trips = REDIS_ROUND_TRIPS._value.get()
    with _sql_statements(client) as statements:
        again = client.post("/v1/collections/docs/queries", json=QUERY)
    round_trips = REDIS_ROUND_TRIPS._value.get() - round_trips
    assert (again.status_code, again.json["cached"]) == (200, True)
    ranked = [hit["document_id"] for hit in first["results"]]
    assert [hit["document_id"] for hit in again.json["results"]] == ranked
    assert statements == []
    # Two trips to Redis: the key's grant and the collection's copy together, then the answer.
    assert round_trips == 2


def test_a_write_makes_the_next_query_read_sql_again(
    pipeline_env: tuple[FlaskClient, Runtime],
) -> None:
    client, rt = pipeline_env
    ingest_in_process(client, rt, [{"id": "d1", "text": "document 1"}])
    _answered(client, rt, QUERY)
    assert client.post("/v1/collections/docs/queries", json=QUERY).json["cached"]
    # A worker's chunk bumps the collection's version: cached answers must not be served.
    ingest_in_process(client, rt, [{"id": "d2", "text": "document 1 again"}])
    with _sql_statements(client) as statements:
        after = client.post("/v1/collections/docs/queries", json=QUERY).json
    assert after["cached"] is False
    assert statements  # the collection was read from SQL, with its new version
    assert {hit["document_id"] for hit in _answered(client, rt, QUERY)["results"]} == {"d1", "d2"}


def test_a_revoked_key_is_refused_at_once(pipeline_env: tuple[FlaskClient, Runtime]) -> None:
    client, rt = pipeline_env
    key = make_key(client.application, ["search"])
    headers = {"Authorization": f"Bearer {key}"}
    for _ in range(2):  # the second request is answered from the grant's copy
        assert client.get("/v1/collections/docs", headers=headers).status_code == 200
    from store.keys import revoke

    with rt.sessions.begin() as session:  # another process: a worker's sessions
        revoke(session, key[:12])
    assert error(client.get("/v1/collections/docs", headers=headers), 401)


def test_a_deleted_collection_is_gone_for_queries_at_once(
    pipeline_env: tuple[FlaskClient, Runtime],
) -> None:
    client, rt = pipeline_env
    ingest_in_process(client, rt, [{"id": "d1", "text": "document 1"}])
    _answered(client, rt, QUERY)
    assert client.delete("/v1/collections/docs").status_code == 204
    assert error(client.post("/v1/collections/docs/queries", json=QUERY), 404)
    assert client.post("/v1/collections", json={"name": "docs"}).status_code == 201
    fresh = client.post("/v1/collections/docs/queries", json=QUERY).json
    assert fresh["cached"] is False  # a new collection of the same name: none of the old


@pytest.fixture
def fences(redis_url: str) -> Fences:
    client = make_redis(redis_url)
    client.flushdb()
    return Fences(client)


RECORD = collection_record("race")


def test_a_copy_read_before_a_write_is_never_filled_or_used_after_it(fences: Fences) -> None:
    (seen,) = fences.read([(RECORD, "searched")])
    fences.begin([RECORD])  # a writer, before its commit ...
    fences.leave([RECORD])  # ... and after it
    assert fences.fill(RECORD, "searched", seen.fence, {"version": 1}) is False
    (now,) = fences.read([(RECORD, "searched")])
    assert now.value is None
    assert fences.fill(RECORD, "searched", now.fence, {"version": 2}) is True
    assert fences.read([(RECORD, "searched")])[0].value == {"version": 2}
    fences.begin([RECORD])  # the next writer: the copy stops being used at once
    assert fences.read([(RECORD, "searched")])[0].value is None


def test_a_lost_fence_validates_no_copy(fences: Fences) -> None:
    """A fence evicted (or never written) is no old value that an old copy could match."""
    (seen,) = fences.read([(RECORD, "searched")])
    assert seen.fence is None
    assert fences.fill(RECORD, "searched", seen.fence, {"version": 1}) is True  # sets a fence
    (filled,) = fences.read([(RECORD, "searched")])
    assert filled.value == {"version": 1}
    assert filled.fence is not None
    fences.client.delete(Fences._keys(RECORD)[0])  # evicted, or a Redis that lost it
    (lost,) = fences.read([(RECORD, "searched")])
    assert (lost.value, lost.fence) == (None, None)
    assert fences.fill(RECORD, "searched", lost.fence, {"version": 2}) is True
    (again,) = fences.read([(RECORD, "searched")])
    assert again.value == {"version": 2}
    assert again.fence != filled.fence  # a fresh token, never the old one


def test_fence_moves_are_unique_tokens(fences: Fences) -> None:
    moves = set()
    for _ in range(3):
        fences.begin([RECORD])
        moves.add(fences.client.get(Fences._keys(RECORD)[0]))
        fences.leave([RECORD])
        moves.add(fences.client.get(Fences._keys(RECORD)[0]))
    assert len(moves) == 6


def test_a_redis_restored_from_an_older_snapshot_brings_nothing_back(
    migrated_url: str, tmp_path: Path, tiny_models: dict[str, Path], milvus_server: dict
) -> None:
    """Redis restarted from an RDB snapshot taken before a key was revoked and a collection
    deleted holds copies whose fences match again: they must not be used."""
    with RedisServer(tmp_path / "redis", binary=redis_binary()) as server:
        settings = Settings(
            database_url=migrated_url,
            redis_url=server.url,
            media_root=tmp_path / "media",
            milvus_uri=str(milvus_server["uri"]),
            milvus_prefix=f"s{uuid.uuid4().hex[:6]}_",
            recall_model=str(tiny_models["qwen3_vl"]),
            device="cpu",
            query_wait_seconds=0,
            model_runners=1,
        )
        client = create_app(settings).test_client()
        admin = {"Authorization": "Bearer " + make_key(client.application, ["admin"])}
        search = {"Authorization": "Bearer " + make_key(client.application, ["search"])}
        rt = Runtime(settings)
        try:
            client.environ_base["HTTP_AUTHORIZATION"] = admin["Authorization"]
            assert client.post("/v1/collections", json={"name": "docs"}).status_code == 201
            ingest_in_process(client, rt, [{"id": "d1", "text": "document 1"}])
            _answered(client, rt, QUERY)
            client.environ_base.pop("HTTP_AUTHORIZATION")
            cached = client.post("/v1/collections/docs/queries", json=QUERY, headers=search)
            assert (cached.status_code, cached.json["cached"]) == (200, True)
            redis.Redis.from_url(
                server.url
            ).save()  # the snapshot: every copy and the cached answer are in it

            with session_scope(client.application.extensions["umarvel"].sessions) as session:
                revoke(session, search["Authorization"].split()[1][:12])
            assert client.delete("/v1/collections/docs", headers=admin).status_code == 204
            server.kill()  # a crash; its supervisor starts it again from the snapshot
            server.start()

            assert error(client.get("/v1/collections", headers=search), 401)
            gone = client.post("/v1/collections/docs/queries", json=QUERY, headers=admin)
            assert error(gone, 404)
        finally:
            rt.index.close()


def test_a_read_that_overlaps_a_commit_fills_nothing(fences: Fences) -> None:
    fences.begin([RECORD])
    (during,) = fences.read([(RECORD, "searched")])  # SQL may still show the old row
    assert fences.fill(RECORD, "searched", during.fence, {"version": 1}) is False
    fences.leave([RECORD])
    assert fences.fill(RECORD, "searched", during.fence, {"version": 1}) is False


def test_a_writer_that_loses_redis_after_its_commit_leaves_the_record_uncached(
    fences: Fences,
) -> None:
    fences.begin([RECORD])  # committed; then Redis went away before ``leave``
    for _ in range(3):
        (seen,) = fences.read([(RECORD, "searched")])
        assert fences.fill(RECORD, "searched", seen.fence, {"version": 1}) is False
        assert seen.value is None  # every reader goes to SQL until the busy mark expires
    ttl = fences.client.ttl(Fences._keys(RECORD)[1])
    assert 0 < ttl <= 300


def test_redis_unreachable_at_commit_aborts_the_change(migrated_url: str) -> None:
    engine = make_engine(migrated_url)
    working = make_session_factory(engine)
    with working.begin() as session:
        session.add(Collection(name="kept", recall_model="m", rerank_k=5, rerank_weight=0.1))
    unreachable = redis.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.2)
    fenced = make_session_factory(engine, unreachable)
    with pytest.raises(Unavailable), fenced.begin() as session:
        session.scalars(select(Collection).where(Collection.name == "kept")).one().rerank_k = 9
    with working() as session:
        kept = session.scalars(select(Collection).where(Collection.name == "kept")).one()
        assert kept.rerank_k == 5
    engine.dispose()


def test_bulk_statements_on_fenced_tables_are_refused(
    pipeline_env: tuple[FlaskClient, Runtime],
) -> None:
    _, rt = pipeline_env
    with pytest.raises(RuntimeError, match="through the ORM"), rt.sessions.begin() as session:
        session.execute(update(Collection).values(version=Collection.version + 1))
