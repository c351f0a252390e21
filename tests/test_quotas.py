"""Per-key quotas (api.quotas) through the real API app, SQL and Redis: a key over its rate
or its queued jobs is refused with the limit it hit while other keys go on, and a key whose
waiting allowance is taken is answered at once instead of holding a thread."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from flask.testing import FlaskClient

from api.app import create_app
from core.settings import Settings
from store.db import session_scope
from store.keys import Quotas, set_quotas
from tests.helpers import error, make_key


@pytest.fixture
def client(migrated_url: str, redis_url: str, tmp_path: Path) -> FlaskClient:
    settings = Settings(
        database_url=migrated_url,
        redis_url=redis_url,
        media_root=tmp_path / "media",
        query_wait_seconds=0,  # no worker runs here
        key_max_waiting=1,
        key_max_queued=2,
    )
    client = create_app(settings).test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = _bearer(client, ["admin"])
    assert client.post("/v1/collections", json={"name": "docs"}).status_code == 201
    return client


def _bearer(client: FlaskClient, scopes: list[str]) -> str:
    return "Bearer " + make_key(client.application, scopes)


def _quotas(client: FlaskClient, bearer: str, quotas: Quotas) -> None:
    with session_scope(client.application.extensions["umarvel"].sessions) as session:
        set_quotas(session, bearer.split()[1][:12], quotas)


def _query(client: FlaskClient, bearer: str, text: str, wait: float = 0) -> object:
    return client.post(
        "/v1/collections/docs/queries",
        json={"text": text, "wait": wait},
        headers={"Authorization": bearer},
    )


def test_a_key_over_its_rate_is_refused_and_another_key_is_not(client: FlaskClient) -> None:
    busy, other = _bearer(client, ["search"]), _bearer(client, ["search"])
    _quotas(client, busy, Quotas(rate=3))
    statuses = [
        client.get("/v1/collections", headers={"Authorization": busy}).status_code for _ in range(8)
    ]
    assert statuses.count(429) >= 2, statuses  # 3 a second, whatever second they fall in
    refused = client.get("/v1/collections", headers={"Authorization": busy})
    if refused.status_code == 429:  # still the same second
        body = error(refused, 429)
        assert (body["details"]["limit"], body["details"]["allowed"]) == ("rate", 3)
        assert refused.headers["Retry-After"] == "1"
    assert client.get("/v1/collections", headers={"Authorization": other}).status_code == 200


def test_a_key_with_its_queued_jobs_at_the_limit_is_refused_before_the_queue_is_full(
    client: FlaskClient,
) -> None:
    alice, bob = _bearer(client, ["search"]), _bearer(client, ["search"])
    assert _query(client, alice, "one").status_code == 202
    assert _query(client, alice, "two").status_code == 202
    third = _query(client, alice, "three")
    body = error(third, 429)
    assert (body["details"]["limit"], body["details"]["allowed"]) == ("queued", 2)
    assert third.headers["Retry-After"] == "2"
    assert _query(client, alice, "one").status_code == 429  # a new job or not: over its share
    assert _query(client, bob, "three").status_code == 202  # the queue itself has room
    _quotas(client, alice, Quotas(queued=5))  # an admin raises Alice's share: seen at once
    assert _query(client, alice, "three").status_code == 202


def test_a_key_holding_its_waiting_allowance_is_answered_at_once(client: FlaskClient) -> None:
    alice, bob = _bearer(client, ["search"]), _bearer(client, ["search"])
    held: dict[str, float] = {}

    def wait_long() -> None:
        started = time.monotonic()
        response = _query(client, alice, "long wait", wait=3)
        held["seconds"], held["status"] = time.monotonic() - started, response.status_code

    thread = threading.Thread(target=wait_long)
    thread.start()
    time.sleep(0.5)  # Alice's first POST holds her one waiting slot (no worker answers)
    started = time.monotonic()
    second = _query(client, alice, "another", wait=3)
    assert (second.status_code, second.json["status"]) == (202, "queued")
    assert time.monotonic() - started < 1.0  # not held: the job is there to poll
    started = time.monotonic()
    bobs = _query(client, bob, "bob's", wait=0.5)  # Bob's own allowance is untouched
    assert bobs.status_code == 202
    assert 0.4 < time.monotonic() - started < 2.0  # he waited his 0.5 s
    thread.join(10)
    assert held["status"] == 202
    assert held["seconds"] >= 2.9  # Alice's first POST did wait
