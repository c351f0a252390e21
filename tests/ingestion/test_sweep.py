"""The sweep against real SQL and Redis: entries whose messages were lost are sent again;
entries whose messages wait in the queue, are held by a worker, or are not due are left."""

from __future__ import annotations

import json
from datetime import timedelta

import redis
from flask.testing import FlaskClient

from store.tables import OutboxEntry, utcnow
from tests.helpers import entries, sweep_now
from workers.runtime import Runtime


def test_lost_messages_are_found_in_two_sweeps_and_sent_again(
    pipeline_env: tuple[FlaskClient, Runtime], redis_url: str
) -> None:
    client, rt = pipeline_env
    docs = [{"id": f"d{i}", "text": f"document {i}"} for i in range(5)]
    client.post("/v1/collections/docs/documents", json={"documents": docs})
    broker = redis.Redis.from_url(redis_url)
    assert broker.llen("ingest") == 3  # chunks of 2, 2 and 1
    assert sweep_now(rt) == []
    assert sweep_now(rt) == []

    # One message is held by a worker (in kombu's unacked hash), one is lost outright.
    held = broker.rpop("ingest")
    broker.hset("unacked", "tag-1", json.dumps([json.loads(held), "", "ingest"]))
    broker.rpop("ingest")
    lost = entries(rt)[1].id
    assert sweep_now(rt) == []  # suspected once: it could have been in transit
    assert sweep_now(rt) == [lost]
    assert sweep_now(rt) == []  # its new message covers it
    assert sweep_now(rt) == []


def test_entries_not_due_are_left_alone(
    pipeline_env: tuple[FlaskClient, Runtime], redis_url: str
) -> None:
    client, rt = pipeline_env
    client.post("/v1/collections/docs/documents", json={"documents": [{"id": "a", "text": "a"}]})
    redis.Redis.from_url(redis_url).delete("ingest")  # lost, but retried only later
    with rt.sessions.begin() as session:
        for row in session.query(OutboxEntry):
            row.not_before = utcnow() + timedelta(minutes=5)
    assert sweep_now(rt) == []
    assert sweep_now(rt) == []


def test_after_redis_restarts_empty_everything_owed_is_sent_again(
    pipeline_env: tuple[FlaskClient, Runtime], redis_url: str
) -> None:
    client, rt = pipeline_env
    for n in range(3):
        docs = [{"id": f"j{n}-{i}", "text": f"job {n} document {i}"} for i in range(3)]
        client.post("/v1/collections/docs/documents", json={"documents": docs})
    client.delete("/v1/collections/docs/documents/j0-0")
    owed = {entry.id for entry in entries(rt)}
    redis.Redis.from_url(redis_url).flushdb()  # the broker lost every message
    assert sweep_now(rt) == []
    assert set(sweep_now(rt)) == owed
