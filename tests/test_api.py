"""The HTTP API's validation and error envelope, on real SQL (both kinds) and Redis.

No worker consumes the queues here: these tests stop at what the API itself decides.
"""

from __future__ import annotations

import base64
import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from api.app import create_app
from core.settings import Settings
from core.version import VERSION
from devkit.samples import b64, shape_image
from store.db import session_scope
from store.tables import OutboxEntry, utcnow
from tests.helpers import error as _error
from tests.helpers import make_key as _key


@pytest.fixture
def client(migrated_url: str, redis_url: str, tmp_path: Path) -> FlaskClient:
    settings = Settings(
        database_url=migrated_url,
        redis_url=redis_url,
        media_root=tmp_path / "media",
        max_image_bytes=50_000,
        max_image_pixels=200 * 200,
        query_wait_seconds=0,  # no worker runs here
    )
    app = create_app(settings)
    client = app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = "Bearer " + _key(app, ["admin"])
    response = client.post(
        "/v1/collections", json={"name": "docs", "metadata_fields": {"year": "int"}}
    )
    assert response.status_code == 201, response.json
    return client


def test_health(client: FlaskClient) -> None:
    assert client.get("/healthz").json == {"status": "ok", "version": VERSION}
    assert VERSION != "unknown"  # the installed distribution's


def test_collection_lifecycle(client: FlaskClient) -> None:
    body = client.get("/v1/collections/docs").json
    assert body["name"] == "docs"
    assert body["version"] == 1
    assert body["metadata_fields"] == {"year": "int"}
    assert body["documents"]["total"] == 0
    assert [c["name"] for c in client.get("/v1/collections").json["collections"]] == ["docs"]
    assert _error(client.post("/v1/collections", json={"name": "docs"}), 409)["code"] == "conflict"


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"name": "Bad Name"}, "name"),
        ({"name": "ok", "surprise": 1}, "surprise"),
        ({"name": "ok", "metadata_fields": {"x": "json"}}, "type must be one of"),
        ({"name": "ok", "rerank": {"k": 0}}, "rerank.k"),
        ({}, "name"),
    ],
)
def test_bad_collections(client: FlaskClient, body: dict, fragment: str) -> None:
    assert fragment in _error(client.post("/v1/collections", json=body), 400)["message"]


def test_malformed_bodies(client: FlaskClient) -> None:
    url = "/v1/collections/docs/queries"
    bad_json = client.post(url, data="{not json", content_type="application/json")
    assert "not valid JSON" in _error(bad_json, 400)["message"]
    not_json = client.post(url, data="text=x", content_type="application/x-www-form-urlencoded")
    assert "application/json" in _error(not_json, 400)["message"]
    assert _error(client.post(url, json=[1, 2]), 400)["code"] == "invalid_request"


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        ({}, 400, "needs text, an image"),
        ({"text": "   "}, 400, "needs text, an image"),
        ({"text": "x", "top_k": 0}, 400, "top_k"),
        ({"text": "x", "top_k": 101}, 400, "top_k must be at most 100"),
        ({"text": "x", "top_k": "ten"}, 400, "top_k"),
        ({"text": "x", "wait": 3600}, 400, "wait must be at most"),
        ({"text": "x", "image": "%%%"}, 400, "not valid base64"),
        ({"text": "x", "image": b64(b"not an image")}, 400, "could not be decoded"),
        ({"image": b64(b"\0" * 60_000)}, 413, "bytes"),
        ({"image": b64(shape_image("red", "circle", size=300))}, 413, "pixels"),
        ({"text": "x", "filter": {"year": "2000 or 1==1"}}, 400, "declared int"),
        ({"text": "x", "filter": {"nope": 1}}, 400, "cannot filter on 'nope'"),
        ({"text": "x", "rerank": {"weight": "high"}}, 400, "rerank.weight"),
        ({"text": "x", "unknown": True}, 400, "unknown"),
    ],
)
def test_bad_queries(client: FlaskClient, body: dict, status: int, fragment: str) -> None:
    error = _error(client.post("/v1/collections/docs/queries", json=body), status)
    assert fragment in error["message"]


def test_unknown_things_are_404(client: FlaskClient) -> None:
    error = _error(client.post("/v1/collections/nope/queries", json={"text": "x"}), 404)
    assert "nope" in error["message"]
    assert _error(client.get("/v1/queries/0123"), 404)["code"] == "not_found"
    assert _error(client.get("/v1/ingest-jobs/0123"), 404)["code"] == "not_found"
    assert _error(client.get("/v1/collections/docs/documents/x"), 404)["code"] == "not_found"
    assert _error(client.get("/v1/media/" + "0" * 64), 404)["code"] == "not_found"
    assert _error(client.get("/no/such/route"), 404)["code"] == "not_found"
    assert _error(client.delete("/healthz"), 405)["code"] == "method_not_allowed"


