"""Query job life cycle at the API: backpressure, cancel, delete, expiry, multipart, clean-up.

No worker consumes the queues here, so submitted jobs stay queued: that is the point.
"""

from __future__ import annotations

import base64
import io
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select, update

from api.app import create_app
from api.routes import queries as queries_route
from core.settings import Settings
from devkit.samples import shape_image
from queries.notices import JobNotices
from store.db import session_scope
from store.redis import make_redis
from store.tables import IngestJob, QueryJob, utcnow
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


def test_a_shared_job_is_cancelled_only_when_every_key_that_asked_withdrew(
    client: FlaskClient,
) -> None:
    alice = client.environ_base["HTTP_AUTHORIZATION"]
    bob = "Bearer " + make_key(client.application, ["search"])
    carol = "Bearer " + make_key(client.application, ["search"])
    job = _submit(client, "shared question")
    client.environ_base["HTTP_AUTHORIZATION"] = bob
    assert _submit(client, "shared question")["id"] == job["id"]  # Bob joins Alice's job
    assert client.delete(job["url"]).status_code == 204  # Bob withdraws: Alice still waits
    assert error(client.get(job["url"]), 404)  # gone for Bob
    assert error(client.delete(job["url"]), 404)  # his second DELETE touches nothing
    client.environ_base["HTTP_AUTHORIZATION"] = carol  # never asked: withdraws nothing
    assert client.delete(job["url"]).status_code == 204
    client.environ_base["HTTP_AUTHORIZATION"] = alice
    assert client.get(job["url"]).json["status"] == "queued"
    cancelled = client.delete(job["url"])  # the last key that wanted it
    assert (cancelled.status_code, cancelled.json["status"]) == (200, "cancelled")


def test_a_finished_shared_job_is_deleted_only_by_the_last_key(
    client: FlaskClient, settings: Settings
) -> None:
    job = _submit(client, "finished question")
    sessions = client.application.extensions["umarvel"].sessions
    with session_scope(sessions) as session:
        row = session.get_one(QueryJob, job["id"])
        row.status, row.results, row.finished_at = "done", [], utcnow()
    alice = client.environ_base["HTTP_AUTHORIZATION"]
    # Bob reads a cached answer that names Alice's job; deleting it must not delete hers.
    client.environ_base["HTTP_AUTHORIZATION"] = "Bearer " + make_key(client.application, ["search"])
    assert client.delete(job["url"]).status_code == 204
    client.environ_base["HTTP_AUTHORIZATION"] = alice
    assert client.get(job["url"]).json["status"] == "done"
    assert client.delete(job["url"]).status_code == 204
    assert error(client.get(job["url"]), 404)


def _wait_and_cancel(client: FlaskClient, text: str, wait: float) -> tuple[dict, float, float]:
    """POST a query that waits ``wait`` seconds, cancel its job from another client while it
    waits; (its answer, seconds from the cancel to the answer, seconds it took in all)."""
    answers: dict[str, object] = {}
    other = client.application.test_client()
    other.environ_base.update(client.environ_base)

    def post() -> None:
        started = time.monotonic()
        response = client.post("/v1/collections/docs/queries", json={"text": text, "wait": wait})
        answers.update(body=response.json, status=response.status_code, at=time.monotonic())
        answers["took"] = answers["at"] - started  # type: ignore[operator]

    thread = threading.Thread(target=post)
    thread.start()
    sessions = client.application.extensions["umarvel"].sessions
    job_id = None
    while job_id is None and thread.is_alive():
        time.sleep(0.05)
        with session_scope(sessions) as session:
            jobs = session.scalars(select(QueryJob)).all()
            job_id = next((j.id for j in jobs if j.request.text == text), None)
    time.sleep(0.3)  # the POST is waiting now
    cancelled_at = time.monotonic()
    assert other.delete(f"/v1/queries/{job_id}").status_code == 200
    thread.join(10)
    assert answers["status"] == 200, answers
    return answers["body"], answers["at"] - cancelled_at, answers["took"]  # type: ignore[return-value,operator]


