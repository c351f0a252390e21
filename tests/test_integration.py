"""End to end through HTTP, two real Celery worker processes, Redis, milvus-lite and PostgreSQL."""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
from sqlalchemy import create_engine, func, select

from cli.stack import Stack, wait_until
from devkit.samples import b64, sample_documents, shape_image
from recall.index import MilvusIndex
from store.tables import Collection, Document, QueryJob
from tests.conftest import REDIS_URL, live_stack
from tests.helpers import admin_session, poll, query_kinds

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stack(
    tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    # Qwen3-VL recalls, Qwen2-VL reranks: both architectures run end to end.
    overrides = {
        "heartbeat_seconds": "0.5",
        "max_queue_depth": "12",
        "reindex_drop_delay_seconds": "1",
        # A POST that gives no wait waits this long (1 s by default; more on a loaded CI).
        "query_wait_seconds": "10",
    }
    workdir = tmp_path_factory.mktemp("stack")
    (workdir / "files").mkdir()  # the server files ingestion may read by path
    overrides["ingest_roots"] = json.dumps([str(workdir / "files")])
    overrides["tracing"] = f"jsonl:{workdir / 'spans.jsonl'}"  # every process traced
    with live_stack(tiny_models, workdir, **overrides) as running:
        yield running


@pytest.fixture(scope="module")
def http(stack: Stack) -> requests.Session:
    return admin_session(stack)


@pytest.fixture(scope="module")
def ingested(stack: Stack, http: requests.Session) -> dict[str, Any]:
    response = http.post(
        f"{stack.api_url}/v1/collections",
        json={"name": "shapes", "metadata_fields": {"colour": "str", "n": "int"}},
    )
    assert response.status_code == 201, response.text
    docs = sample_documents()
    job = http.post(
        f"{stack.api_url}/v1/collections/shapes/documents", json={"documents": docs}
    ).json()
    job = poll(http, stack.api_url + job["url"], lambda j: j["state"] in ("done", "failed"))
    return {"job": job, "ids": {d["id"] for d in docs}, "docs": docs}


def _text_collection(
    stack: Stack, http: requests.Session, name: str, texts: list[str], prefix: str
) -> None:
    """A new collection of text documents ``<prefix><n>``, ingested and indexed."""
    base = f"{stack.api_url}/v1/collections"
    assert http.post(base, json={"name": name}).status_code == 201
    docs = [{"id": f"{prefix}{i}", "text": text} for i, text in enumerate(texts)]
    job = http.post(f"{base}/{name}/documents", json={"documents": docs}).json()
    poll(http, stack.api_url + job["url"], lambda j: j["state"] == "done")


def _query(stack: Stack, http: requests.Session, body: dict[str, Any]) -> dict[str, Any]:
    response = http.post(f"{stack.api_url}/v1/collections/shapes/queries", json=body)
    assert response.status_code in (200, 202), response.text
    answer = response.json()
    if answer["is_running"]:
        answer = poll(http, stack.api_url + answer["url"], lambda j: not j["is_running"])
    return answer


def test_ingestion_indexes_every_document(
    stack: Stack, http: requests.Session, ingested: dict[str, Any]
) -> None:
    job = ingested["job"]
    assert (job["state"], job["done"], job["failed"], job["errors"]) == ("done", 9, 0, [])
    engine = create_engine(stack.settings().database_url)
    with engine.connect() as conn:
        statuses = conn.execute(select(Document.status, func.count()).group_by(Document.status))
        assert dict(statuses.all()) == {"indexed": 9}
        version = conn.scalar(select(Collection.version).where(Collection.name == "shapes"))
        assert version > 1  # bumped once the vectors were searchable
    engine.dispose()
    index = MilvusIndex(stack.settings().milvus_uri)
    served = http.get(f"{stack.api_url}/v1/collections/shapes").json()["milvus_collection"]
    assert index.count(served) == 9


@query_kinds
def test_query_returns_ranked_ingested_documents(
    stack: Stack, http: requests.Session, ingested: dict[str, Any], query: dict[str, Any]
) -> None:
    answer = _query(stack, http, {**query, "top_k": 4, "wait": 20})
    assert answer["status"] == "done", answer
    results = answer["results"]
    assert len(results) == 4
    assert {r["document_id"] for r in results} <= ingested["ids"]
    assert [r["rank"] for r in results] == [1, 2, 3, 4]
    assert [r["score"] for r in results] == sorted((r["score"] for r in results), reverse=True)
    for hit in results:
        assert 0.0 <= hit["p_yes"] <= 1.0
        assert hit["score"] == pytest.approx(hit["cosine"] + 0.1 * hit["p_yes"], abs=1e-6)
        assert hit["text"] or hit["image_url"]
    assert {"embed", "search", "rerank"} <= set(answer["timings"])


def test_result_is_stored_and_cached(
    stack: Stack, http: requests.Session, ingested: dict[str, Any]
) -> None:
    body = {"text": "a green square", "top_k": 3, "wait": 20}
    first = _query(stack, http, body)
    assert first["status"] == "done"
    assert not first["cached"]
    # The POST's answer (rendered from the result cache the last step filled) is the job's
    # stored answer, as a later read renders it from SQL.
    stored = http.get(f"{stack.api_url}/v1/queries/{first['id']}").json()
    assert stored == first
    engine = create_engine(stack.settings().database_url)
    with engine.connect() as conn:
        row = conn.execute(select(QueryJob).where(QueryJob.id == first["id"])).one()
    engine.dispose()
    assert row.status == "done"
    assert row.recall_hits
    assert len(first["results"]) == 3  # the page asked for
    assert len(row.results) == len(row.recall_hits) > 3  # the ranking, for every page
    client = redis.Redis.from_url(REDIS_URL)
    assert client.get(row.cache_key) is not None
    assert client.ttl(row.cache_key) > 0
    second = _query(stack, http, body)
    assert second["cached"]
    assert second["id"] == first["id"]
    assert second["results"] == first["results"]


def test_filter_and_paging(stack: Stack, http: requests.Session, ingested: dict[str, Any]) -> None:
    answer = _query(stack, http, {"text": "a shape", "filter": {"colour": "red"}, "wait": 20})
    assert answer["status"] == "done"
    assert {r["metadata"]["colour"] for r in answer["results"]} == {"red"}
    assert len(answer["results"]) == 3
    page = http.get(f"{stack.api_url}{answer['url']}?offset=1&limit=1").json()
    assert page["paging"] == {"offset": 1, "limit": 1, "total": 3}
    assert page["results"][0]["document_id"] == answer["results"][1]["document_id"]
    assert page["results"][0]["rank"] == 2


def test_a_write_invalidates_cached_results(
    stack: Stack, http: requests.Session, ingested: dict[str, Any]
) -> None:
    # top_k above the collection size: the new document must show up in the answer.
    body = {"text": "a blue circle", "top_k": 20, "wait": 20, "rerank": {"enabled": False}}
    first = _query(stack, http, body)
    assert first["status"] == "done"
    assert all(r["p_yes"] is None for r in first["results"])
    assert _query(stack, http, body)["cached"]
    doc = {"id": "extra", "text": "a blue circle", "image": b64(shape_image("blue", "circle"))}
    job = http.post(
        f"{stack.api_url}/v1/collections/shapes/documents", json={"documents": [doc]}
    ).json()
    poll(http, stack.api_url + job["url"], lambda j: j["state"] == "done")
    after = _query(stack, http, body)
    assert not after["cached"]
    assert after["id"] != first["id"]
    assert len(first["results"]) == 9
    assert len(after["results"]) == 10
    assert "extra" in {r["document_id"] for r in after["results"]}


def test_a_plain_post_answers_with_its_results(
    stack: Stack, http: requests.Session, ingested: dict[str, Any]
) -> None:
    url = f"{stack.api_url}/v1/collections/shapes/queries"
    started = time.monotonic()
    answered = http.post(url, json={"text": "a plain question", "top_k": 2})
    assert answered.status_code == 200, answered.text
    assert (answered.json()["status"], len(answered.json()["results"])) == ("done", 2)
    assert time.monotonic() - started < 10  # the wait ends when the job does
    at_once = http.post(url, json={"text": "a question for later", "wait": 0})
    assert at_once.status_code == 202
    assert at_once.json()["is_running"]
    poll(http, stack.api_url + at_once.json()["url"], lambda j: j["status"] == "done")


def test_partial_results_and_cancel_while_reranking(
    stack: Stack, http: requests.Session, ingested: dict[str, Any]
) -> None:
    url = f"{stack.api_url}/v1/collections/shapes/queries"
    stack.kill("worker-rerank")  # rerank tasks now wait in their queue
    try:
        job = http.post(url, json={"text": "partial results please", "top_k": 3, "wait": 0}).json()
        job = poll(http, stack.api_url + job["url"], lambda j: j["status"] == "reranking")
        assert job["is_partial"]
        assert job["is_running"]
        indexed = http.get(f"{stack.api_url}/v1/collections/shapes").json()["documents"]["indexed"]
        assert len(job["results"]) == 3  # the page asked for, of the recall's ranking
        assert job["paging"]["total"] == indexed  # every recall candidate (k=50)
        assert all("p_yes" not in hit for hit in job["results"])
        other = http.post(url, json={"text": "cancel me while reranking", "wait": 0}).json()
        poll(http, stack.api_url + other["url"], lambda j: j["status"] == "reranking")
        cancelled = http.delete(stack.api_url + other["url"])
        assert cancelled.status_code == 200
        assert cancelled.json()["status"] == "cancelled"
    finally:
        stack.start_worker("rerank")
    done = poll(http, stack.api_url + job["url"], lambda j: j["status"] == "done")
    assert len(done["results"]) == 3
    assert all(hit["p_yes"] is not None for hit in done["results"])
    assert http.get(stack.api_url + other["url"]).json()["status"] == "cancelled"


def test_query_embeddings_are_cached(
    stack: Stack, http: requests.Session, ingested: dict[str, Any]
) -> None:
    client = redis.Redis.from_url(REDIS_URL)
    before = set(client.keys("umarvel:qemb:*"))
    first = _query(stack, http, {"text": "embed me once", "top_k": 2, "wait": 20})
    added = set(client.keys("umarvel:qemb:*")) - before
    assert len(added) == 1
    # Another rerank weight is another result, but the same query embedding.
    second = _query(
        stack, http, {"text": "embed me once", "top_k": 2, "rerank": {"weight": 0.5}, "wait": 20}
    )
    assert set(client.keys("umarvel:qemb:*")) - before == added
    assert not second["cached"]
    assert second["results"][0]["cosine"] == pytest.approx(first["results"][0]["cosine"])


def test_identical_queries_in_flight_share_one_job(
    stack: Stack, http: requests.Session, ingested: dict[str, Any]
) -> None:
    url = f"{stack.api_url}/v1/collections/shapes/queries"
    body = {"text": "asked twice at once", "top_k": 2}
    first = http.post(url, json=body).json()
    second = http.post(url, json=body).json()  # in flight, or already cached: the same job
    assert second["id"] == first["id"]
    done = poll(http, stack.api_url + first["url"], lambda j: j["status"] == "done")
    assert len(done["results"]) == 2


def test_readiness_follows_the_workers(stack: Stack, ingested: dict[str, Any]) -> None:
    status = f"{stack.api_url}/statusz"
    ready = f"{stack.api_url}/readyz"
    wait_until(lambda: requests.get(status).status_code == 200, 60, "the whole system")
    stack.kill("worker-recall")
    try:
        wait_until(lambda: requests.get(status).status_code == 503, 30, "not ready")
        checks = requests.get(status).json()["checks"]
        assert not checks["queue:recall"]["ok"]
        assert checks["queue:rerank"]["ok"]
        # The API process itself still serves: it stays in its load balancer, and says why
        # the system is not whole.
        answer = requests.get(ready)
        assert answer.status_code == 200
        assert answer.json()["checks"] == checks
    finally:
        stack.start_worker("recall")
    wait_until(lambda: requests.get(status).status_code == 200, 60, "ready again")
    # The container health check of a worker: its warm heartbeat, from this host.
    for queue in ("recall", "rerank"):
        check = subprocess.run(
            [sys.executable, "-m", "cli.main", "ready", queue],
            env={**os.environ, "UMARVEL_REDIS_URL": REDIS_URL},
            capture_output=True,
            text=True,
            check=False,
        )
        assert check.returncode == 0, check.stderr


def test_workers_and_api_expose_metrics(
    stack: Stack, http: requests.Session, ingested: dict[str, Any]
) -> None:
    job = http.post(
        f"{stack.api_url}/v1/collections/shapes/documents",
        json={"documents": [{"id": "measured", "text": "a measured document"}]},
    ).json()
    poll(http, stack.api_url + job["url"], lambda j: j["state"] == "done")
    _query(stack, http, {"text": "measure me", "top_k": 2, "wait": 20})
    recall = requests.get(f"http://127.0.0.1:{stack.metrics_ports['recall']}/metrics").text
    rerank = requests.get(f"http://127.0.0.1:{stack.metrics_ports['rerank']}/metrics").text
    api = requests.get(f"{stack.api_url}/metrics").text

    def value(text: str, series: str) -> float:
        line = next(x for x in text.splitlines() if x.startswith(series + " "))
        return float(line.split()[-1])

    assert value(recall, 'umarvel_stage_seconds_count{stage="embed"}') >= 1
    assert value(recall, 'umarvel_stage_seconds_count{stage="search"}') >= 1
    assert value(recall, 'umarvel_ingest_documents_total{result="indexed"}') >= 1
    assert value(recall, 'umarvel_batch_size_count{call="query"}') >= 1
    assert value(rerank, 'umarvel_stage_seconds_count{stage="rerank"}') >= 1
    assert value(rerank, 'umarvel_batch_size_count{call="pairs"}') >= 1
    assert value(api, 'umarvel_cache_requests_total{result="miss"}') >= 1


def test_a_flooded_queue_answers_429_then_drains(
    stack: Stack, http: requests.Session, ingested: dict[str, Any]
) -> None:
    url = f"{stack.api_url}/v1/collections/shapes/queries"
    stack.kill("worker-rerank")  # rerank tasks pile up behind a working recall worker
    statuses = []
    try:
        for i in range(30):
            # No waiting: nothing finishes while the rerank worker is away.
            response = http.post(url, json={"text": f"flood {i}", "wait": 0})
            statuses.append(response.status_code)
            if response.status_code == 429:
                assert response.headers["Retry-After"] == "2"
                assert response.json()["error"]["code"] == "overloaded"
                break
            time.sleep(0.05)
    finally:
        stack.start_worker("rerank")
    assert statuses[-1] == 429
    assert 12 <= len(statuses) - 1 <= 29  # accepted up to the configured depth
    wait_until(
        lambda: http.post(url, json={"text": "after the flood"}).status_code != 429, 120, "drain"
    )


def test_auth_through_the_running_stack(stack: Stack, ingested: dict[str, Any]) -> None:
    url = f"{stack.api_url}/v1/collections/shapes/queries"
    body = {"text": "who may ask", "rerank": {"enabled": False}}
    search = stack.create_key(("search",))
    other = stack.create_key(("search",), ("other",))

    def post(key: str | None, path: str = url, json: dict | None = None) -> requests.Response:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return requests.post(path, json=json or body, headers=headers)

    assert post(None).status_code == 401
    assert post("umk_not-a-key").status_code == 401
    assert post(search).status_code in (200, 202)
    assert post(other).status_code == 403
    create = post(search, f"{stack.api_url}/v1/collections", {"name": "nope"})
    assert create.status_code == 403
    revoked = subprocess.run(
        [sys.executable, "-m", "cli.main", "keys", "revoke", search[:12]],
        env={
            **os.environ,
            "UMARVEL_DATABASE_URL": stack.settings().database_url,
            "UMARVEL_REDIS_URL": stack.settings().redis_url,  # its copies of keys live there
        },
        capture_output=True,
        text=True,
        check=False,
    )
    assert revoked.returncode == 0, revoked.stderr
    assert post(search).status_code == 401


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *args],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def test_cli_ingest_streams_a_folder_and_resumes(
    stack: Stack, http: requests.Session, tmp_path: Path
) -> None:
    assert http.post(f"{stack.api_url}/v1/collections", json={"name": "cli"}).status_code == 201
    folder = tmp_path / "photos"
    folder.mkdir()
    for colour in ("red", "green", "blue"):
        (folder / f"{colour}.png").write_bytes(shape_image(colour, "circle"))
        (folder / f"{colour}.txt").write_text(f"a {colour} circle")
    key = stack.create_key(("admin",))
    state = tmp_path / "state.json"
    common = ["--collection", "cli", "--api", stack.api_url, "--key", key, "--state", str(state)]
    # As if an earlier run was interrupted after accepting the first two documents.
    state.write_text(json.dumps({"sent": 2, "jobs": []}))
    resumed = _cli("ingest", str(folder), *common, "--batch-size", "2")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming after 2 documents" in resumed.stdout
    assert "1 indexed, 0 failed of 1" in resumed.stdout
    state.unlink()
    full = _cli("ingest", str(folder), *common, "--batch-size", "2")
    assert full.returncode == 0, full.stderr
    assert "3 indexed, 0 failed of 3" in full.stdout
    collection = http.get(f"{stack.api_url}/v1/collections/cli").json()
    assert collection["documents"] == {"total": 3, "indexed": 3, "pending": 0, "failed": 0}
    doc = http.get(f"{stack.api_url}/v1/collections/cli/documents/red.png").json()
    assert doc["text"] == "a red circle"
    bad = _cli(
        "ingest",
        str(folder),
        "--collection",
        "missing",
        "--api",
        stack.api_url,
        "--key",
        key,
        "--state",
        str(tmp_path / "other.json"),
    )
    assert bad.returncode == 1
    assert "does not exist" in bad.stderr


