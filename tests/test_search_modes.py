"""Search beyond one dense vector, through the API and the worker steps in process, on
milvus-lite with SQLite and with PostgreSQL (the production pairing, with a Milvus server,
runs them through worker processes in tests/test_faults.py): keyword and hybrid modes,
search by example, grouping, and pages served from one ranking.

The tiny random models rank by noise: what these tests can and do assert is what does not
depend on the model (a keyword match, an identical document, caps, pages, refusals)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import func, select

from api.app import create_app
from core.settings import Settings
from store.tables import OutboxEntry
from tests.helpers import error, make_key, run_entries
from workers.queries import recall_step, rerank_step
from workers.runtime import Runtime

CODE = "SKU-48213"
FIELDS = {"product": "str", "year": "int"}
COUNT = 60


def _catalogue() -> list[dict[str, Any]]:
    colours = ["red", "green", "blue", "black", "white"]
    docs = [
        {
            "id": f"d{i:03d}",
            "text": f"a {colours[i % 5]} shirt, item SKU-{10000 + i}, size {i % 7}",
            "metadata": {"product": f"p{i % 10}", "year": 2000 + i % 3},
        }
        for i in range(COUNT)
    ]
    docs[37]["text"] = f"a plain shirt, item {CODE}, by Kowalczyk"
    docs.append({"id": "twin-a", "text": "a velvet scarf with a golden fringe"})
    docs.append({"id": "twin-b", "text": "a velvet scarf with a golden fringe"})
    return docs


@pytest.fixture
def shop(
    migrated_url: str, redis_url: str, tmp_path: Path, tiny_models: dict[str, Path], milvus_uri: str
) -> Iterator[tuple[FlaskClient, Runtime]]:
    tiny = str(tiny_models["qwen3_vl"])
    settings = Settings(
        database_url=migrated_url,
        redis_url=redis_url,
        media_root=tmp_path / "media",
        milvus_uri=milvus_uri,
        milvus_prefix=f"s{uuid.uuid4().hex[:6]}_",
        recall_model=tiny,
        rerank_model=tiny,
        ingest_chunk_size=64,
        device="cpu",
        query_wait_seconds=0,  # no worker answers in process: a POST answers 202 at once
        model_runners=1,
    )
    client = create_app(settings).test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = "Bearer " + make_key(client.application, ["admin"])
    body = {"name": "shop", "metadata_fields": FIELDS, "rerank": {"k": 20}}
    assert client.post("/v1/collections", json=body).status_code == 201
    accepted = client.post("/v1/collections/shop/documents", json={"documents": _catalogue()})
    run_entries(rt := Runtime(settings), accepted.json["id"])
    yield client, rt
    rt.index.close()


def _ask(client: FlaskClient, rt: Runtime, body: dict[str, Any]) -> dict[str, Any]:
    """POST the query; run its steps in process unless it was answered from the cache."""
    body = {"wait": 0, "rerank": {"enabled": False}, **body}
    posted = client.post("/v1/collections/shop/queries", json=body)
    assert posted.status_code in (200, 202), posted.json
    answer = posted.json
    if answer["cached"]:
        return answer
    recall_step(rt, answer["id"])
    if body["rerank"].get("enabled", True):
        rerank_step(rt, answer["id"])
    read = client.get(f"/v1/queries/{answer['id']}").json
    assert read["status"] == "done", read
    return read


def _ids(answer: dict[str, Any]) -> list[str]:
    return [hit["document_id"] for hit in answer["results"]]


def test_a_code_is_found_first_by_keyword_and_hybrid_search(
    shop: tuple[FlaskClient, Runtime],
) -> None:
    client, rt = shop
    keyword = _ask(client, rt, {"text": CODE, "mode": "keyword"})
    assert _ids(keyword) == ["d037"]
    assert keyword["results"][0]["cosine"] is None  # nothing was embedded
    assert "embed" not in keyword["timings"]
    for fusion in ({"method": "rrf"}, {"method": "weighted", "keyword_weight": 0.5}):
        hybrid = _ask(client, rt, {"text": CODE, "mode": "hybrid", "fusion": fusion, "top_k": 5})
        assert _ids(hybrid)[0] == "d037", hybrid["results"]
        assert len(hybrid["results"]) == 5  # dense candidates fill the rest
        assert hybrid["results"][0]["keyword"] > 0
        assert "keyword" not in hybrid["results"][1]  # no keyword match: left out
    # Filters apply to the keyword side too.
    assert _ids(_ask(client, rt, {"text": CODE, "mode": "keyword", "filter": {"year": 2002}})) == []
    assert _ids(_ask(client, rt, {"text": CODE, "mode": "keyword", "filter": {"year": 2001}})) == [
        "d037"
    ]
    # With the rerank: the candidate's recall score fused with the reranker's P(Yes).
    reranked = _ask(client, rt, {"text": CODE, "mode": "hybrid", "rerank": {"enabled": True}})
    first = reranked["results"][0]
    assert first["p_yes"] is not None
    weight = client.get("/v1/collections/shop").json["rerank"]["weight"]
    assert first["score"] == pytest.approx(first["recall"] + weight * first["p_yes"])


def test_an_existing_collection_opts_in_without_re_embedding(
    shop: tuple[FlaskClient, Runtime],
) -> None:
    client, rt = shop
    dense = _ask(client, rt, {"text": CODE})
    assert "keyword" not in dense["results"][0]
    with rt.sessions() as session:
        owed = session.scalar(select(func.count()).select_from(OutboxEntry))
    patched = client.patch("/v1/collections/shop", json={"search_mode": "hybrid"})
    assert patched.status_code == 200, patched.json
    assert patched.json["search_mode"] == "hybrid"
    with rt.sessions() as session:
        assert session.scalar(select(func.count()).select_from(OutboxEntry)) == owed
    hybrid = _ask(client, rt, {"text": CODE})  # the collection's default now
    assert _ids(hybrid)[0] == "d037"
    assert not hybrid["cached"]  # the change of default is a new version: no stale answer


def test_more_like_this_excludes_the_example_and_finds_its_duplicate(
    shop: tuple[FlaskClient, Runtime],
) -> None:
    client, rt = shop
    like = _ask(client, rt, {"like": ["twin-a"], "top_k": 5})
    assert _ids(like)[0] == "twin-b"
    assert like["results"][0]["cosine"] == pytest.approx(1.0, abs=1e-4)
    assert "twin-a" not in _ids(like)
    kept = _ask(client, rt, {"like": ["twin-a"], "include_examples": True, "top_k": 5})
    assert set(_ids(kept)[:2]) == {"twin-a", "twin-b"}
    # Away from an example: the unlike document is never a result.
    unlike = _ask(client, rt, {"like": ["twin-a"], "unlike": ["d001"], "top_k": 50})
    assert "d001" not in _ids(unlike)
    # The rerank's query side is the example's content when the query has none.
    reranked = _ask(client, rt, {"like": ["twin-a"], "top_k": 3, "rerank": {"enabled": True}})
    assert all(hit["p_yes"] is not None for hit in reranked["results"])

    client.post("/v1/collections", json={"name": "other"})
    refused = client.post("/v1/collections/other/queries", json={"like": ["twin-a"], "wait": 0})
    assert "no documents ['twin-a']" in error(refused, 404)["message"]
    unknown = client.post("/v1/collections/shop/queries", json={"like": ["nope"], "wait": 0})
    assert "nope" in error(unknown, 404)["message"]


def test_grouping_caps_hits_per_value(shop: tuple[FlaskClient, Runtime]) -> None:
    client, rt = shop
    for size in (1, 3):
        body = {"text": "a shirt", "group_by": "product", "group_size": size, "top_k": 30}
        answer = _ask(client, rt, body)
        groups = [hit["group"] for hit in answer["results"] if "group" in hit]
        assert groups, answer["results"]
        assert max(groups.count(value) for value in groups) <= size
        # A group's hits are together, best first.
        seen: list[str] = []
        for value in groups:
            if not seen or seen[-1] != value:
                assert value not in seen
                seen.append(value)
    refused = client.post(
        "/v1/collections/shop/queries", json={"text": "x", "group_by": "colour", "wait": 0}
    )
    assert "declared fields are ['product', 'year']" in error(refused, 400)["message"]


def test_page_two_is_ranks_11_to_20_without_model_work(
    shop: tuple[FlaskClient, Runtime],
) -> None:
    client, rt = shop
    reranked = {"text": "a green shirt", "rerank": {"enabled": True}}
    first = _ask(client, rt, {**reranked, "top_k": 20})
    assert [hit["rank"] for hit in first["results"]] == list(range(1, 21))
    page_two = client.post(
        "/v1/collections/shop/queries", json={**reranked, "top_k": 10, "offset": 10, "wait": 0}
    )
    assert page_two.status_code == 200
    assert page_two.json["cached"]  # no job: no model ran
    assert page_two.json["results"] == first["results"][10:20]
    assert page_two.json["paging"] == {"offset": 10, "limit": 10, "total": 20}
    # Past the rerank's k (20 here), the ranking goes on in the recall's order.
    deep = _ask(client, rt, {**reranked, "top_k": 10, "offset": 25})
    assert [hit["rank"] for hit in deep["results"]] == list(range(26, 36))
    assert all(hit["p_yes"] is None for hit in deep["results"])

    too_deep = client.post(
        "/v1/collections/shop/queries", json={"text": "x", "offset": 995, "top_k": 10}
    )
    assert "at most 1000" in error(too_deep, 400)["message"]
    keywordless = client.post(
        "/v1/collections/shop/queries", json={"like": ["d001"], "mode": "keyword"}
    )
    assert "needs text" in error(keywordless, 400)["message"]


BAD_OPTIONS = [
    ({"text": "x", "mode": "bm25"}, "mode"),
    ({"text": "x", "fusion": {"method": "max"}, "mode": "hybrid"}, "fusion.method"),
    ({"text": "x", "fusion": {"keyword_weight": 2}, "mode": "hybrid"}, "keyword_weight"),
    ({"text": "x", "fusion": {"k": 60}, "mode": "dense"}, "fusion applies to mode hybrid"),
    ({"like": [f"d{i}" for i in range(17)]}, "like"),
    ({"like": [7]}, "like"),
    ({"like": [""]}, "like"),
    ({"text": "x", "unlike": ["d001"]}, "unlike needs at least one like"),
    ({"text": "x", "group_by": "product", "group_size": 0}, "group_size"),
    ({"text": "x", "offset": -1}, "offset"),
    ({"text": "x", "include_examples": "yes"}, "include_examples"),
]


def test_bad_search_options_are_400s_that_say_why(shop: tuple[FlaskClient, Runtime]) -> None:
    client, _ = shop
    for body, message in BAD_OPTIONS:
        refused = client.post("/v1/collections/shop/queries", json={**body, "wait": 0})
        assert message in error(refused, 400)["message"], (body, refused.json)
