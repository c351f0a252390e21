"""Reindex, step by step in process: the API, the outbox entries run as a worker would, real
SQL, Redis, milvus-lite and tiny models. The order of events is forced here, which a live
stack cannot do."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
from flask.testing import FlaskClient
from sqlalchemy import select, update

from ingestion import engine, outbox
from ingestion.outbox import Kind
from recall.index import milvus_name
from recall.prompts import Candidate
from recall.service import RecallService
from store.tables import Collection, Document, OutboxEntry, utcnow
from tests.helpers import entries, error, ingest_in_process, run_entries, sweep_now
from workers.runtime import Runtime


@pytest.fixture
def env(pipeline_env: tuple[FlaskClient, Runtime]) -> tuple[FlaskClient, Runtime]:
    return pipeline_env


def _ingest(client: FlaskClient, rt: Runtime, docs: list[dict[str, Any]]) -> None:
    ingest_in_process(client, rt, docs)


def _storage(rt: Runtime) -> str:
    with rt.sessions() as session:
        return session.scalars(select(Collection)).one().storage_name


def _name(rt: Runtime, generation: int) -> str:
    return milvus_name(rt.settings.milvus_prefix, _storage(rt), generation)


def _vectors(rt: Runtime, generation: int) -> dict[str, np.ndarray]:
    rows = rt.index.client.query(
        _name(rt, generation), filter='id != ""', output_fields=["id", "vector"], limit=1000
    )
    return {row["id"]: np.asarray(row["vector"], dtype=np.float32) for row in rows}


def _embedding(rt: Runtime, model: Path, text: str) -> np.ndarray:
    return np.asarray(rt.embedder(str(model)).encode_candidates([Candidate(text=text)])[0])


def _queued(redis_url: str) -> list[int]:
    """Outbox entry ids of the messages waiting on the ingest queue, oldest first."""
    found = []
    for raw in reversed(redis.Redis.from_url(redis_url).lrange("ingest", 0, -1)):
        message = json.loads(raw)
        found.append(json.loads(base64.b64decode(message["body"]))[0][0])
    return found


def _run(rt: Runtime, entry: outbox.Entry) -> dict[str, Any]:
    return engine.run(rt, entry.id)


def test_reindex_builds_beside_the_served_generation_then_switches(
    env: tuple[FlaskClient, Runtime], tiny_models: dict[str, Path], redis_url: str
) -> None:
    client, rt = env
    qwen2, qwen3 = tiny_models["qwen2_vl"], tiny_models["qwen3_vl"]
    _ingest(client, rt, [{"id": f"d{i}", "text": f"document {i}"} for i in range(5)])
    before = client.get("/v1/collections/docs").json
    assert (before["generation"], before["reindex"]) == (1, None)

    response = client.post("/v1/collections/docs/reindex", json={"recall_model": str(qwen2)})
    assert response.status_code == 202, response.json
    job = response.json
    assert (job["kind"], job["state"], job["total"]) == ("reindex", "queued", 5)
    building = client.get("/v1/collections/docs").json
    assert building["reindex"]["generation"] == 2
    assert building["reindex"]["recall_model"] == str(qwen2)
    assert (building["generation"], building["recall_model"]) == (1, str(qwen3))
    assert (
        "already being reindexed"
        in error(client.post("/v1/collections/docs/reindex"), 409)["message"]
    )
    (plan,) = entries(rt, job["id"])
    assert plan.kind == Kind.PLAN
    assert _queued(redis_url)[-1] == plan.id  # sent after the commit

    assert _run(rt, plan)["chunks"] == 3
    chunks = entries(rt, job["id"], Kind.REINDEX)
    assert [len(c.payload["documents"]) for c in chunks] == [2, 2, 1]
    assert _run(rt, chunks[0])["outcome"] == "done"
    # Still serving generation 1 with the old model; generation 2 is half built.
    assert client.get("/v1/collections/docs").json["generation"] == 1
    assert len(_vectors(rt, 2)) == 2

    # Writes during the build go to both generations, each with its own model.
    _ingest(client, rt, [{"id": "d3", "text": "changed"}, {"id": "new", "text": "a new one"}])
    for doc_id, text in (("d3", "changed"), ("new", "a new one")):
        np.testing.assert_allclose(_vectors(rt, 1)[doc_id], _embedding(rt, qwen3, text), atol=1e-5)
        np.testing.assert_allclose(_vectors(rt, 2)[doc_id], _embedding(rt, qwen2, text), atol=1e-5)
    # A delete is recorded for both generations.
    assert client.delete("/v1/collections/docs/documents/d4").status_code == 204
    (delete,) = entries(rt, kind=Kind.DELETE)
    assert delete.payload == {"storage": _storage(rt), "generations": [1, 2], "ids": ["d4"]}
    _run(rt, delete)

    # d3 is already in generation 2 and d4 is gone: the second chunk (d2, d3) completes it.
    assert _run(rt, chunks[1])["indexed"] == 1
    assert _run(rt, chunks[2])["indexed"] == 0  # switched already: nothing left to build
    assert _run(rt, chunks[1])["outcome"] == "done before"  # a replayed message
    after = client.get("/v1/collections/docs").json
    assert (after["generation"], after["recall_model"], after["reindex"]) == (2, str(qwen2), None)
    assert after["version"] > building["version"]
    done = client.get(job["url"]).json
    assert (done["state"], done["done"], done["total"]) == ("done", 5, 5)
    ids = {"d0", "d1", "d2", "d3", "new"}
    assert set(_vectors(rt, 2)) == ids  # Milvus count equals SQL count, d4 gone
    for doc_id, text in (("d0", "document 0"), ("d3", "changed")):
        np.testing.assert_allclose(_vectors(rt, 2)[doc_id], _embedding(rt, qwen2, text), atol=1e-5)
    # Generation 1 is dropped later, by an entry not due before the drop delay.
    (drop,) = entries(rt, kind=Kind.DROP)
    assert drop.payload["generations"] == [1]
    with rt.sessions() as session:
        assert session.get(OutboxEntry, drop.id).not_before > utcnow()
    _run(rt, drop)
    assert not rt.index.exists(_name(rt, 1))
    assert entries(rt) == []


def test_a_slow_chunk_never_overwrites_a_newer_write(
    env: tuple[FlaskClient, Runtime],
    tiny_models: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    client, rt = env
    qwen2 = tiny_models["qwen2_vl"]
    _ingest(client, rt, [{"id": "a", "text": "old text"}, {"id": "b", "text": "b"}])
    job = client.post("/v1/collections/docs/reindex", json={"recall_model": str(qwen2)}).json
    with rt.sessions.begin() as session:  # the plan, cut by hand: b first, then a alone
        a_id, b_id = session.scalars(select(Document.id).order_by(Document.external_id)).all()
        outbox.complete(session, entries(rt, job["id"])[0].id)
        only_b = outbox.add(session, Kind.REINDEX, {"documents": [b_id]}, job_id=job["id"])
        only_a = outbox.add(session, Kind.REINDEX, {"documents": [a_id]}, job_id=job["id"])
        b_entry, a_entry = outbox.Entry.of(only_b), outbox.Entry.of(only_a)
    _run(rt, b_entry)  # b is built
    original = RecallService.upsert
    calls: list[str] = []

    def upsert(self: Any, target: str, *args: Any, **kwargs: Any) -> Any:
        calls.append(target)
        if len(calls) == 1:  # the chunk has embedded "old text"; a client updates it, and
            # its ingestion writes both generations and completes the build (the switch)
            # before the chunk's own upsert of the old text lands
            _ingest(client, rt, [{"id": "a", "text": "new text"}])
            assert client.get("/v1/collections/docs").json["generation"] == 2
        return original(self, target, *args, **kwargs)

    monkeypatch.setattr(RecallService, "upsert", upsert)
    _run(rt, a_entry)
    # The stale write was checked and repaired: the changed document was written again.
    assert calls.count(_name(rt, 2)) == 3  # the chunk's, the ingestion's, the repair
    np.testing.assert_allclose(_vectors(rt, 2)["a"], _embedding(rt, qwen2, "new text"), atol=1e-5)


def _reindex_with_a_missing_model(
    client: FlaskClient, rt: Runtime, tmp_path: Path
) -> dict[str, Any]:
    _ingest(client, rt, [{"id": "a", "text": "a"}])
    missing = str(tmp_path / "no-such-model")
    return dict(client.post("/v1/collections/docs/reindex", json={"recall_model": missing}).json)


def test_a_failed_reindex_keeps_serving_and_never_reuses_its_generation(
    env: tuple[FlaskClient, Runtime], tmp_path: Path
) -> None:
    client, rt = env
    job = _reindex_with_a_missing_model(client, rt, tmp_path)
    run_entries(rt, job["id"])  # the plan
    (chunk,) = entries(rt, job["id"])
    assert _run(rt, chunk)["outcome"] == "failed"  # a model that cannot load: for good
    failed = client.get(job["url"]).json
    assert failed["state"] == "failed"
    assert "no-such-model" in failed["errors"][-1]["message"]
    collection = client.get("/v1/collections/docs").json
    assert (collection["generation"], collection["reindex"]) == (1, None)
    (drop,) = entries(rt, kind=Kind.DROP)  # the partial generation goes
    assert drop.payload["generations"] == [2]
    again = client.post("/v1/collections/docs/reindex").json
    assert client.get("/v1/collections/docs").json["reindex"]["generation"] == 3
    run_entries(rt, again["id"])  # plan
    run_entries(rt, again["id"])  # chunk, and the switch
    assert client.get("/v1/collections/docs").json["generation"] == 3


def test_a_failing_new_generation_never_fails_ingestion(
    env: tuple[FlaskClient, Runtime], tmp_path: Path
) -> None:
    client, rt = env
    job = _reindex_with_a_missing_model(client, rt, tmp_path)
    _ingest(client, rt, [{"id": "b", "text": "b"}])  # generation 2's model cannot load
    assert client.get("/v1/collections/docs/documents/b").json["status"] == "indexed"
    assert set(_vectors(rt, 1)) == {"a", "b"}
    assert client.get(job["url"]).json["state"] == "queued"
    # b is owed to the build: an entry of its own retries it there.
    with rt.sessions() as session:
        b_id = session.scalar(select(Document.id).where(Document.external_id == "b"))
    retry = entries(rt, job["id"], Kind.REINDEX)
    assert [entry.payload["documents"] for entry in retry] == [[b_id]]


def test_a_lost_plan_or_switch_is_recovered(
    env: tuple[FlaskClient, Runtime], redis_url: str
) -> None:
    client, rt = env
    _ingest(client, rt, [{"id": "a", "text": "a"}])
    job = client.post("/v1/collections/docs/reindex").json
    redis.Redis.from_url(redis_url).delete("ingest")  # the plan's message was lost
    (plan,) = entries(rt, job["id"])
    assert sweep_now(rt) == []  # suspected once: it could have been in transit
    assert sweep_now(rt) == [plan.id]
    assert _queued(redis_url) == [plan.id]
    run_entries(rt, job["id"])
    run_entries(rt, job["id"])
    assert client.get(job["url"]).json["state"] == "done"
    # A build whose last chunk ended before switching is switched by the sweep.
    job = client.post("/v1/collections/docs/reindex").json
    with rt.sessions.begin() as session:
        session.execute(update(Document).values(generation=3))  # built, never switched
        for entry in entries(rt, job["id"]):
            outbox.complete(session, entry.id)
    sweep_now(rt)
    assert client.get("/v1/collections/docs").json["generation"] == 3


def test_reindex_requests_are_validated(env: tuple[FlaskClient, Runtime]) -> None:
    client, rt = env
    assert error(client.post("/v1/collections/nope/reindex"), 404)
    bad = client.post("/v1/collections/docs/reindex", json={"recall_model": ""})
    assert error(bad, 400)
    extra = client.post("/v1/collections/docs/reindex", json={"model": "x"})
    assert error(extra, 400)
    # An empty collection switches as soon as its (empty) plan is made.
    job = client.post("/v1/collections/docs/reindex").json
    assert run_entries(rt, job["id"])[0]["chunks"] == 0
    assert client.get("/v1/collections/docs").json["generation"] == 2


def test_a_document_sent_again_never_holds_up_its_first_job(
    env: tuple[FlaskClient, Runtime],
) -> None:
    client, rt = env
    first = client.post(
        "/v1/collections/docs/documents",
        json={"documents": [{"id": "x", "text": "first"}, {"id": "y", "text": "y"}]},
    ).json
    _ingest(client, rt, [{"id": "x", "text": "second"}])  # x now belongs to the second job
    run_entries(rt, first["id"])
    done = client.get(first["url"]).json
    assert (done["state"], done["done"]) == ("done", 1)
    assert client.get("/v1/collections/docs/documents/x").json["text"] == "second"
    assert set(_vectors(rt, 1)) == {"x", "y"}
    np.testing.assert_allclose(
        _vectors(rt, 1)["x"], _embedding(rt, Path(rt.settings.recall_model), "second"), atol=1e-5
    )


def test_a_collection_created_again_never_meets_the_old_vectors(
    env: tuple[FlaskClient, Runtime],
) -> None:
    client, _ = env
    before = client.get("/v1/collections/docs").json["milvus_collection"]
    assert client.delete("/v1/collections/docs").status_code == 204
    assert client.post("/v1/collections", json={"name": "docs"}).status_code == 201
    after = client.get("/v1/collections/docs").json["milvus_collection"]
    assert after != before
    assert after.endswith("_g1")


def test_a_collection_made_before_segments_gets_them_from_a_reindex(
    env: tuple[FlaskClient, Runtime],
) -> None:
    """A Milvus collection without segment fields (as every one was) takes a long video as
    one vector of the whole clip, and is still searched; the reindex's new generation
    holds its segments."""
    from pymilvus import DataType, MilvusClient

    from devkit.clips import make_clip
    from devkit.samples import b64
    from media.kinds import VIDEO

    client, rt = env
    old = _name(rt, 1)
    schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=512)
    dim = rt.embedder(rt.settings.recall_model).dim
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
    params = rt.index.client.prepare_index_params()
    params.add_index(field_name="vector", index_type="HNSW", metric_type="COSINE")
    rt.index.client.create_collection(old, schema=schema, index_params=params)
    clip = make_clip(64, 48, 70, 1)  # 70 s: four segments where segments are kept
    _ingest(
        client, rt, [{"id": "v", "text": "a clip", "media": [{"kind": "video", "data": b64(clip)}]}]
    )
    assert not rt.index.segmented(old)
    whole = _vectors(rt, 1)["v"]
    video = VIDEO.decode(clip, rt.settings)
    expected = rt.embedder(rt.settings.recall_model).encode_candidates(
        [Candidate(text="a clip", video=video)]
    )[0]
    np.testing.assert_allclose(whole, expected, atol=1e-5)
    assert [hit.span for hit in rt.index.search(old, whole, 1)] == [None]

    job = client.post("/v1/collections/docs/reindex", json={}).json
    for _ in range(3):  # the plan, its chunk, anything it queued
        for entry in entries(rt, job["id"]):
            _run(rt, entry)
    assert client.get(job["url"]).json["state"] == "done"
    new = _name(rt, 2)
    assert rt.index.segmented(new)
    assert sorted(_vectors(rt, 2)) == ["v", "v\x1f1", "v\x1f2", "v\x1f3"]
    (hit,) = rt.index.search(new, whole, 1)
    assert hit.document_id == "v"
    assert hit.span in [(0.0, 30.0), (15.0, 45.0), (30.0, 60.0), (40.0, 70.0)]
