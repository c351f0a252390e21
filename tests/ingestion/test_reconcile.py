"""Reconciliation against real SQL, Redis and milvus-lite: vectors Milvus lost are
re-embedded by a repair job, vectors SQL no longer has are deleted, documents that failed
while their vectors were written (or failed for an outage) are written again, busy
collections are left alone, and a late delete never removes a document that was sent
again. Search never serves a document SQL does not hold as indexed."""

from __future__ import annotations

import numpy as np
import pytest
from flask.testing import FlaskClient
from sqlalchemy import update

from ingestion import reconcile
from recall.index import milvus_name
from store.tables import Collection, Document
from store.writes import record_write
from tests.helpers import entries, ingest_in_process, run_entries
from workers.queries import recall_step
from workers.runtime import Runtime


def _served(rt: Runtime) -> str:
    with rt.sessions() as session:
        docs = session.query(Collection).filter_by(name="docs").one()
        return milvus_name(rt.settings.milvus_prefix, docs.storage_name, docs.generation)


def _docs(n: int, prefix: str = "d") -> list[dict[str, str]]:
    return [{"id": f"{prefix}{i}", "text": f"document {prefix} {i}"} for i in range(n)]


def _collection_id(rt: Runtime) -> int:
    with rt.sessions() as session:
        return session.query(Collection).filter_by(name="docs").one().id


@pytest.mark.both_milvus
def test_vectors_milvus_lost_are_embedded_again_by_a_repair_job(
    pipeline_env: tuple[FlaskClient, Runtime],
) -> None:
    client, rt = pipeline_env
    ingest_in_process(client, rt, _docs(5))
    name = _served(rt)
    rt.index.delete(name, ["d1", "d3"])  # what a milvus-lite kill -9 can forget
    rt.index.flush(name)
    assert rt.index.count(name) == 3

    (repair,) = reconcile.reconcile(rt)
    assert (repair.milvus, repair.indexed, repair.missing, repair.orphans) == (
        3,
        5,
        ["d1", "d3"],
        [],
    )
    job = client.get(f"/v1/ingest-jobs/{repair.job_id}").json
    assert (job["kind"], job["total"], job["state"]) == ("repair", 2, "queued")
    counts = client.get("/v1/collections/docs").json["documents"]
    assert (counts["indexed"], counts["pending"]) == (3, 2)

    run_entries(rt, repair.job_id)
    assert sorted(rt.index.ids(name)) == [f"d{i}" for i in range(5)]
    job = client.get(f"/v1/ingest-jobs/{repair.job_id}").json
    assert (job["state"], job["done"], job["failed"]) == ("done", 2, 0)
    assert client.get("/v1/collections/docs").json["documents"]["indexed"] == 5
    assert reconcile.reconcile(rt) == []  # it agrees now


def test_a_lost_milvus_collection_is_rebuilt_from_sql(
    pipeline_env: tuple[FlaskClient, Runtime],
) -> None:
    client, rt = pipeline_env
    ingest_in_process(client, rt, _docs(3))
    name = _served(rt)
    rt.index.drop(name)  # a volume restored empty

    (repair,) = reconcile.reconcile(rt)
    assert (repair.milvus, repair.missing) == (0, ["d0", "d1", "d2"])
    run_entries(rt, repair.job_id)
    assert rt.index.count(name) == 3


@pytest.mark.both_milvus
def test_vectors_sql_no_longer_has_are_deleted(pipeline_env: tuple[FlaskClient, Runtime]) -> None:
    client, rt = pipeline_env
    ingest_in_process(client, rt, _docs(2))
    name = _served(rt)
    (row,) = rt.index.client.query(name, filter='id == "d0"', output_fields=["vector"])
    dim = len(row["vector"])
    ghost = np.ones(dim, dtype=np.float32) / np.sqrt(dim)
    rt.index.upsert(name, [{"id": "ghost", "vector": ghost.tolist()}])  # a delete that came undone
    rt.index.flush(name)

    (repair,) = reconcile.reconcile(rt)
    assert (repair.missing, repair.orphans, repair.job_id) == ([], ["ghost"], None)
    run_entries(rt, kind="delete")
    assert sorted(rt.index.ids(name)) == ["d0", "d1"]


def test_a_collection_with_work_owed_is_not_judged(
    pipeline_env: tuple[FlaskClient, Runtime],
) -> None:
    client, rt = pipeline_env
    ingest_in_process(client, rt, _docs(2))
    # Accepted, not yet written: Milvus is behind SQL by design until the chunks run.
    client.post("/v1/collections/docs/documents", json={"documents": _docs(3, "new")})
    rt.index.delete(_served(rt), ["d0"])
    assert reconcile.check(rt, _collection_id(rt)) is None
    run_entries(rt)
    (repair,) = reconcile.reconcile(rt)  # quiet now: the lost vector is found
    assert repair.missing == ["d0"]


