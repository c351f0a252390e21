"""Reindex, step by step in process: the API, the worker steps, real SQL, Redis, milvus-lite
and tiny models. The order of events is forced here, which a live stack cannot do."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
from flask.testing import FlaskClient
from sqlalchemy import select, update

from api.app import create_app
from core.models import Collection, Document
from core.settings import Settings
from recall.index import milvus_name
from recall.prompts import Candidate
from tests.helpers import error, make_key
from workers import pipeline, redrive
from workers.runtime import Runtime


@pytest.fixture
def env(
    migrated_url: str,
    redis_url: str,
    tmp_path: Path,
    tiny_models: dict[str, Path],
    milvus_server: dict[str, Any],
) -> Iterator[tuple[FlaskClient, Runtime]]:
    settings = Settings(
        database_url=migrated_url,
        redis_url=redis_url,
        media_root=tmp_path / "media",
        milvus_uri=str(milvus_server["uri"]),
        milvus_prefix=f"r{uuid.uuid4().hex[:6]}_",
        recall_model=str(tiny_models["qwen3_vl"]),
        ingest_chunk_size=2,
        device="cpu",
    )
    client = create_app(settings).test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = "Bearer " + make_key(client.application, ["admin"])
    assert client.post("/v1/collections", json={"name": "docs"}).status_code == 201
    rt = Runtime(settings)
    yield client, rt
    rt.index.close()


def _ingest(client: FlaskClient, rt: Runtime, docs: list[dict[str, Any]]) -> None:
    """Submit through the API, then run the chunk as a recall worker would."""
    response = client.post("/v1/collections/docs/documents", json={"documents": docs})
    assert response.status_code == 202, response.json
    job_id = response.json["id"]
    with rt.sessions.begin() as session:
        ids = session.scalars(select(Document.id).where(Document.ingest_job_id == job_id)).all()
    pipeline.ingest_chunk(rt, job_id, list(ids))


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


def _queued(redis_url: str, task: str) -> list[list[Any]]:
    """Arguments of the ``task`` messages waiting on the recall queue."""
    found = []
    for raw in redis.Redis.from_url(redis_url).lrange("recall", 0, -1):
        message = json.loads(raw)
        if message["headers"]["task"] == task:
            found.append(json.loads(base64.b64decode(message["body"]))[0])
    return found


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
    assert _queued(redis_url, "recall.reindex") == [[job["id"]]]

    chunks = pipeline.plan_reindex(rt, job["id"])
    assert [len(c) for c in chunks] == [2, 2, 1]
    assert pipeline.reindex_chunk(rt, job["id"], chunks[0])["drop"] is None
    # Still serving generation 1 with the old model; generation 2 is half built.
    assert client.get("/v1/collections/docs").json["generation"] == 1
    assert len(_vectors(rt, 2)) == 2

    # Writes during the build go to both generations, each with its own model.
    _ingest(client, rt, [{"id": "d3", "text": "changed"}, {"id": "new", "text": "a new one"}])
    for doc_id, text in (("d3", "changed"), ("new", "a new one")):
        np.testing.assert_allclose(_vectors(rt, 1)[doc_id], _embedding(rt, qwen3, text), atol=1e-5)
        np.testing.assert_allclose(_vectors(rt, 2)[doc_id], _embedding(rt, qwen2, text), atol=1e-5)
    # A delete is sent for both generations.
    assert client.delete("/v1/collections/docs/documents/d4").status_code == 204
    storage = _storage(rt)
    assert sorted(_queued(redis_url, "recall.delete")) == [
        [storage, 1, ["d4"]],
        [storage, 2, ["d4"]],
    ]
    for generation in (1, 2):
        pipeline.delete_vectors(rt, storage, generation, ["d4"])

    # d3 is already in generation 2 and d4 is gone: the second chunk (d2, d3) completes it.
    outcome = pipeline.reindex_chunk(rt, job["id"], chunks[1])
    assert outcome["drop"] == {"collection": _storage(rt), "generations": [1]}
    assert outcome["indexed"] == 1
    assert pipeline.reindex_chunk(rt, job["id"], chunks[2]) == {  # a late replay: no-op
        "job_id": job["id"],
        "indexed": 0,
        "drop": None,
    }

    after = client.get("/v1/collections/docs").json
    assert (after["generation"], after["recall_model"], after["reindex"]) == (2, str(qwen2), None)
    assert after["version"] > building["version"]
    done = client.get(job["url"]).json
    assert (done["state"], done["done"], done["total"]) == ("done", 5, 5)
    ids = {"d0", "d1", "d2", "d3", "new"}
    assert set(_vectors(rt, 2)) == ids  # Milvus count equals SQL count, d4 gone
    for doc_id, text in (("d0", "document 0"), ("d3", "changed")):
        np.testing.assert_allclose(_vectors(rt, 2)[doc_id], _embedding(rt, qwen2, text), atol=1e-5)
    pipeline.drop_collections(rt, storage, [1])
    assert not rt.index.exists(_name(rt, 1))


def test_a_slow_chunk_never_overwrites_a_newer_write(
    env: tuple[FlaskClient, Runtime],
    tiny_models: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    client, rt = env
    qwen2 = tiny_models["qwen2_vl"]
    _ingest(client, rt, [{"id": "a", "text": "old text"}, {"id": "b", "text": "b"}])
    job = client.post("/v1/collections/docs/reindex", json={"recall_model": str(qwen2)}).json
    (chunk,) = pipeline.plan_reindex(rt, job["id"])
    a_id, b_id = sorted(chunk)
    assert pipeline.reindex_chunk(rt, job["id"], [b_id])["drop"] is None  # b is built
    original = pipeline.RecallService.index_documents
    calls: list[int] = []

    def index_documents(self: Any, *args: Any, **kwargs: Any) -> Any:
        if not calls:  # the chunk has read "old text"; a client updates it, and its
            # ingestion writes both generations and completes the build (the switch)
            # before the chunk's own upsert of the old text lands
            _ingest(client, rt, [{"id": "a", "text": "new text"}])
            assert client.get("/v1/collections/docs").json["generation"] == 2
        calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(pipeline.RecallService, "index_documents", index_documents)
    pipeline.reindex_chunk(rt, job["id"], [a_id])
    assert len(calls) == 2  # the changed document was embedded again, after the switch
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
    (chunk,) = pipeline.plan_reindex(rt, job["id"])
    for _ in range(pipeline.REINDEX_MAX_FAILURES - 1):  # raised: the sweep queues it again
        with pytest.raises(OSError, match="no-such-model"):
            pipeline.reindex_chunk(rt, job["id"], chunk)
        assert client.get(job["url"]).json["state"] == "running"
    outcome = pipeline.reindex_chunk(rt, job["id"], chunk)
    assert outcome["drop"] == {"collection": _storage(rt), "generations": [2]}
    failed = client.get(job["url"]).json
    assert failed["state"] == "failed"
    assert len(failed["errors"]) == pipeline.REINDEX_MAX_FAILURES  # one per failed chunk
    assert "no-such-model" in failed["errors"][-1]["message"]
    collection = client.get("/v1/collections/docs").json
    assert (collection["generation"], collection["reindex"]) == (1, None)
    again = client.post("/v1/collections/docs/reindex").json
    assert client.get("/v1/collections/docs").json["reindex"]["generation"] == 3
    (chunk,) = pipeline.plan_reindex(rt, again["id"])
    assert pipeline.reindex_chunk(rt, again["id"], chunk)["drop"]["generations"] == [1]
    assert client.get("/v1/collections/docs").json["generation"] == 3


def test_a_failing_new_generation_never_fails_ingestion(
    env: tuple[FlaskClient, Runtime], tmp_path: Path
) -> None:
    client, rt = env
    job = _reindex_with_a_missing_model(client, rt, tmp_path)
    _ingest(client, rt, [{"id": "b", "text": "b"}])  # generation 2's model cannot load
    assert client.get("/v1/collections/docs/documents/b").json["status"] == "indexed"
    assert set(_vectors(rt, 1)) == {"a", "b"}
    building = client.get(job["url"]).json  # the failure counts against the build only
    assert (building["state"], len(building["errors"])) == ("queued", 1)
    with rt.sessions() as session:  # b stays outstanding for the build: the sweep retries it
        outstanding = redrive.outstanding(session)
    assert sorted(len(ids) for ids in outstanding.values()) == [2]


def test_a_lost_plan_or_switch_is_recovered(env: tuple[FlaskClient, Runtime]) -> None:
    client, rt = env
    _ingest(client, rt, [{"id": "a", "text": "a"}])
    job = client.post("/v1/collections/docs/reindex").json
    # The plan message was lost: a chunk queued again by the sweep starts the job itself.
    with rt.sessions() as session:
        (doc_id,) = session.scalars(select(Document.id)).all()
    assert pipeline.reindex_chunk(rt, job["id"], [doc_id])["drop"]["generations"] == [1]
    assert client.get(job["url"]).json["state"] == "done"
    # A build whose last chunk failed before switching is switched by the sweep.
    job = client.post("/v1/collections/docs/reindex").json
    with rt.sessions.begin() as session:
        session.execute(update(Document).values(generation=3))  # built, never switched
    assert redrive.built(rt.sessions()) == [job["id"]]
    rt.redis.delete(redrive.LOCK)
    redrive.sweep(rt, 30)
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
    assert pipeline.plan_reindex(rt, job["id"]) == []
    assert pipeline.maybe_switch(rt, job["id"]) == {"collection": _storage(rt), "generations": [1]}
    assert client.get("/v1/collections/docs").json["generation"] == 2


def test_without_a_sweep_a_failing_chunk_gives_up_at_once(
    env: tuple[FlaskClient, Runtime], tmp_path: Path
) -> None:
    client, rt = env
    job = _reindex_with_a_missing_model(client, rt, tmp_path)
    no_sweep = Runtime(rt.settings.model_copy(update={"redrive_seconds": 0}))
    (chunk,) = pipeline.plan_reindex(no_sweep, job["id"])
    outcome = pipeline.reindex_chunk(no_sweep, job["id"], chunk)  # nothing would retry it
    assert outcome["drop"] == {"collection": _storage(rt), "generations": [2]}
    assert client.get(job["url"]).json["state"] == "failed"


def test_a_document_sent_again_never_holds_up_its_first_job(
    env: tuple[FlaskClient, Runtime],
) -> None:
    client, rt = env
    first = client.post(
        "/v1/collections/docs/documents",
        json={"documents": [{"id": "x", "text": "first"}, {"id": "y", "text": "y"}]},
    ).json
    _ingest(client, rt, [{"id": "x", "text": "second"}])  # x now belongs to the second job
    with rt.sessions() as session:
        ids = session.scalars(select(Document.id).where(Document.external_id == "y")).all()
    pipeline.ingest_chunk(rt, first["id"], list(ids))
    done = client.get(first["url"]).json
    assert (done["state"], done["done"]) == ("done", 1)
    assert client.get("/v1/collections/docs/documents/x").json["text"] == "second"


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
