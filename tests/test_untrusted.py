"""Hostile clients, through HTTP on the real stack (PostgreSQL, Redis, milvus-lite, workers).

Each test reproduces something a single request once did to the data or to other clients:
a crafted id that wiped a collection, a poison query that failed its batch neighbours, a
poison document that failed its chunk, strings and numbers that became 500s, a race that
was reported as an outage, and keys that reached further than their grant.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import requests
from PIL import Image
from sqlalchemy import create_engine, select

from cli.stack import Stack, wait_until
from devkit.samples import b64, shape_image
from recall.index import MilvusIndex
from tests.conftest import live_stack
from tests.helpers import admin_session, poll

pytestmark = pytest.mark.integration

CRAFTED = "x'] or id not in ['"
QUOTED = ["O'Brien", 'say "hi"', "back\\slash", "[bracket]", "a, b", "id == id"]


@pytest.fixture(scope="module")
def stack(
    tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("untrusted")
    overrides = {"heartbeat_seconds": "0.5", "media_grace_seconds": "0"}
    with live_stack(tiny_models, workdir, **overrides) as running:
        yield running


@pytest.fixture(scope="module")
def http(stack: Stack) -> requests.Session:
    return admin_session(stack)


def _client(stack: Stack, scopes: tuple[str, ...], collections: tuple[str, ...] = ()) -> Any:
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {stack.create_key(scopes, collections)}"
    return session


def _collection(stack: Stack, http: requests.Session, name: str, **fields: Any) -> str:
    response = http.post(f"{stack.api_url}/v1/collections", json={"name": name, **fields})
    assert response.status_code == 201, response.text
    return f"{stack.api_url}/v1/collections/{name}"


def _ingest(stack: Stack, http: requests.Session, base: str, docs: list[dict]) -> dict:
    response = http.post(f"{base}/documents", json={"documents": docs})
    assert response.status_code == 202, response.text
    return poll(http, stack.api_url + response.json()["url"], lambda j: j["state"] == "done")


def _query(stack: Stack, http: requests.Session, base: str, body: dict) -> dict:
    response = http.post(f"{base}/queries", json={"wait": 30, **body})
    assert response.status_code in (200, 202), response.text
    answer = response.json()
    if answer["is_running"]:
        answer = poll(http, stack.api_url + answer["url"], lambda j: not j["is_running"])
    return answer


def _counts(stack: Stack, http: requests.Session, base: str) -> tuple[int, int]:
    """(Milvus rows, SQL indexed documents) of a collection's served generation."""
    collection = http.get(base).json()
    index = MilvusIndex(stack.settings().milvus_uri)
    try:
        return index.count(collection["milvus_collection"]), collection["documents"]["indexed"]
    finally:
        index.close()


def _at_once(http: requests.Session, calls: list[Callable[[requests.Session], Any]]) -> list:
    """Run each call in its own thread and HTTP session, released together."""
    results: list[Any] = [None] * len(calls)
    barrier = threading.Barrier(len(calls))

    def run(n: int) -> None:
        session = requests.Session()
        session.headers.update(http.headers)
        barrier.wait()
        results[n] = calls[n](session)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def _error(response: requests.Response, status: int) -> dict:
    assert response.status_code == status, (response.status_code, response.text[:300])
    body = response.json()
    assert set(body) == {"error"}
    assert {"code", "message", "details"} <= set(body["error"])
    return dict(body["error"])