def test_deletes_disappear_from_search_and_cache(
    stack: Stack, http: requests.Session, ingested: dict[str, Any]
) -> None:
    base = f"{stack.api_url}/v1/collections"
    _text_collection(stack, http, "gone", [f"a gone document {i}" for i in range(4)], "g")
    body = {"text": "a gone document", "top_k": 10, "rerank": {"enabled": False}, "wait": 20}
    before = http.post(f"{base}/gone/queries", json=body).json()
    assert {r["document_id"] for r in before["results"]} == {"g0", "g1", "g2", "g3"}
    assert http.delete(f"{base}/gone/documents/g1").status_code == 204
    after = http.post(f"{base}/gone/queries", json=body).json()
    assert not after["cached"]
    assert {r["document_id"] for r in after["results"]} == {"g0", "g2", "g3"}
    assert http.get(f"{base}/gone/documents/g1").status_code == 404
    index = MilvusIndex(stack.settings().milvus_uri)
    name = http.get(f"{base}/gone").json()["milvus_collection"]
    wait_until(lambda: index.count(name) == 3, 30, "vector deleted")
    patched = http.patch(f"{base}/gone", json={"description": "x", "rerank": {"k": 7}}).json()
    assert (patched["description"], patched["rerank"]["k"]) == ("x", 7)
    assert http.delete(f"{base}/gone").status_code == 204
    assert http.get(f"{base}/gone").status_code == 404
    wait_until(lambda: not index.exists(name), 30, "Milvus collection dropped")


