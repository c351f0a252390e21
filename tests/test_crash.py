"""Crash safety: the recall worker is SIGKILLed three times in the middle of an ingestion job.

Tasks are acknowledged late, so Redis re-delivers what a killed worker held once the
visibility timeout (a few seconds here) has passed, and the redrive sweep queues again what
a worker took with it before recording it; upserts by document id make every replay
harmless. At the end every document is indexed exactly once.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
from sqlalchemy import create_engine, func, select

from cli.stack import Stack
from recall.index import MilvusIndex
from store.tables import Document
from tests.conftest import REDIS_URL, fresh_postgres_database, stack_env

pytestmark = pytest.mark.integration

DOCUMENTS = 240


@pytest.fixture(scope="module")
def stack(
    tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    redis.Redis.from_url(REDIS_URL).flushdb()
    workdir = tmp_path_factory.mktemp("crash")
    with fresh_postgres_database() as database_url:
        env = stack_env(
            database_url,
            workdir,
            tiny_models,
            ingest_chunk_size="8",
            # Re-deliver a killed worker's tasks after 8 s instead of an hour.
            task_time_limit="6",
            visibility_timeout="8",
            # A worker killed between taking a message from Redis and recording it as
            # unacknowledged loses it; the redrive sweep queues such chunks again.
            redrive_seconds="2",
            heartbeat_seconds="0.5",
        )
        with Stack(workdir, env, worker_suffix=f"-{uuid.uuid4().hex[:6]}") as running:
            yield running


def _job(http: requests.Session, stack: Stack, url: str) -> dict[str, Any]:
    return dict(http.get(stack.api_url + url).json())


def test_sigkill_three_times_loses_and_duplicates_nothing(stack: Stack) -> None:
    http = requests.Session()
    http.headers["Authorization"] = f"Bearer {stack.create_key(('admin',))}"
    assert http.post(f"{stack.api_url}/v1/collections", json={"name": "crash"}).status_code == 201
    docs = [
        {"id": f"doc-{i}", "text": f"document number {i} about {'abc'[i % 3]}"}
        for i in range(DOCUMENTS)
    ]
    job = http.post(
        f"{stack.api_url}/v1/collections/crash/documents", json={"documents": docs}
    ).json()
    kills = 0
    for threshold in (16, 80, 160):
        deadline = time.monotonic() + 120
        while _job(http, stack, job["url"])["done"] < threshold:
            assert time.monotonic() < deadline, "ingestion stalled"
            time.sleep(0.02)
        if _job(http, stack, job["url"])["state"] == "done":
            break
        stack.kill("worker-recall")  # SIGKILL: no goodbye, unacknowledged tasks held
        kills += 1
        stack.start_worker("recall")
    assert kills == 3, "the job finished before the third kill; make it longer"
    deadline = time.monotonic() + 180
    while (state := _job(http, stack, job["url"]))["state"] != "done":
        assert time.monotonic() < deadline, f"not finished: {state}"
        time.sleep(0.5)
    assert (state["done"], state["failed"], state["total"]) == (DOCUMENTS, 0, DOCUMENTS)

    engine = create_engine(stack.settings().database_url)
    with engine.connect() as conn:
        indexed = conn.scalar(
            select(func.count()).select_from(Document).where(Document.status == "indexed")
        )
    engine.dispose()
    assert indexed == DOCUMENTS
    settings = stack.settings()
    index = MilvusIndex(settings.milvus_uri)
    name = http.get(f"{stack.api_url}/v1/collections/crash").json()["milvus_collection"]
    assert name.startswith(f"{settings.milvus_prefix}crash_")
    assert name.endswith("_g1")
    assert index.count(name) == DOCUMENTS  # exactly once: one vector per document
    rows = index.client.query(name, filter='id like "doc-%"', output_fields=["id"], limit=1000)
    assert {row["id"] for row in rows} == {d["id"] for d in docs}
