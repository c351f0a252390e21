"""Finished-job notices through one subscription per process, on a real Redis server."""

from __future__ import annotations

import time
from pathlib import Path

import redis

from cli.stack import RedisServer
from queries.notices import JobNotices, notify_finished
from store.redis import make_redis
from tests.helpers import redis_binary


def _connections(client: redis.Redis) -> int:
    return int(client.info("clients")["connected_clients"])


def test_a_notice_wakes_the_watchers_of_its_job_only(tmp_path: Path) -> None:
    with RedisServer(tmp_path / "redis", binary=redis_binary()) as server:
        client, publisher = make_redis(server.url), make_redis(server.url)
        notices = JobNotices(client)
        try:
            with (
                notices.watch("job-a") as a1,
                notices.watch("job-a") as a2,
                notices.watch("job-b") as b,
            ):
                assert notices.subscribed  # confirmed before watch() returned
                notify_finished(publisher, "job-a")
                assert a1.wait(2)
                assert a2.wait(2)
                assert not b.wait(0.2)
                notify_finished(publisher, "job-b")
                assert b.wait(2)
            # Many requests, one subscription: watching does not open connections.
            before = _connections(publisher)
            for n in range(20):
                with notices.watch(f"job-{n}"):
                    pass
            assert _connections(publisher) == before
        finally:
            notices.close()


def test_the_subscription_comes_back_after_redis_restarts(tmp_path: Path) -> None:
    """Redis killed and started again, empty: the notices' thread subscribes again by
    itself, and a job watched afterwards is woken by its notice."""
    with RedisServer(tmp_path / "redis", binary=redis_binary()) as server:
        client = make_redis(server.url)
        notices = JobNotices(client)
        try:
            with notices.watch("before"):
                assert notices.subscribed
            server.kill()
            deadline = time.monotonic() + 10
            while notices.subscribed and time.monotonic() < deadline:
                time.sleep(0.05)
            assert not notices.subscribed
            server.start()
            with notices.watch("after") as event:  # waits for the new subscription
                assert notices.subscribed
                notify_finished(make_redis(server.url), "after")
                assert event.wait(5)
        finally:
            notices.close()