# -- expressions -----------------------------------------------------------------------------
def test_a_crafted_id_deletes_only_its_own_document(stack: Stack, http: requests.Session) -> None:
    base = _collection(stack, http, "crafted")
    ids = [CRAFTED, *QUOTED, *(f"plain-{i}" for i in range(13))]
    _ingest(stack, http, base, [{"id": i, "text": f"document {n}"} for n, i in enumerate(ids)])
    assert _counts(stack, http, base) == (20, 20)
    for doomed, left in [(CRAFTED, 19), ("O'Brien", 18), ("back\\slash", 17)]:
        response = http.delete(f"{base}/documents/{quote(doomed, safe='')}")
        assert response.status_code == 204, response.text
        # The vector goes through a worker: Milvus follows SQL within moments, no further.
        wait_until(lambda n=left: _counts(stack, http, base) == (n, n), 30, f"delete {doomed}")
    hits = _query(
        stack, http, base, {"text": "document", "top_k": 20, "rerank": {"enabled": False}}
    )
    assert hits["status"] == "done"
    assert len(hits["results"]) == 17
    assert {h["document_id"] for h in hits["results"]} == set(ids) - {
        CRAFTED,
        "O'Brien",
        "back\\slash",
    }


def test_filter_values_cannot_inject(stack: Stack, http: requests.Session) -> None:
    base = _collection(stack, http, "filtered", metadata_fields={"tag": "str"})
    docs = [
        {"id": f"d{i}", "text": f"tagged {i}", "metadata": {"tag": "ab"[i % 2]}} for i in range(4)
    ]
    _ingest(stack, http, base, docs)
    hostile = 'a" or tag != "'
    answer = _query(stack, http, base, {"text": "tagged", "filter": {"tag": hostile}})
    assert (answer["status"], answer["results"]) == ("done", [])
    response = http.delete(f"{base}/documents", params={"filter": json.dumps({"tag": hostile})})
    assert response.json() == {"deleted": 0}
    assert _counts(stack, http, base) == (4, 4)


# -- one request's failure stays with it ------------------------------------------------------
def test_a_poison_query_does_not_fail_its_batch_neighbours(
    stack: Stack, http: requests.Session
) -> None:
    base = _collection(stack, http, "neighbours")
    _ingest(stack, http, base, [{"id": f"n{i}", "text": f"neighbour {i}"} for i in range(6)])
    poison = {"text": "x <|image_pad|> y <|im_end|> <emb> <instruction_start>"}
    bodies = [poison, *({"text": f"benign query {i} {uuid.uuid4().hex}"} for i in range(8))]
    # Nine teams, a key each (one key may hold only UMARVEL_KEY_MAX_WAITING waiting POSTs).
    keys = [{"Authorization": f"Bearer {stack.create_key(('search',))}"} for _ in bodies]
    answers = dict(
        enumerate(
            _at_once(
                http,
                [
                    lambda s, b=body, k=key: s.post(
                        f"{base}/queries", json={**b, "wait": 30}, headers=k
                    )
                    for body, key in zip(bodies, keys, strict=True)
                ],
            )
        )
    )
    statuses = {n: r.json()["status"] for n, r in answers.items()}
    assert all(r.status_code == 200 for r in answers.values()), statuses
    assert [statuses[n] for n in range(1, 9)] == ["done"] * 8
    # Its special-token strings are plain text to the model: the query itself succeeds.
    assert statuses[0] == "done"


def _png(width: int, height: int) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), "red").save(buffer, format="PNG")
    return b64(buffer.getvalue())


def test_a_poison_image_is_refused_at_the_door(stack: Stack, http: requests.Session) -> None:
    base = _collection(stack, http, "geometry")
    error = _error(http.post(f"{base}/queries", json={"image": _png(201, 1)}), 400)
    assert "aspect ratio" in error["message"]
    good = [{"id": f"g{i}", "text": f"good document {i}"} for i in range(255)]
    poison = {"id": "poison", "text": "a sliver", "image": _png(201, 1)}
    job = _ingest(stack, http, base, [*good[:100], poison, *good[100:]])
    assert (job["done"], job["failed"]) == (255, 1)
    assert [e["id"] for e in job["errors"]] == ["poison"]
    assert "aspect ratio" in job["errors"][0]["message"]
    assert _counts(stack, http, base) == (255, 255)


