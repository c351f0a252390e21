"""Many teams on one deployment, through the real stack: the API on gunicorn (one process,
four threads), PostgreSQL, a Redis the test owns (so that it can restart it from a
snapshot), milvus-lite and both workers. Each finding of the many-teams audit, tried the
way a careless or hostile key would: nothing one key does costs another its answers, and
nothing a Redis restart does brings back what an admin took away."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import requests

from cli.stack import RedisServer, Stack
from store.db import make_engine, make_session_factory, session_scope
from store.keys import revoke
from store.redis import make_redis
from tests.conftest import live_stack
from tests.helpers import poll, redis_binary

pytestmark = pytest.mark.integration

THREADS = 4  # of the API; each key may hold 2 of them waiting (UMARVEL_KEY_MAX_WAITING)


@pytest.fixture(scope="module")
def owned_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with RedisServer(tmp_path_factory.mktemp("redis"), binary=redis_binary()) as server:
        yield server


@pytest.fixture(scope="module")
def stack(
    owned_redis: RedisServer, tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    with live_stack(
        tiny_models,
        tmp_path_factory.mktemp("many-teams"),
        api_args=("--workers", "1", "--threads", str(THREADS)),
        redis_url=owned_redis.url,
        heartbeat_seconds="0.5",
        query_wait_seconds="0",
    ) as running:
        running.wait_ready()
        yield running


def _http(stack: Stack, *scopes: str) -> requests.Session:
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {stack.create_key(scopes)}"
    return session


def _collection(stack: Stack, admin: requests.Session, name: str) -> str:
    base = f"{stack.api_url}/v1/collections"
    assert admin.post(base, json={"name": name}).status_code == 201
    docs = {"documents": [{"id": f"d{i}", "text": f"document {i} of {name}"} for i in range(3)]}
    job = admin.post(f"{base}/{name}/documents", json=docs).json()
    poll(admin, stack.api_url + job["url"], lambda body: body["state"] == "done")
    return f"{base}/{name}/queries"


def _answered(http: requests.Session, url: str, text: str) -> dict:
    body = {"text": text, "rerank": {"enabled": False}, "wait": 10}
    answer = http.post(url, json=body)
    assert (answer.status_code, answer.json()["status"]) == (200, "done"), answer.text
    return dict(answer.json())


def _rss_kib(pid: int) -> int:
    """Resident memory of a process and its children (gunicorn's worker), in KiB."""
    total = 0
    for task in [
        pid,
        *(int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()),
    ]:
        for line in Path(f"/proc/{task}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total


def test_a_redis_restored_from_a_snapshot_brings_back_no_revoked_key_or_deleted_answer(
    stack: Stack, owned_redis: RedisServer
) -> None:
    admin, team = _http(stack, "admin"), _http(stack, "search")
    kept, gone = _collection(stack, admin, "kept"), _collection(stack, admin, "gone")
    for http, url in ((team, kept), (admin, gone)):
        _answered(http, url, "document 1")
        again = http.post(url, json={"text": "document 1", "rerank": {"enabled": False}})
        assert again.json()["cached"] is True  # key, collection and answer all in Redis
    redis.Redis.from_url(owned_redis.url).save()  # the snapshot Redis will come back from

    engine = make_engine(stack.settings().database_url)
    fenced = make_session_factory(engine, make_redis(owned_redis.url))
    with session_scope(fenced) as session:  # as `umarvel keys revoke` does
        revoke(session, team.headers["Authorization"].split()[1][:12])
    engine.dispose()
    assert admin.delete(gone.rsplit("/", 1)[0]).status_code == 204
    assert team.post(kept, json={"text": "document 1"}).status_code == 401

    owned_redis.kill()  # a crash; its supervisor starts it from the last snapshot
    owned_redis.start()
    assert team.post(kept, json={"text": "document 1"}).status_code == 401
    assert team.get(f"{stack.api_url}/v1/collections").status_code == 401
    assert admin.post(gone, json={"text": "document 1"}).status_code == 404
    stack.wait_ready()  # the workers are back on the restarted broker


def test_a_huge_body_is_refused_at_once_with_the_api_memory_flat(stack: Stack) -> None:
    team = _http(stack, "search")
    url = f"{stack.api_url}/v1/collections/kept/queries"
    junk = b'{"text": "a", "junk": [' + b"0," * (8 * 2**20) + b"0]}"  # 16 MiB of tiny items
    api = stack.processes["api"].pid
    before = _rss_kib(api)
    started = time.monotonic()
    for _ in range(3):
        refused = team.post(url, data=junk, headers={"Content-Type": "application/json"})
        assert refused.status_code == 413, refused.text
    assert (time.monotonic() - started) / 3 < 1.0
    assert _rss_kib(api) - before < 100 * 1024  # the body is counted, never parsed


def test_one_key_neither_starves_nor_cancels_another(stack: Stack) -> None:
    alice, bob = _http(stack, "search"), _http(stack, "search")
    url = f"{stack.api_url}/v1/collections/kept/queries"
    stack.kill("worker-recall")  # queries now wait: nothing takes them off the queue

    # Bob asks what Alice asked: one job. His cancel leaves hers running and readable.
    job = alice.post(url, json={"text": "shared", "wait": 0}).json()
    assert bob.post(url, json={"text": "shared", "wait": 0}).json()["id"] == job["id"]
    assert bob.delete(stack.api_url + job["url"]).status_code == 204
    assert bob.get(stack.api_url + job["url"]).status_code == 404
    mine = alice.get(stack.api_url + job["url"])
    assert (mine.status_code, mine.json()["status"]) == (200, "queued")

    # Alice holds her whole waiting allowance (2 of the API's 4 threads) and asks for more.
    answers: list[tuple[int, float]] = []

    def wait_long(n: int) -> None:
        started = time.monotonic()
        response = alice.post(url, json={"text": f"alice {n}", "wait": 6})
        answers.append((response.status_code, time.monotonic() - started))

    threads = [threading.Thread(target=wait_long, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    time.sleep(1.5)
    latencies = []
    for _ in range(5):  # Bob meanwhile: his answers come at their normal pace
        started = time.monotonic()
        assert bob.get(f"{stack.api_url}/v1/collections").status_code == 200
        latencies.append(time.monotonic() - started)
    for thread in threads:
        thread.join(15)
    assert max(latencies) < 1.0, latencies
    held = sorted(seconds for _, seconds in answers)
    assert [status for status, _ in answers] == [202] * 4
    assert held[1] < 1.5, held  # two answered at once ...
    assert held[2] > 5.0, held  # ... and two waited their 6 s

    # A job whose messages were lost is gone after its lifetime, with nothing reading it.
    from workers.queries import cleanup_jobs
    from workers.runtime import Runtime

    redis.Redis.from_url(stack.settings().redis_url).delete("recall")  # the lost messages
    time.sleep(1.1)
    settings = stack.settings().model_copy(update={"job_ttl_seconds": 1})
    runtime = Runtime(settings)
    try:
        assert cleanup_jobs(runtime) >= 5
    finally:
        runtime.index.close()
    assert alice.get(stack.api_url + job["url"]).status_code == 404