def test_eval_collection_measures_labelled_queries_through_the_api(
    stack: Stack, http: requests.Session, ingested: dict[str, Any], tmp_path: Path
) -> None:
    from evaluation import metrics

    (tmp_path / "q.png").write_bytes(shape_image("blue", "square"))
    lines = [
        {"query": "a red circle", "relevant": ["red-circle"]},
        {"query": {"image_path": "q.png"}, "relevant": {"blue-square": 2, "blue-circle": 1}},
        {"query": "nothing is relevant here", "relevant": []},
    ]
    queries = tmp_path / "labelled.jsonl"
    queries.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    key = stack.create_key(("search",))
    out = tmp_path / "eval"
    common = ["--queries", str(queries), "--api", stack.api_url, "--output", str(out)]
    result = _cli("eval", "collection", "shapes", *common, "--key", key)
    assert result.returncode == 0, result.stderr
    summary = json.loads((out / "results.json").read_text())
    assert (summary["queries"], summary["skipped_no_relevant"]) == (2, 1)
    grades = [{"red-circle": 1.0}, {"blue-square": 2.0, "blue-circle": 1.0}]
    for mode in ("recall", "rerank"):
        rankings = [record[mode]["top"] for record in summary["records"]]
        scores = summary["modes"][mode]
        for k in (1, 5, 10):
            expected = [metrics.recall_at_k(r, g, k) for r, g in zip(rankings, grades, strict=True)]
            assert scores["recall"][str(k)] == pytest.approx(sum(expected) / 2)
        mrr = [metrics.reciprocal_rank(r, g) for r, g in zip(rankings, grades, strict=True)]
        assert scores["mrr"] == pytest.approx(sum(mrr) / 2)
        ndcg = [metrics.ndcg_at_k(r, g, 10) for r, g in zip(rankings, grades, strict=True)]
        assert scores["ndcg@10"] == pytest.approx(sum(ndcg) / 2)
        assert scores["latency_ms"]["p50"] > 0
    assert "rerank" in summary["modes"]["rerank"]["stage_ms"]
    assert "rerank" not in summary["modes"]["recall"]["stage_ms"]
    # The recall-only ranking is exactly what a client gets from the same request.
    direct = _query(
        stack, http, {"text": "a red circle", "top_k": 10, "rerank": {"enabled": False}}
    )
    assert summary["records"][0]["recall"]["top"] == [r["document_id"] for r in direct["results"]]
    assert "R@1" in (out / "results.txt").read_text()
    assert (out / "results.png").stat().st_size
    refused = _cli("eval", "collection", "shapes", *common, "--key", "not-a-key")
    assert refused.returncode == 1
    assert "401 unauthorized" in refused.stderr
    assert "Traceback" not in refused.stderr


