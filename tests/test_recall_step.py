"""A query job's recall step in process, against milvus-lite and a Milvus standalone server:
the same answers from both, with filters over missing metadata values, after deletes."""

from __future__ import annotations

from typing import Any

import pytest
from flask.testing import FlaskClient

from store.writes import last_write
from tests.helpers import ingest_in_process, make_key, run_entries
from workers.queries import recall_step
from workers.runtime import Runtime

pytestmark = pytest.mark.both_milvus

DOCS = [
    {"id": "old-a", "text": "a red circle", "metadata": {"year": 1990, "tag": "a"}},
    {"id": "new-b", "text": "a red square", "metadata": {"year": 2020, "tag": "b"}},
    {"id": "none", "text": "a red triangle"},  # no metadata at all
    {"id": "tag-only", "text": "a red star", "metadata": {"tag": "b"}},
]


def _search(client: FlaskClient, rt: Runtime, body: dict) -> set[str]:
    body = {"top_k": 10, "rerank": {"enabled": False}, "wait": 0, **body}
    job = client.post("/v1/collections/meta/queries", json=body).json
    recall_step(rt, job["id"])
    answer = client.get(f"/v1/queries/{job['id']}").json
    assert answer["status"] == "done", answer
    return {hit["document_id"] for hit in answer["results"]}


def test_filters_and_deletes_answer_alike_on_every_server(
    pipeline_env: tuple[FlaskClient, Runtime],
) -> None:
    client, rt = pipeline_env
    client.environ_base["HTTP_AUTHORIZATION"] = "Bearer " + make_key(client.application, ["admin"])
    fields = {"year": "int", "tag": "str"}
    created = client.post("/v1/collections", json={"name": "meta", "metadata_fields": fields})
    assert created.status_code == 201, created.json
    accepted = client.post("/v1/collections/meta/documents", json={"documents": DOCS})
    run_entries(rt, accepted.json["id"])

    assert _search(client, rt, {"text": "red"}) == {"old-a", "new-b", "none", "tag-only"}
    assert _search(client, rt, {"text": "red", "filter": {"year": {"gte": 2000}}}) == {"new-b"}
    # A missing value satisfies no comparison, "not equal" included.
    assert _search(client, rt, {"text": "red", "filter": {"year": {"ne": 1990}}}) == {"new-b"}
    assert _search(client, rt, {"text": "red", "filter": {"tag": "b"}}) == {"new-b", "tag-only"}

    assert client.delete("/v1/collections/meta/documents/new-b").status_code == 204
    run_entries(rt, kind="delete")
    assert _search(client, rt, {"text": "red square"}) == {"old-a", "none", "tag-only"}
    assert _search(client, rt, {"text": "red", "filter": {"tag": "b"}}) == {"tag-only"}


def test_each_search_waits_for_the_last_recorded_write(
    pipeline_env: tuple[FlaskClient, Runtime], milvus_kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ingestion records each write's Milvus timestamp in Redis before it reports the
    documents indexed; the recall step searches at the newest one (``LastWrite``, the
    default), so a document indexed just before a query is found. milvus-lite records none:
    it is always strong."""
    client, rt = pipeline_env
    assert rt.settings.milvus_search_consistency == "LastWrite"
    target = client.get("/v1/collections/docs").json["milvus_collection"]
    searched: list[int | None] = []
    search = rt.index.search

    def spy(*args: Any, **kwargs: Any) -> Any:
        searched.append(kwargs.get("written_at"))
        return search(*args, **kwargs)

    monkeypatch.setattr(rt.index, "search", spy)
    recorded: list[int | None] = []
    for doc in ({"id": "one", "text": "a red circle"}, {"id": "two", "text": "a blue square"}):
        ingest_in_process(client, rt, [doc])
        recorded.append(last_write(rt.redis, target))
        body = {"text": doc["text"], "top_k": 1, "rerank": {"enabled": False}, "wait": 0}
        job = client.post("/v1/collections/docs/queries", json=body).json
        recall_step(rt, job["id"])
        answer = client.get(f"/v1/queries/{job['id']}").json
        assert [hit["document_id"] for hit in answer["results"]] == [doc["id"]]
        assert searched[-1] == recorded[-1]
    assert client.delete("/v1/collections/docs/documents/two").status_code == 204
    run_entries(rt, kind="delete")
    recorded.append(last_write(rt.redis, target))
    if milvus_kind == "lite":
        assert recorded == [None, None, None]
    else:
        assert all(recorded)
        assert recorded == sorted(set(recorded))  # later writes, later timestamps