def test_a_waiting_post_answers_when_its_job_finishes(
    client: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Woken by the job's notice through the process's one subscription, the POST answers
    as soon as its job is cancelled, long before its wait is over."""
    monkeypatch.setattr(queries_route, "POLL_SECONDS", 8.0)  # the safety net out of reach
    body, after_cancel, took = _wait_and_cancel(client, "wake me", wait=20)
    assert body["status"] == "cancelled"
    assert after_cancel < 2  # the notice, not a poll
    assert took < 8


def test_without_the_notice_subscription_a_waiting_post_polls(
    client: FlaskClient, request: pytest.FixtureRequest
) -> None:
    """The subscription cannot be made (its Redis is gone): a waiting POST still answers,
    by reading its job now and then, and one that nothing finishes gets its 202 in time."""
    services = client.application.extensions["umarvel"]
    services.notices = JobNotices(make_redis("redis://127.0.0.1:9/0"))  # nothing listens
    request.addfinalizer(services.notices.close)
    body, after_cancel, _ = _wait_and_cancel(client, "poll me", wait=20)
    assert body["status"] == "cancelled"
    assert after_cancel < 3  # within a few polls (POLL_SECONDS apart)
    started = time.monotonic()
    response = client.post("/v1/collections/docs/queries", json={"text": "never", "wait": 1})
    assert response.status_code == 202
    assert response.json["is_running"]
    assert time.monotonic() - started < 5
    assert not services.notices.subscribed


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


def test_jobs_that_never_finished_and_old_ingestion_jobs_are_cleaned_up_too(
    client: FlaskClient, settings: Settings
) -> None:
    lost, waiting = (_submit(client, t)["id"] for t in ("lost", "waiting"))
    old_ingest = client.post("/v1/collections/docs/documents", json={"documents": []})
    docs = [{"id": "x", "text": "x"}]
    recent_ingest = client.post("/v1/collections/docs/documents", json={"documents": docs}).json
    sessions = client.application.extensions["umarvel"].sessions
    long_ago = utcnow() - timedelta(seconds=settings.ingest_job_ttl_seconds + 60)
    with session_scope(sessions) as session:
        # Its messages were lost a day ago: it was never read, so nothing failed it.
        lost_job = session.get_one(QueryJob, lost)
        lost_job.created_at = utcnow() - timedelta(seconds=settings.job_ttl_seconds + 60)
        old = IngestJob(collection_id=lost_job.collection_id, state="done", finished_at=long_ago)
        session.add(old)
        session.flush()
        old_id = old.id
        owed = session.get_one(IngestJob, recent_ingest["id"])  # its outbox entry still waits
        owed.finished_at = long_ago
    assert old_ingest.status_code == 400  # refused: no job at all
    assert cleanup_jobs(Runtime(settings)) == 2
    assert client.get(f"/v1/queries/{lost}").status_code == 404
    assert client.get(f"/v1/queries/{waiting}").json["status"] == "queued"
    assert client.get(f"/v1/ingest-jobs/{old_id}").status_code == 404
    # Work still owed (its outbox entry waits for a worker) keeps its job, however old.
    assert client.get(recent_ingest["url"]).status_code == 200


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


def test_cheap_refusals_come_before_the_image_is_decoded_or_stored(
    client: FlaskClient, settings: Settings
) -> None:
    image = base64.b64encode(shape_image("red", "circle")).decode()
    media = settings.media_root
    assert error(client.post("/v1/collections/nope/queries", json={"image": image}), 404)
    too_many = {"image": image, "rerank": {"k": settings.max_rerank_k + 1}}
    assert (
        "rerank.k"
        in error(client.post("/v1/collections/docs/queries", json=too_many), 400)["message"]
    )
    for n in range(settings.max_queue_depth):  # fill the queue: no worker consumes it
        _submit(client, f"filler {n}", rerank=False)
    full = client.post("/v1/collections/docs/queries", json={"image": image})
    assert error(full, 429)["code"] == "overloaded"
    assert not media.exists() or not any(media.rglob("*")), "an image was stored"
    # An EPS (Ghostscript) or a PSD is never even tried.
    eps = base64.b64encode(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n").decode()
    client.application.extensions["umarvel"].redis.flushdb()  # an empty queue again
    refused = client.post("/v1/collections/docs/queries", json={"image": eps})
    assert "not one of JPEG" in error(refused, 400)["message"]


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