class _Blocking:
    """An ``AsyncClient`` (or one of its namespaces) whose coroutine methods run to the end
    on one event loop, so the same test drives the async client as the sync one."""

    def __init__(self, target: Any, loop: asyncio.AbstractEventLoop) -> None:
        self._target, self._loop = target, loop

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._target, name)
        if inspect.iscoroutinefunction(value):
            return lambda *args, **kw: self._loop.run_until_complete(value(*args, **kw))
        if type(value).__module__ == "umarvel_client.aio":  # collections, documents, jobs
            return _Blocking(value, self._loop)
        return value


@pytest.fixture(params=["sync", "async"])
def client_kind(request: pytest.FixtureRequest) -> Iterator[Callable[..., Any]]:
    """Makes a client of each kind: ``Client``, or ``AsyncClient`` run call by call."""
    from umarvel_client import AsyncClient, Client

    if request.param == "sync":
        yield Client
        return
    loop = asyncio.new_event_loop()
    made: list[Any] = []

    def make(*args: Any, **kw: Any) -> Any:
        made.append(AsyncClient(*args, **kw))
        return _Blocking(made[-1], loop)

    yield make
    for client in made:
        loop.run_until_complete(client.aclose())
    loop.close()


def test_python_client_drives_the_whole_api(stack: Stack, client_kind: Callable[..., Any]) -> None:
    from umarvel_client import Conflict, InvalidRequest, NotFound, Unauthorized

    Client = client_kind  # noqa: N806 - the sync or the async client, one test for both
    api = Client(stack.api_url, stack.create_key(("admin",)), poll_seconds=0.05)
    created = api.collections.create(
        "pyclient",
        description="from Python",
        metadata_fields={"colour": "str", "n": "int"},
        rerank={"k": 5},
    )
    assert (created.rerank.k, created.documents.total) == (5, 0)
    with pytest.raises(Conflict, match="already exists"):
        api.collections.create("pyclient")
    assert "pyclient" in {c.name for c in api.collections.list()}

    # Images as bytes (the client encodes them), one of them broken.
    docs = []
    for doc in sample_documents():
        colour, shape = doc["id"].split("-")
        docs.append({**doc, "image": shape_image(colour, shape)} if "image" in doc else doc)
    docs.append({"id": "broken", "image": b"not an image"})
    seen: list[int] = []
    summary = api.documents.ingest(
        "pyclient", iter(docs), batch_size=4, progress=lambda s: seen.append(s.done + s.failed)
    )
    assert (summary.total, summary.done, summary.failed, len(summary.jobs)) == (10, 9, 1, 3)
    assert [e.id for e in summary.errors] == ["broken"]
    assert seen == sorted(seen)
    assert seen[-1] == 10

    text = api.search("pyclient", text="a red circle", top_k=3)
    assert (text.status, [h.rank for h in text.hits]) == ("done", [1, 2, 3])
    assert all(h.p_yes is not None for h in text.hits)
    assert [h.score for h in text.hits] == sorted((h.score for h in text.hits), reverse=True)
    again = api.search("pyclient", text="a red circle", top_k=3)
    assert again.cached
    assert [h.document_id for h in again.hits] == [h.document_id for h in text.hits]
    image = api.search("pyclient", image=shape_image("blue", "square"), top_k=3, rerank=False)
    assert len(image.hits) == 3
    assert all(h.p_yes is None for h in image.hits)
    composed = api.search(
        "pyclient", text="the same in red", image=shape_image("green", "triangle"), top_k=3
    )
    assert len(composed.hits) == 3
    assert "rerank" in composed.timings
    red = api.search("pyclient", text="a shape", filter={"colour": "red"}, top_k=9, rerank=False)
    assert {h.metadata["colour"] for h in red.hits} == {"red"}
    assert len(red.hits) == 3

    assert api.documents.get("pyclient", "red-circle").status == "indexed"
    api.documents.delete("pyclient", "red-circle")
    with pytest.raises(NotFound):
        api.documents.get("pyclient", "red-circle")
    assert api.documents.delete_where("pyclient", {"colour": "blue"}) == 3
    patched = api.collections.patch("pyclient", description="changed", rerank={"weight": 0.3})
    assert (patched.description, patched.rerank.weight) == ("changed", 0.3)
    assert patched.version > created.version
    job = api.collections.reindex("pyclient", wait=True, timeout=120)
    assert (job.kind, job.state) == ("reindex", "done")
    assert api.collections.get("pyclient").generation == created.generation + 1

    running = api.search("pyclient", text="a fresh query", wait=0, until_done=False)
    after = api.jobs.cancel_query(running.job_id)
    assert after is None or after.status in ("cancelled", "done")

    with pytest.raises(InvalidRequest):
        api.search("pyclient", text="x", top_k=0)
    with pytest.raises(Unauthorized):
        Client(stack.api_url, "not-a-key").collections.list()
    api.collections.delete("pyclient")
    with pytest.raises(NotFound):
        api.collections.get("pyclient")


