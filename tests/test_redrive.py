"""The redrive sweep against real SQL and Redis: messages the broker lost are queued again,
messages waiting in the queue or held by a worker are left alone."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
import redis
from flask.testing import FlaskClient

from api.app import create_app
from core.settings import Settings
from tests.helpers import make_key
from workers import redrive
from workers.runtime import Runtime


@pytest.fixture
def env(migrated_url: str, redis_url: str, tmp_path: Path) -> tuple[FlaskClient, Runtime]:
    settings = Settings(
        database_url=migrated_url,
        redis_url=redis_url,
        media_root=tmp_path / "media",
        ingest_chunk_size=2,
    )
    client = create_app(settings).test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = "Bearer " + make_key(client.application, ["admin"])
    assert client.post("/v1/collections", json={"name": "docs"}).status_code == 201
    return client, Runtime(settings)


def _args(raw: bytes) -> list[Any]:
    return list(json.loads(base64.b64decode(json.loads(raw)["body"]))[0])


def _sweep(rt: Runtime) -> list[tuple[str, str, list[int]]]:
    rt.redis.delete(redrive.LOCK)  # as if the sweep interval had passed
    return redrive.sweep(rt, 30)


def test_lost_chunks_are_found_in_two_sweeps_and_queued_again(
    env: tuple[FlaskClient, Runtime], redis_url: str
) -> None:
    client, rt = env
    docs = [{"id": f"d{i}", "text": f"document {i}"} for i in range(5)]
    job = client.post("/v1/collections/docs/documents", json={"documents": docs}).json
    broker = redis.Redis.from_url(redis_url)
    assert broker.llen("recall") == 3  # chunks of 2, 2 and 1
    assert _sweep(rt) == []
    assert _sweep(rt) == []

    # One chunk is held by a worker (in kombu's unacked hash), one is lost outright.
    held = broker.rpop("recall")
    broker.hset("unacked", "tag-1", json.dumps([json.loads(held), "", "recall"]))
    lost = broker.rpop("recall")
    lost_ids = _args(lost)[1]
    assert _sweep(rt) == []  # suspected once: it could have been in transit
    assert _sweep(rt) == [("ingest", job["id"], lost_ids)]

    redrive.requeue([("ingest", job["id"], lost_ids)])
    assert _args(broker.lindex("recall", 0)) == [job["id"], lost_ids]
    assert _sweep(rt) == []
    assert _sweep(rt) == []


def test_a_planned_reindex_covers_its_documents(
    env: tuple[FlaskClient, Runtime], redis_url: str
) -> None:
    client, rt = env
    client.post("/v1/collections/docs/documents", json={"documents": [{"id": "a", "text": "a"}]})
    broker = redis.Redis.from_url(redis_url)
    job = client.post("/v1/collections/docs/reindex").json
    assert _sweep(rt) == []
    assert _sweep(rt) == []
    plan = broker.lpop("recall")  # the newest message: the reindex plan
    assert json.loads(plan)["headers"]["task"] == "recall.reindex"
    ingest = broker.lpop("recall")
    assert _sweep(rt) == []
    found = _sweep(rt)
    # The document is pending ingestion and outside the new generation: both are redriven.
    assert sorted(kind for kind, _, _ in found) == ["ingest", "reindex"]
    assert ("reindex", job["id"], _args(ingest)[1]) in found