# -- strings and numbers that once were 500s -----------------------------------------------
RAW_BODIES = [
    ("POST", "/v1/collections", '{"name": "x", "description": "nul \\u0000 here"}'),
    ("POST", "/v1/collections", '{"name": "x", "description": "lone \\ud800 surrogate"}'),
    ("POST", "/v1/collections", '{"name": "x", "recall_model": "m\\u0000"}'),
    ("POST", "/v1/collections", '{"name": "x", "rerank": {"weight": 1e400}}'),
    ("POST", "/v1/collections", '{"name": "x", "rerank": {"k": ' + "9" * 5000 + "}}"),
    ("POST", "/v1/collections", '{"name": "x", "rerank": {"weight": NaN}}'),
    ("POST", "/v1/collections", "[" * 4_000 + "]" * 4_000),
    (
        "POST",
        "/v1/collections",
        '{"name": "x", "metadata_fields": ' + '{"a":' * 40 + "1" + "}" * 41,
    ),
    ("POST", "/v1/collections/target/queries", '{"text": "nul \\u0000"}'),
    ("POST", "/v1/collections/target/queries", '{"text": "\\udc00"}'),
    ("POST", "/v1/collections/target/queries", '{"text": "a", "instruction": "\\u0000"}'),
    ("POST", "/v1/collections/target/queries", '{"text": "a", "filter": {"price": {"lt": 1e999}}}'),
    (
        "POST",
        "/v1/collections/target/queries",
        '{"text": "a", "filter": {"price": {"lt": ' + "1" * 400 + "}}}",
    ),
    ("POST", "/v1/collections/target/queries", '{"text": "a", "filter": {"tag": "\\u0007"}}'),
    ("POST", "/v1/collections/target/queries", '{"text": "a", "top_k": 1e308}'),
    ("POST", "/v1/collections/target/reindex", '{"recall_model": "\\u0000"}'),
    ("PATCH", "/v1/collections/target", '{"description": "\\ud83d"}'),
    ("PATCH", "/v1/collections/target", '{"rerank": {"weight": false}}'),
    ("POST", "/v1/collections/target/queries", '{"text": "a", "top_k": "5"}'),
    ("POST", "/v1/collections/target/queries", '{"text": "a", "rerank": {"enabled": 1}}'),
]


@pytest.fixture(scope="module")
def target(stack: Stack, http: requests.Session) -> str:
    base = _collection(stack, http, "target", metadata_fields={"price": "float", "tag": "str"})
    _ingest(stack, http, base, [{"id": "t0", "text": "target document", "image": _png(8, 8)}])
    return base


@pytest.mark.parametrize(("method", "path", "body"), RAW_BODIES)
def test_hostile_json_is_a_400(
    stack: Stack, http: requests.Session, target: str, method: str, path: str, body: str
) -> None:
    response = http.request(
        method, stack.api_url + path, data=body, headers={"Content-Type": "application/json"}
    )
    _error(response, 400)


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/collections", "[" * 100_000 + "]" * 100_000),
        ("/v1/collections/target/queries", '{"text": "a", "x": [' + "0," * 3_000_000 + "0]}"),
        ("/v1/collections/target/queries", '{"text": "' + "a" * 40 * 2**20 + '"}'),
        ("/v1/collections", '{"name": "' + "a" * 2 * 2**20 + '"}'),
    ],
)
def test_a_body_over_its_routes_limit_is_a_413_before_it_is_parsed(
    stack: Stack, http: requests.Session, target: str, path: str, body: str
) -> None:
    """Bytes over the route's limit are refused from Content-Length, values over its bound
    before the JSON is parsed: fast, whatever the body holds."""
    started = time.monotonic()
    response = http.post(
        stack.api_url + path, data=body, headers={"Content-Type": "application/json"}
    )
    assert _error(response, 413)["code"] == "payload_too_large"
    assert time.monotonic() - started < 1.0