def test_cli_collections_search_and_failed_ingestion(stack: Stack, tmp_path: Path) -> None:
    common = ["--api", stack.api_url, "--key", stack.create_key(("admin",))]
    created = _cli("collections", "create", "clicol", "--field", "colour=str", "--rerank-k", "4",
                   "--json", *common)  # fmt: skip
    assert created.returncode == 0, created.stderr
    assert json.loads(created.stdout)["rerank"]["k"] == 4
    listed = _cli("collections", "list", "--json", *common)
    assert "clicol" in {c["name"] for c in json.loads(listed.stdout)}
    assert "clicol" in _cli("collections", "list", *common).stdout

    folder = tmp_path / "images"
    folder.mkdir()
    for colour in ("red", "green", "blue"):
        (folder / f"{colour}.png").write_bytes(shape_image(colour, "circle"))
    (folder / "bad.png").write_bytes(b"not a png")
    ingested = _cli("ingest", str(folder), "--collection", "clicol", *common,
                    "--state", str(tmp_path / "state.json"))  # fmt: skip
    assert ingested.returncode == 1  # a document failed
    assert "3 indexed, 1 failed of 4" in ingested.stdout
    assert "failed: bad.png:" in ingested.stderr
    shown = json.loads(_cli("collections", "show", "clicol", "--json", *common).stdout)
    assert shown["documents"]["indexed"] == 3
    assert "recall model" in _cli("collections", "show", "clicol", *common).stdout

    searched = _cli("search", "clicol", "--text", "a red circle", "--top-k", "2", "--json", *common)
    assert searched.returncode == 0, searched.stderr
    answer = json.loads(searched.stdout)
    assert answer["status"] == "done"
    assert len(answer["results"]) == 2
    by_image = _cli("search", "clicol", "--image", str(folder / "blue.png"), "--text", "in red",
                    *common)  # fmt: skip
    assert by_image.returncode == 0, by_image.stderr
    assert "blue.png" in by_image.stdout or "red.png" in by_image.stdout

    assert _cli("collections", "delete", "clicol", "--yes", *common).returncode == 0
    missing = _cli("collections", "show", "clicol", *common)
    assert missing.returncode == 1
    assert missing.stderr.startswith("Error: 404 not_found:")
    assert len(missing.stderr.strip().splitlines()) == 1
    refused = _cli("collections", "list", "--api", stack.api_url, "--key", "nope")
    assert refused.returncode == 1
    assert "401" in refused.stderr
    assert "Traceback" not in refused.stderr + missing.stderr