def test_counts_that_agree_cost_no_id_comparison(
    pipeline_env: tuple[FlaskClient, Runtime],
) -> None:
    client, rt = pipeline_env
    ingest_in_process(client, rt, _docs(3))
    calls: list[str] = []
    ids = rt.index.ids
    rt.index.ids = lambda name, batch=5000: calls.append(name) or ids(name, batch)  # type: ignore[method-assign]
    assert reconcile.check(rt, _collection_id(rt)) is None
    assert calls == []


def test_reconciliation_runs_once_per_interval_across_workers(
    pipeline_env: tuple[FlaskClient, Runtime],
) -> None:
    _, rt = pipeline_env
    rt.redis.delete(reconcile.LOCK)
    assert reconcile.due(rt) is True
    assert reconcile.due(rt) is False  # another worker, moments later


def test_a_late_delete_keeps_a_document_that_was_sent_again(
    pipeline_env: tuple[FlaskClient, Runtime],
) -> None:
    client, rt = pipeline_env
    ingest_in_process(client, rt, _docs(2))
    assert client.delete("/v1/collections/docs/documents/d0").status_code == 204
    (delete,) = entries(rt, kind="delete")
    ingest_in_process(client, rt, [{"id": "d0", "text": "written again"}])
    run_entries(rt, kind="delete")  # the delete's message arrives late (a replay)
    assert delete.id not in {entry.id for entry in entries(rt)}
    assert sorted(rt.index.ids(_served(rt))) == ["d0", "d1"]
    assert client.get("/v1/collections/docs").json["documents"]["indexed"] == 2


def _fail(rt: Runtime, external_id: str, retryable: bool, **values: object) -> None:
    """SQL says the document failed (as when an upsert Milvus applied was reported lost)."""
    with rt.sessions.begin() as session:
        session.execute(
            update(Document)
            .where(Document.external_id == external_id)
            .values(
                status="failed", error="Unavailable: Milvus away", retryable=retryable, **values
            )
        )


def _search(client: FlaskClient, rt: Runtime, text: str) -> set[str]:
    body = {"text": text, "top_k": 10, "rerank": {"enabled": False}, "wait": 0}
    job = client.post("/v1/collections/docs/queries", json=body).json
    recall_step(rt, job["id"])
    answer = client.get(f"/v1/queries/{job['id']}").json
    assert answer["status"] == "done", answer
    return {hit["document_id"] for hit in answer["results"]}


@pytest.mark.both_milvus
def test_every_disagreement_between_sql_and_milvus_is_repaired(
    pipeline_env: tuple[FlaskClient, Runtime],
) -> None:
    client, rt = pipeline_env
    ingest_in_process(client, rt, _docs(5))
    name = _served(rt)
    (row,) = rt.index.client.query(name, filter='id == "d0"', output_fields=["vector"])
    # Written behind the service's back, so recorded as its writers record theirs: searches
    # on a Milvus server wait for the newest recorded write (store.writes).
    record_write(rt.redis, name, rt.index.upsert(name, [{"id": "ghost", "vector": row["vector"]}]))
    record_write(rt.redis, name, rt.index.delete(name, ["d0", "d2"]))  # d0: lost by Milvus
    rt.index.flush(name)
    _fail(rt, "d1", retryable=False)  # failed in SQL, vector in Milvus
    _fail(rt, "d2", retryable=True)  # failed for an outage, no vector
    _fail(rt, "d3", retryable=False, image_key="f" * 64)  # vector in Milvus, content unusable
    # Only what SQL holds as indexed is served, whatever Milvus holds.
    assert _search(client, rt, "document") == {"d4"}

    (repair,) = reconcile.reconcile(rt)
    assert (repair.missing, repair.orphans, repair.stale, repair.outage) == (
        ["d0"],
        ["ghost"],
        ["d1", "d3"],
        ["d2"],
    )
    job = client.get(f"/v1/ingest-jobs/{repair.job_id}").json
    assert (job["kind"], job["total"]) == ("repair", 4)
    run_entries(rt)
    # d3 cannot be embedded (its image is gone): it stays failed, and its vector is removed.
    assert sorted(rt.index.ids(name)) == ["d0", "d1", "d2", "d4"]
    counts = client.get("/v1/collections/docs").json["documents"]
    assert (counts["indexed"], counts["failed"]) == (4, 1)
    assert client.get("/v1/collections/docs/documents/d3").json["status"] == "failed"
    assert _search(client, rt, "document") == {"d0", "d1", "d2", "d4"}
    assert reconcile.reconcile(rt) == []  # it agrees now