@pytest.mark.parametrize(
    "path",
    [
        "/v1/collections/ta%00rget",
        "/v1/collections/target/documents/a%00b",
        "/v1/collections/target/documents/a%07b",
        "/v1/ingest-jobs/%00",
        "/v1/queries/%00",
        "/v1/media/%00",
        "/v1/collections/target/documents?filter=%7B%22tag%22%3A%22%00%22%7D",
        "/v1/queries/abc?offset=" + "9" * 5000,
    ],
)
def test_hostile_urls_are_a_400(stack: Stack, http: requests.Session, path: str) -> None:
    method = "DELETE" if "documents?filter" in path else "GET"
    _error(http.request(method, stack.api_url + path), 400)


def test_hostile_items_fail_alone_with_a_reason(
    stack: Stack, http: requests.Session, target: str
) -> None:
    lines = [
        json.dumps({"id": "ok-1", "text": "fine"}),
        '{"id": "nul\\u0000id", "text": "bad id"}',
        '{"id": "bell\\u0007", "text": "control character in the id"}',
        json.dumps({"id": "é" * 129 * 2, "text": "over 256 characters"}),
        json.dumps({"id": "😀" * 129, "text": "129 characters, but over 512 UTF-8 bytes"}),
        '{"id": "surrogate", "text": "\\ud800"}',
        '{"id": "meta", "text": "x", "metadata": {"k\\u0000": 1}}',
        json.dumps({"id": "long-tag", "text": "x", "metadata": {"tag": "t" * 2049}}),
        '{"id": "nan", "text": "x", "metadata": {"price": NaN}}',
        json.dumps({"id": "path", "text": "x", "image_path": "/etc/passwd\u0000.png"}),
        '{"id": "deep", "text": "x", "metadata": ' + '{"a":' * 40 + "1" + "}" * 41,
        json.dumps({"id": "ok-2", "text": "fine too"}),
    ]
    response = http.post(
        f"{target}/documents",
        data="\n".join(lines),
        headers={"Content-Type": "application/x-ndjson"},
    )
    assert response.status_code == 202, response.text
    job = poll(http, stack.api_url + response.json()["url"], lambda j: j["state"] == "done")
    assert (job["total"], job["done"], job["failed"]) == (12, 2, 10)
    failed = {e["index"]: e for e in job["errors"]}
    assert sorted(failed) == list(range(1, 11))
    assert all(e["message"] for e in failed.values())
    # An id that could not be stored is named by its position only.
    assert failed[1]["id"] is None
    assert failed[5]["id"] == "surrogate"


# -- races -----------------------------------------------------------------------------------
def test_a_delete_racing_an_ingestion_is_never_an_outage(
    stack: Stack, http: requests.Session
) -> None:
    codes: list[int] = []
    for round_ in range(4):
        base = _collection(stack, http, f"race{round_}")
        docs = [{"id": f"r{i}", "text": f"race {i}"} for i in range(300)]

        def ingest(session: requests.Session, base: str = base, docs: list = docs) -> int:
            return session.post(f"{base}/documents", json={"documents": docs}).status_code

        def delete(
            session: requests.Session, base: str = base, pause: float = 0.02 * round_
        ) -> int:
            time.sleep(pause)
            return session.delete(base).status_code

        codes += _at_once(http, [ingest, ingest, delete])
        # A delete that kept losing its race says so (409), and goes through when sent again.
        assert http.delete(base).status_code in (204, 404)
        _error(http.get(base), 404)
    assert set(codes) <= {202, 204, 404, 409}, codes
    assert 204 in codes


def test_the_same_new_id_sent_twice_at_once(stack: Stack, http: requests.Session) -> None:
    base = _collection(stack, http, "twice")

    def send(session: requests.Session, n: int) -> int:
        docs = [{"id": f"same-{i}", "text": f"sent by {n}"} for i in range(50)]
        return session.post(f"{base}/documents", json={"documents": docs}).status_code

    codes = _at_once(http, [lambda s, n=n: send(s, n) for n in range(6)])
    assert set(codes) <= {202, 409}, codes
    assert 202 in codes
    wait_until(lambda: _counts(stack, http, base) == (50, 50), 60, "one row per id")