def test_reindex_swaps_generations_while_search_answers(
    stack: Stack, http: requests.Session, tiny_models: dict[str, Path]
) -> None:
    import threading

    base = f"{stack.api_url}/v1/collections"
    _text_collection(stack, http, "swap", [f"swap document number {i}" for i in range(24)], "s")
    first = http.get(f"{base}/swap").json()
    body = {"text": "swap document", "top_k": 24, "rerank": {"enabled": False}, "wait": 20}
    answers: list[tuple[int, int]] = []
    stop = threading.Event()

    def search() -> None:
        session = requests.Session()
        session.headers.update(http.headers)
        while not stop.is_set():
            response = session.post(f"{base}/swap/queries", json=body)
            answer = response.json()
            answers.append((response.status_code, len(answer.get("results") or [])))
            body["text"] = f"swap document {len(answers)}"  # past the result cache

    searcher = threading.Thread(target=search)
    searcher.start()
    try:
        time.sleep(0.5)
        new_model = str(tiny_models["qwen2_vl"])
        job = http.post(f"{base}/swap/reindex", json={"recall_model": new_model}).json()
        done = poll(
            http,
            stack.api_url + job["url"],
            lambda j: j["state"] != "running" and j["state"] != "queued",
        )
        time.sleep(1.0)
    finally:
        stop.set()
        searcher.join()
    assert (done["state"], done["done"], done["total"]) == ("done", 24, 24)
    collection = http.get(f"{base}/swap").json()
    assert (collection["generation"], collection["recall_model"]) == (2, new_model)
    # Search answered before, during and after the switch, always with every document.
    assert len(answers) >= 3
    assert set(answers) == {(200, 24)}
    index = MilvusIndex(stack.env["UMARVEL_MILVUS_URI"])
    assert collection["milvus_collection"] == first["milvus_collection"][: -len("1")] + "2"
    assert index.count(collection["milvus_collection"]) == 24
    wait_until(
        lambda: not index.exists(first["milvus_collection"]), 30, "the old generation dropped"
    )