def test_documents_are_validated_per_item(client: FlaskClient) -> None:
    png = shape_image("red", "circle")
    documents = [
        {"id": "ok-text", "text": "a caption", "metadata": {"year": 2001}},
        {"id": "ok-image", "image": base64.b64encode(png).decode()},
        {"id": "no-content"},
        {"id": "bad-image", "image": b64(b"garbage")},
        {"id": "bad-meta", "text": "x", "metadata": {"year": "2001"}},
        {"text": "no id"},
        "not an object",
        {"id": "ok-text", "text": "the same id again"},
    ]
    response = client.post("/v1/collections/docs/documents", json={"documents": documents})
    assert response.status_code == 202, response.json
    job = response.json
    assert (job["total"], job["failed"], job["state"]) == (8, 6, "queued")
    assert [e["index"] for e in job["errors"]] == [2, 3, 4, 5, 6, 7]
    messages = {e["index"]: e["message"] for e in job["errors"]}
    assert "needs text, an image" in messages[2]
    assert "could not be decoded" in messages[3]
    assert "declared int" in messages[4]
    assert "appears twice" in messages[7]
    assert client.get(job["url"]).json["id"] == job["id"]
    doc = client.get("/v1/collections/docs/documents/ok-image").json
    assert doc["status"] == "pending"
    image = client.get(doc["image_url"])
    assert image.status_code == 200
    assert image.mimetype == "image/png"
    assert image.data == png


@pytest.mark.parametrize(
    "body", [{}, {"documents": []}, {"documents": "x"}, {"documents": [{"id": "a"}] * 1001}]
)
def test_bad_document_batches(client: FlaskClient, body: dict) -> None:
    _error(client.post("/v1/collections/docs/documents", json=body), 400)


def test_an_unreachable_redis_is_a_503(migrated_url: str, tmp_path: Path) -> None:
    settings = Settings(
        database_url=migrated_url,
        redis_url="redis://127.0.0.1:1/0",
        media_root=tmp_path,
        auth_enabled=False,
    )
    client = create_app(settings).test_client()
    assert client.post("/v1/collections", json={"name": "docs"}).status_code == 201
    response = client.post("/v1/collections/docs/queries", json={"text": "x"})
    error = _error(response, 503)
    assert "Redis" in error["message"]
    assert response.headers["Retry-After"] == "5"


def test_auth_matrix(client: FlaskClient) -> None:
    app = client.application
    search_key = _key(app, ["search"])
    limited = _key(app, ["search"], ["other"])
    anonymous = app.test_client()
    query = {"text": "x", "rerank": {"enabled": False}}

    def post(key: str | None, path: str, body: dict) -> Any:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return anonymous.post(path, json=body, headers=headers)

    assert anonymous.get("/healthz").status_code == 200  # public
    assert _error(anonymous.get("/v1/collections"), 401)["code"] == "unauthorized"
    assert (
        _error(post("umk_wrong", "/v1/collections", {"name": "x"}), 401)["code"] == "unauthorized"
    )
    bad_header = anonymous.get("/v1/collections", headers={"Authorization": "Basic abc"})
    assert _error(bad_header, 401)["code"] == "unauthorized"
    # A search key may query but not administer.
    assert post(search_key, "/v1/collections/docs/queries", query).status_code == 202
    assert _error(post(search_key, "/v1/collections", {"name": "x"}), 403)["code"] == "forbidden"
    docs = {"documents": [{"id": "a", "text": "b"}]}
    assert _error(post(search_key, "/v1/collections/docs/documents", docs), 403)
    # A key limited to other collections sees neither this one nor its queries.
    assert _error(post(limited, "/v1/collections/docs/queries", query), 403)
    listed = anonymous.get("/v1/collections", headers={"Authorization": f"Bearer {limited}"})
    assert listed.json == {"collections": []}
    # A revoked key stops working at once.
    from store.db import session_scope
    from store.keys import revoke

    with session_scope(app.extensions["umarvel"].sessions) as session:
        revoke(session, search_key[:12])
    assert _error(post(search_key, "/v1/collections/docs/queries", query), 401)