# -- authorization ---------------------------------------------------------------------------
def test_limited_keys_stay_inside_their_collections(stack: Stack, http: requests.Session) -> None:
    mine = _collection(stack, http, "mine")
    theirs = _collection(stack, http, "theirs")
    red, blue = _png(12, 12), b64(shape_image("blue", "circle"))
    _ingest(stack, http, mine, [{"id": "m", "text": "mine", "image": red}])
    _ingest(stack, http, theirs, [{"id": "t", "text": "theirs", "image": blue}])
    admin_of_mine = _client(stack, ("admin",), ("mine",))
    _error(admin_of_mine.post(f"{stack.api_url}/v1/collections", json={"name": "other"}), 403)
    assert (
        admin_of_mine.post(f"{stack.api_url}/v1/collections", json={"name": "mine"}).status_code
        == 409
    )

    reader = _client(stack, ("search",), ("mine",))
    own = reader.get(stack.api_url + http.get(f"{mine}/documents/m").json()["image_url"])
    assert own.status_code == 200
    assert own.headers["Cache-Control"].startswith("private")
    other = http.get(f"{theirs}/documents/t").json()["image_url"]
    _error(reader.get(stack.api_url + other), 404)

    # A query image is the querying key's alone, even for a key of the same reach.
    first, second = _client(stack, ("search",), ("mine",)), _client(stack, ("search",), ("mine",))
    image = _png(30, 20)
    job = first.post(f"{mine}/queries", json={"image": image, "rerank": {"enabled": False}}).json()
    key = _query_media_key(stack, job["id"])
    assert first.get(f"{stack.api_url}/v1/media/{key}").status_code == 200
    _error(second.get(f"{stack.api_url}/v1/media/{key}"), 404)


def _query_media_key(stack: Stack, job_id: str) -> str:
    from store.tables import QueryJob

    engine = create_engine(stack.settings().database_url)
    try:
        with engine.connect() as conn:
            return str(conn.scalar(select(QueryJob.query_media_key).where(QueryJob.id == job_id)))
    finally:
        engine.dispose()


def test_only_allowed_models_are_loaded(stack: Stack, http: requests.Session) -> None:
    for model in ["/etc", "someone/else-model", "../../tmp/x"]:
        body = {"name": "models", "recall_model": model}
        error = _error(http.post(f"{stack.api_url}/v1/collections", json=body), 400)
        assert "not allowed" in error["message"]
    base = _collection(stack, http, "models")
    _error(http.post(f"{base}/reindex", json={"recall_model": "/root"}), 400)
    allowed = stack.settings().allowed_recall_models[0]
    assert http.post(f"{base}/reindex", json={"recall_model": allowed}).status_code == 202


def test_media_nothing_refers_to_are_cleaned_up(stack: Stack, http: requests.Session) -> None:
    base = _collection(stack, http, "media")
    image = _png(17, 13)
    _ingest(
        stack,
        http,
        base,
        [
            {"id": "a", "text": "kept", "image": image},
            {"id": "b", "text": "x", "image": _png(13, 17)},
        ],
    )
    kept = http.get(f"{base}/documents/a").json()["image_url"].rsplit("/", 1)[1]
    doomed = http.get(f"{base}/documents/b").json()["image_url"].rsplit("/", 1)[1]
    assert http.delete(f"{base}/documents/b").status_code == 204
    media = stack.settings().media_root
    result = subprocess.run(
        [sys.executable, "-m", "cli.main", "jobs", "cleanup"],
        env={**os.environ, **stack.env},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert not (media / doomed[:2] / doomed[2:4] / doomed).exists()
    assert (media / kept[:2] / kept[2:4] / kept).exists()
    assert http.get(f"{stack.api_url}/v1/media/{kept}").status_code == 200