def test_keyword_hybrid_examples_groups_and_pages_through_the_client_and_cli(
    stack: Stack,
) -> None:
    """The live stack (worker processes, PostgreSQL, milvus-lite): a code that one
    document in 500 holds is first in keyword and hybrid search, reranked; more like this;
    one hit per group; page two from the cached ranking."""
    from umarvel_client import Client

    key = stack.create_key(("admin",))
    api = Client(stack.api_url, key, poll_seconds=0.05)
    api.collections.create("catalogue", metadata_fields={"product": "str"}, rerank={"k": 20})
    docs = [
        {
            "id": f"c{i}",
            "text": f"cotton shirt SKU-{10000 + i}",
            "metadata": {"product": f"p{i % 25}"},
        }
        for i in range(500)
    ]
    docs[321]["text"] = "cotton shirt SKU-48213, made by Kowalczyk"
    docs += [{"id": twin, "text": "a velvet scarf with a golden fringe"} for twin in ("ta", "tb")]
    job = api.documents.ingest("catalogue", docs, wait=True, timeout=300)
    assert job.done == 502, job

    for mode in ("keyword", "hybrid"):
        found = api.search("catalogue", text="SKU-48213", mode=mode, top_k=5, rerank=True)
        assert found.hits[0].document_id == "c321", (mode, found.hits)
        assert found.hits[0].keyword is not None
    like = api.search("catalogue", like=["ta"], top_k=3)
    assert like.hits[0].document_id == "tb"
    assert "ta" not in {hit.document_id for hit in like.hits}
    grouped = api.search("catalogue", text="cotton shirt", group_by="product", top_k=20)
    values = [hit.group for hit in grouped.hits if hit.group is not None]
    assert len(values) == len(set(values)) > 1
    first = api.search("catalogue", text="a cotton shirt", top_k=20)
    second = api.search("catalogue", text="a cotton shirt", top_k=10, offset=10)
    assert second.cached
    assert [h.document_id for h in second.hits] == [h.document_id for h in first.hits[10:]]

    common = ["--api", stack.api_url, "--key", key]
    searched = _cli("search", "catalogue", "--text", "SKU-48213", "--mode", "keyword", *common)
    assert searched.returncode == 0, searched.stderr
    assert searched.stdout.splitlines()[2].split()[1] == "c321"
    liked = _cli("search", "catalogue", "--like", "ta", "--top-k", "1", "--json", *common)
    assert json.loads(liked.stdout)["results"][0]["document_id"] == "tb"
    api.collections.delete("catalogue")


def test_a_request_id_is_on_every_log_line_of_its_path(
    stack: Stack, http: requests.Session, ingested: dict[str, Any]
) -> None:
    """The client's X-Request-Id (or a new one) comes back, and the API's line and both
    workers' lines for the query's steps carry it."""
    url = f"{stack.api_url}/v1/collections/shapes/queries"
    body = {"text": "a request followed through", "wait": 20}
    answer = http.post(url, json=body, headers={"X-Request-Id": "req-4711.a"})
    assert answer.headers["X-Request-Id"] == "req-4711.a"
    assert answer.json()["status"] == "done"
    odd = http.post(url, json={**body, "text": "odd id"}, headers={"X-Request-Id": "a b"})
    assert len(odd.headers["X-Request-Id"]) == 32  # refused as given: a new one

    def lines(name: str) -> list[str]:
        log = (stack.log_dir or stack.workdir / "logs") / f"{name}.log"
        return [line for line in log.read_text().splitlines() if "req-4711.a" in line]

    names = ("api", "worker-recall", "worker-rerank")
    wait_until(lambda: all(lines(name) for name in names), 10, "the request id in every log")
    assert any("event=request" in line and "job_id=" in line for line in lines("api"))
    assert any("task=recall.search" in line for line in lines("worker-recall"))
    assert any("task=rerank.score" in line for line in lines("worker-rerank"))


