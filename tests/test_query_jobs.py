"""Query job life cycle at the API: backpressure, cancel, delete, expiry, multipart, clean-up.

No worker consumes the queues here, so submitted jobs stay queued: that is the point.
"""

from __future__ import annotations

import io
from datetime import timedelta
from pathlib import Path

import pytest
from flask.testing import FlaskClient
from sqlalchemy import update

from api.app import create_app
from cli.samples import shape_image
from core.db import session_scope
from core.models import QueryJob, utcnow
from core.settings import Settings
from tests.helpers import error, make_key
from workers.queries import cleanup_jobs
from workers.runtime import Runtime


@pytest.fixture
def settings(migrated_url: str, redis_url: str, tmp_path: Path) -> Settings:
    return Settings(
        database_url=migrated_url,
        redis_url=redis_url,
        media_root=tmp_path / "media",
        max_queue_depth=3,
        job_ttl_seconds=60,
        query_wait_seconds=0,  # no worker runs here; tests that wait say so
    )


@pytest.fixture
def client(settings: Settings) -> FlaskClient:
    client = create_app(settings).test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = "Bearer " + make_key(client.application, ["admin"])
    assert client.post("/v1/collections", json={"name": "docs"}).status_code == 201
    return client


def _submit(client: FlaskClient, text: str, rerank: bool = True) -> dict:
    response = client.post(
        "/v1/collections/docs/queries", json={"text": text, "rerank": {"enabled": rerank}}
    )
    assert response.status_code == 202, response.json
    return response.json


def test_a_flooded_queue_answers_429(client: FlaskClient) -> None:
    _submit(client, "one", rerank=False)  # one task each while no worker consumes them
    _submit(client, "two", rerank=False)
    _submit(client, "three", rerank=False)
    response = client.post("/v1/collections/docs/queries", json={"text": "four"})
    assert error(response, 429)["code"] == "overloaded"
    assert response.headers["Retry-After"] == "2"


def test_identical_queries_share_one_job(client: FlaskClient) -> None:
    first = _submit(client, "same question")
    second = _submit(client, "same question")
    assert second["id"] == first["id"]
    assert _submit(client, "another question")["id"] != first["id"]


def test_cancel_a_queued_job(client: FlaskClient) -> None:
    job = _submit(client, "cancel me")
    response = client.delete(job["url"])
    assert response.status_code == 200
    assert response.json["status"] == "cancelled"
    body = client.get(job["url"]).json
    assert (body["status"], body["is_running"]) == ("cancelled", False)
    # The in-flight lock is released: the same query starts a new job.
    assert _submit(client, "cancel me")["id"] != job["id"]


def test_finished_jobs_expire_and_can_be_deleted(client: FlaskClient, settings: Settings) -> None:
    job = _submit(client, "old question")
    sessions = client.application.extensions["umarvel"].sessions
    with session_scope(sessions) as session:
        session.execute(
            update(QueryJob)
            .where(QueryJob.id == job["id"])
            .values(
                status="done",
                results=[],
                recall_hits=[],
                finished_at=utcnow() - timedelta(seconds=61),
            )
        )
    body = client.get(job["url"]).json
    assert body["status"] == "expired"
    assert "results" not in body
    assert client.delete(job["url"]).status_code == 204
    assert error(client.get(job["url"]), 404)["code"] == "not_found"


def test_cleanup_deletes_only_jobs_past_their_lifetime(
    client: FlaskClient, settings: Settings
) -> None:
    old, recent, running = (_submit(client, t)["id"] for t in ("a", "b", "c"))
    sessions = client.application.extensions["umarvel"].sessions
    with session_scope(sessions) as session:
        for job_id, age in ((old, 120), (recent, 10)):
            session.execute(
                update(QueryJob)
                .where(QueryJob.id == job_id)
                .values(status="done", finished_at=utcnow() - timedelta(seconds=age))
            )
    assert cleanup_jobs(Runtime(settings)) == 1
    assert client.get(f"/v1/queries/{old}").status_code == 404
    assert client.get(f"/v1/queries/{recent}").json["status"] == "done"
    assert client.get(f"/v1/queries/{running}").json["status"] == "queued"


def test_multipart_queries(client: FlaskClient) -> None:
    png = shape_image("red", "circle")
    response = client.post(
        "/v1/collections/docs/queries",
        data={"request": '{"text": "a red circle"}', "image": (io.BytesIO(png), "q.png")},
        content_type="multipart/form-data",
    )
    assert response.status_code == 202, response.json
    bad = client.post(
        "/v1/collections/docs/queries",
        data={"request": "{not json"},
        content_type="multipart/form-data",
    )
    assert "not valid JSON" in error(bad, 400)["message"]
    both = client.post(
        "/v1/collections/docs/queries",
        data={"request": '{"image": "aGk="}', "image": (io.BytesIO(png), "q.png")},
        content_type="multipart/form-data",
    )
    assert "not both" in error(both, 400)["message"]
    corrupt = client.post(
        "/v1/collections/docs/queries",
        data={"image": (io.BytesIO(b"not a png"), "q.png")},
        content_type="multipart/form-data",
    )
    assert "could not be decoded" in error(corrupt, 400)["message"]


def test_a_job_whose_tasks_were_lost_fails_instead_of_running_forever(
    migrated_url: str, redis_url: str, tmp_path: Path
) -> None:
    settings = Settings(
        database_url=migrated_url,
        redis_url=redis_url,
        media_root=tmp_path / "media",
        task_time_limit=5,
        visibility_timeout=10,
    )
    client = create_app(settings).test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = "Bearer " + make_key(client.application, ["admin"])
    assert client.post("/v1/collections", json={"name": "docs"}).status_code == 201
    job = client.post("/v1/collections/docs/queries", json={"text": "lost"}).json
    assert client.get(job["url"]).json["status"] == "queued"  # no worker: it waits
    sessions = client.application.extensions["umarvel"].sessions
    with sessions.begin() as session:  # its messages vanished 11 s ago
        session.get(QueryJob, job["id"]).created_at = utcnow() - timedelta(seconds=11)
    lost = client.get(job["url"]).json
    assert (lost["status"], lost["is_running"]) == ("failed", False)
    assert "lost" in lost["error"]
    again = client.post("/v1/collections/docs/queries", json={"text": "lost"}).json
    assert again["id"] != job["id"]  # the in-flight claim was released: a new job runs it
