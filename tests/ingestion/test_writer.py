"""Revisions: whatever order writes land in, Milvus ends with each document's newest content,
and nothing of a document deleted meanwhile."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from flask.testing import FlaskClient

from ingestion.outbox import Kind
from recall.prompts import Candidate
from recall.service import RecallService
from tests.helpers import entries, ingest_in_process, run_entries
from workers.runtime import Runtime


def _vectors(rt: Runtime, client: FlaskClient) -> dict[str, np.ndarray]:
    served = client.get("/v1/collections/docs").json["milvus_collection"]
    rows = rt.index.client.query(served, filter='id != ""', output_fields=["id", "vector"])
    return {row["id"]: np.asarray(row["vector"], dtype=np.float32) for row in rows}


def _embedding(rt: Runtime, text: str) -> np.ndarray:
    return rt.embedder(rt.settings.recall_model).encode_candidates([Candidate(text=text)])[0]


def _on_first_upsert(monkeypatch: pytest.MonkeyPatch, meanwhile: Callable[[], None]) -> list[Any]:
    """Run ``meanwhile`` just before the first upsert lands (after it was embedded)."""
    original = RecallService.upsert
    calls: list[Any] = []

    def upsert(self: RecallService, *args: Any, **kwargs: Any) -> Any:
        calls.append(args[1])
        if len(calls) == 1:
            meanwhile()
        return original(self, *args, **kwargs)

    monkeypatch.setattr(RecallService, "upsert", upsert)
    return calls


def test_an_older_write_landing_last_is_repaired(
    pipeline_env: tuple[FlaskClient, Runtime], monkeypatch: pytest.MonkeyPatch
) -> None:
    client, rt = pipeline_env
    older = client.post(
        "/v1/collections/docs/documents", json={"documents": [{"id": "a", "text": "A"}]}
    )
    assert older.status_code == 202
    # The older job's chunk has read and embedded "A"; the newer job is sent and written
    # completely before the older upsert lands.
    _on_first_upsert(monkeypatch, lambda: ingest_in_process(client, rt, [{"id": "a", "text": "B"}]))
    run_entries(rt, older.json["id"])
    np.testing.assert_allclose(_vectors(rt, client)["a"], _embedding(rt, "B"), atol=1e-5)
    document = client.get("/v1/collections/docs/documents/a").json
    assert (document["text"], document["status"]) == ("B", "indexed")
    assert client.get(older.json["url"]).json["state"] == "done"  # a belongs to the newer job


def test_a_document_deleted_while_written_leaves_no_vector(
    pipeline_env: tuple[FlaskClient, Runtime], monkeypatch: pytest.MonkeyPatch
) -> None:
    client, rt = pipeline_env
    docs = [{"id": "kept", "text": "kept"}, {"id": "gone", "text": "deleted meanwhile"}]
    job = client.post("/v1/collections/docs/documents", json={"documents": docs}).json

    def delete() -> None:
        assert client.delete("/v1/collections/docs/documents/gone").status_code == 204
        run_entries(rt, kind=Kind.DELETE)  # the vector delete ran before our upsert

    _on_first_upsert(monkeypatch, delete)
    run_entries(rt, job["id"])
    assert set(_vectors(rt, client)) == {"kept"}
    assert entries(rt) == []