def test_videos_through_the_live_stack(stack: Stack, tmp_path: Path) -> None:
    """Clips uploaded and read by path; a 3-minute clip as 11 segments; text and video
    queries (client and CLI) find each video once with its time span, reranked on its
    middle frame; a truncated clip refused alone; a delete takes every segment."""
    from devkit.clips import make_clip
    from recall.filters import ids_expression
    from recall.index import DOCUMENT_FIELD, END_FIELD, START_FIELD
    from umarvel_client import Client

    caption = "a yellow square crossing a blue screen"
    short = make_clip(80, 48, 12, 4, codec="libvpx-vp9", container="webm")
    bare = make_clip(64, 64, 8, 2)
    (stack.settings().ingest_roots[0] / "short.webm").write_bytes(short)
    (tmp_path / "query.mp4").write_bytes(bare)
    key = stack.create_key(("admin",))
    api = Client(stack.api_url, key, poll_seconds=0.05)
    clips = api.collections.create("clips")
    docs: list[dict[str, Any]] = [
        {
            "id": "long",
            "text": caption,
            "media": [{"kind": "video", "data": make_clip(64, 48, 360, 2)}],
        },
        {
            "id": "short",
            "text": "a clip",
            "media": [
                {"kind": "video", "path": str(stack.settings().ingest_roots[0] / "short.webm")}
            ],
        },
        {"id": "bare", "media": [{"kind": "video", "data": tmp_path / "query.mp4"}]},
        {"id": "broken", "media": [{"kind": "video", "data": short[: len(short) * 3 // 4]}]},
        {"id": "caption", "text": caption},
    ]
    summary = api.documents.ingest("clips", docs, wait=True, timeout=300)
    assert (summary.done, summary.failed) == (4, 1), summary
    assert [(e.index, "truncated" in e.message) for e in summary.errors] == [(3, True)]

    target = clips.raw["milvus_collection"]
    index = MilvusIndex(stack.settings().milvus_uri)
    try:

        def spans(document: str) -> list[tuple[float, float]]:
            rows = index.client.query(
                target,
                filter=ids_expression([document], DOCUMENT_FIELD),
                output_fields=[START_FIELD, END_FIELD],
                consistency_level="Strong",
            )
            return sorted((row[START_FIELD], row[END_FIELD]) for row in rows)

        assert spans("long") == [(15.0 * n, 15.0 * n + 30) for n in range(11)]

        found = api.search("clips", text=caption, candidates="video", top_k=10, rerank=True)
        ids = [hit.document_id for hit in found.hits]
        assert sorted(ids) == ["bare", "caption", "long", "short"]  # each video once
        long_hit = found.hits[ids.index("long")]
        assert long_hit.segment is not None
        assert (long_hit.segment["start"], long_hit.segment["end"]) in spans("long")
        assert all(hit.p_yes is not None for hit in found.hits)

        by_video = api.search("clips", video=bare, top_k=3)
        assert by_video.hits[0].document_id == "bare"
        assert by_video.hits[0].segment == {"start": 0.0, "end": 4.0}
        common = ["--api", stack.api_url, "--key", key]
        cli = _cli("search", "clips", "--video", str(tmp_path / "query.mp4"), "--json", *common)
        assert cli.returncode == 0, cli.stderr
        assert json.loads(cli.stdout)["results"][0]["document_id"] == "bare"

        api.documents.delete("clips", "long")
        wait_until(lambda: not spans("long"), 60, "the video's segments deleted")
        assert index.count(target) == 3
    finally:
        index.close()
    api.collections.delete("clips")


def test_a_query_is_one_trace_across_the_api_both_workers_sql_redis_and_milvus(
    stack: Stack, http: requests.Session, ingested: dict[str, Any]
) -> None:
    """UMARVEL_TRACING=jsonl:PATH in every process of the stack: a query's spans, from the
    API's request to the rerank worker's step, share one trace id."""
    spans_file = Path(stack.settings().tracing.removeprefix("jsonl:"))
    body = {"text": "a traced query about a blue square", "top_k": 3, "rerank": {"enabled": True}}
    answer = _query(stack, http, body)
    assert answer["status"] == "done"

    def spans() -> list[dict[str, Any]]:
        return [json.loads(line) for line in spans_file.read_text().splitlines()]

    def submitted(span: dict[str, Any]) -> bool:
        route = span["attributes"].get("http.route", "")
        return span["kind"] == "SpanKind.SERVER" and route.endswith("/queries")

    request = max((s for s in spans() if submitted(s)), key=lambda s: s["start_time"])
    trace_id = request["context"]["trace_id"]

    def traced() -> list[dict[str, Any]]:
        return [s for s in spans() if s["context"]["trace_id"] == trace_id]

    # The rerank step's last spans are written as it ends, after the answer was read.
    def services() -> set[str]:
        return {s["resource"]["attributes"]["service.name"] for s in traced()}

    wait_until(lambda: any("rerank" in name for name in services()), 30, "the rerank span")
    names = services()
    assert "umarvel-api" in names
    assert any(name.startswith("umarvel-worker-") and "recall" in name for name in names), names
    systems = {s["attributes"].get("db.system") for s in traced()}
    assert {"postgresql", "redis"} <= systems, systems
    milvus = [
        s for s in traced() if "milvus" in str(s["attributes"].get("rpc.service", "")).lower()
    ]
    assert milvus, sorted({s["name"] for s in traced()})
    tasks = {s["name"] for s in traced() if s["kind"] == "SpanKind.CONSUMER"}
    assert {"run/recall.search", "run/rerank.score"} <= tasks, tasks