def test_openapi_document_comes_from_the_request_models(client: FlaskClient) -> None:
    anonymous = client.application.test_client()
    document = anonymous.get("/v1/openapi.json").json
    assert document["info"]["title"] == "umarvel-search"
    paths = document["paths"]
    query = paths["/v1/collections/{name}/queries"]["post"]
    schema_ref = query["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    assert schema_ref.rsplit("/", 1)[-1].startswith("QueryRequest")
    assert {"200", "202", "400", "429"} <= set(query["responses"])
    assert "delete" in paths["/v1/queries/{job_id}"]
    schemas = document["components"]["schemas"]
    request_schema = next(v for k, v in schemas.items() if k.startswith("QueryRequest"))
    assert {"text", "image", "instruction", "top_k", "rerank", "filter", "wait"} <= set(
        request_schema["properties"]
    )
    page = anonymous.get("/v1/docs/swagger/")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert 'url: "/v1/docs/openapi.json"' in html
    assert anonymous.get("/v1/docs/openapi.json").json == document
    # Nothing is fetched from the internet: every asset is the API's own, and is served.
    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert assets
    assert all(url.startswith("/v1/docs/assets/") for url in assets)
    for url in assets:
        served = anonymous.get(url)
        assert served.status_code == 200, url
        assert len(served.get_data()) > 1000
    assert anonymous.get("/v1/docs/assets/..%2Fconfig.py").status_code in (400, 404)
    assert anonymous.get("/v1/docs/assets/LICENSE").status_code == 404
    assert anonymous.get("/v1/docs/redoc/").status_code == 404  # it needed a CDN


def test_paging_parameters_are_validated(client: FlaskClient) -> None:
    job = client.post("/v1/collections/docs/queries", json={"text": "x"}).json
    assert "query.offset" in _error(client.get(job["url"] + "?offset=-1"), 400)["message"]
    assert "query.limit" in _error(client.get(job["url"] + "?limit=abc"), 400)["message"]


def test_readyz_is_this_process_and_statusz_the_whole_system(
    client: FlaskClient, redis_url: str
) -> None:
    import json

    import redis as redis_client

    anonymous = client.application.test_client()
    # No worker yet: this API process can serve (SQL and Redis answer), the system cannot.
    body = anonymous.get("/readyz")
    assert body.status_code == 200
    checks = body.json["checks"]
    assert checks["database"]["ok"]
    assert checks["redis"]["ok"]
    assert checks["queue:recall"] == {"ok": False, "workers": 0, "warm": 0, "failing": 0}
    status = anonymous.get("/statusz")
    assert status.status_code == 503
    assert status.json == {"status": "not_ready", "checks": checks}
    beats = redis_client.Redis.from_url(redis_url)
    for queue in ("recall", "ingest", "rerank"):  # a recall worker beats for ingest too
        state = {"queue": queue, "warm": queue != "rerank", "error": None}
        beats.set(f"umarvel:heartbeat:{queue}:host", json.dumps(state), ex=30)
    body = anonymous.get("/statusz")
    assert body.status_code == 503  # the rerank worker is up but not warm yet
    assert body.json["checks"]["queue:recall"]["ok"]
    assert body.json["checks"]["queue:rerank"] == {
        "ok": False,
        "workers": 1,
        "warm": 0,
        "failing": 0,
    }
    assert anonymous.get("/readyz").json["status"] == "ready"
    # A worker's model error is counted, never shown: its text is in the worker's log.
    failing = {"queue": "rerank", "warm": False, "error": "OSError: /models/secret-path"}
    beats.set("umarvel:heartbeat:rerank:host", json.dumps(failing), ex=30)
    for path in ("/readyz", "/statusz"):
        checked = anonymous.get(path)
        assert checked.json["checks"]["queue:rerank"]["failing"] == 1
        assert "secret-path" not in checked.get_data(as_text=True)
    beats.set("umarvel:heartbeat:rerank:host", json.dumps({"warm": True}), ex=30)
    everything = {
        "status": "ready",
        "checks": {
            "database": {"ok": True},
            "redis": {"ok": True},
            "queue:recall": {"ok": True, "workers": 1, "warm": 1, "failing": 0},
            "queue:rerank": {"ok": True, "workers": 1, "warm": 1, "failing": 0},
            "queue:ingest": {"ok": True, "workers": 1, "warm": 1, "failing": 0},
        },
    }
    assert anonymous.get("/statusz").json == everything
    assert anonymous.get("/readyz").json == everything
    # Both are public and documented, answers 200 and 503 alike.
    paths = anonymous.get("/v1/openapi.json").json["paths"]
    for path in ("/readyz", "/statusz"):
        operation = paths[path]["get"]
        assert operation["security"] == []
        assert {"200", "503"} <= set(operation["responses"])


def test_readyz_without_redis(migrated_url: str, tmp_path: Path) -> None:
    settings = Settings(
        database_url=migrated_url, redis_url="redis://127.0.0.1:1/0", media_root=tmp_path
    )
    app = create_app(settings).test_client()
    for path in ("/readyz", "/statusz"):
        response = app.get(path)
        assert response.status_code == 503, path
        assert response.json["checks"] == {
            "database": {"ok": True},
            "redis": {"ok": False, "error": "ConnectionError"},
        }


def test_metrics_count_requests_and_cache_lookups(client: FlaskClient) -> None:
    client.post("/v1/collections/docs/queries", json={"text": "counted"})
    client.post("/v1/collections/docs/queries", json={"text": "counted"})  # in flight: a miss
    text = client.application.test_client().get("/metrics").get_data(as_text=True)
    assert (
        'umarvel_http_requests_total{method="POST",route="/v1/collections/<name>/queries",'
        'status="202"}' in text
    )
    assert 'umarvel_cache_requests_total{result="miss"}' in text
    assert 'umarvel_queue_depth{queue="recall"} 1.0' in text
    assert "umarvel_http_request_seconds_bucket" in text
    assert f'umarvel_build_info{{version="{VERSION}"}} 1.0' in text
    # No worker here: every queue shows none, in any state.
    assert 'umarvel_workers{queue="rerank",state="warm"} 0.0' in text


def test_metrics_read_the_outbox_backlog_and_count_query_outcomes(client: FlaskClient) -> None:
    sessions = client.application.extensions["umarvel"].sessions
    with session_scope(sessions) as session:
        old = utcnow() - timedelta(seconds=120)
        session.add(OutboxEntry(kind="delete", payload={}, created_at=old, not_before=old))
        session.add(OutboxEntry(kind="delete", payload={}))
    job = client.post("/v1/collections/docs/queries", json={"text": "to cancel"}).json
    before = _sample(client, 'umarvel_query_jobs_total{outcome="cancelled"}')
    assert client.delete(job["url"]).status_code == 200
    text = client.get("/metrics").get_data(as_text=True)
    assert "umarvel_outbox_entries 2.0" in text
    oldest = _sample(client, "umarvel_outbox_oldest_seconds")
    assert 120 <= oldest < 180
    assert _sample(client, 'umarvel_query_jobs_total{outcome="cancelled"}') == before + 1


def _sample(client: FlaskClient, name: str) -> float:
    text = client.get("/metrics").get_data(as_text=True)
    line = next((line for line in text.splitlines() if line.startswith(name + " ")), None)
    return float(line.split()[-1]) if line else 0.0


def test_one_log_line_per_request_with_job_and_collection(
    client: FlaskClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("INFO", logger="api"):
        job = client.post("/v1/collections/docs/queries", json={"text": "logged"}).json
    records = [r for r in caplog.records if getattr(r, "event", None) == "request"]
    assert len(records) == 1
    record = records[0]
    assert (record.route, record.status, record.method) == (
        "/v1/collections/<name>/queries",
        202,
        "POST",
    )
    assert (record.job_id, record.collection) == (job["id"], "docs")


from api.routes.console import FILES as CONSOLE_FILES  # noqa: E402


def test_the_console_is_served_with_a_strict_policy(client: FlaskClient) -> None:
    anonymous = client.application.test_client()
    page = anonymous.get("/console/")
    assert page.status_code == 200
    assert "text/html" in page.content_type
    policy = page.headers["Content-Security-Policy"]
    assert "script-src 'self'" in policy
    assert "default-src 'none'" in policy
    assert "media-src blob:;" in policy  # videos play from blob: URLs only
    html = page.get_data(as_text=True)
    # Its own files only, every one served; nothing from another origin.
    for url in re.findall(r'(?:src|href)="(/console/[^"]+)"', html):
        assert anonymous.get(url).status_code == 200, url
    assert "http://" not in html
    assert "https://" not in html
    assert anonymous.get("/console/console.js").content_type.startswith(
        ("text/javascript", "application/javascript")
    )
    assert anonymous.get("/console/secrets.py").status_code == 404
    assert anonymous.get("/console/..%2Fapp.py").status_code in (400, 404)
    paths = anonymous.get("/v1/openapi.json").json["paths"]
    assert paths["/console/{file}"]["get"]["parameters"][0]["schema"]["enum"] == sorted(
        CONSOLE_FILES
    )


def test_models_lists_the_recall_models_a_collection_may_name(client: FlaskClient) -> None:
    settings = client.application.extensions["umarvel"].settings
    assert client.get("/v1/models").json == {"recall_models": settings.recall_models}
    anonymous = client.application.test_client()
    assert anonymous.get("/v1/models").status_code == 401
