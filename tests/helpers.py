"""Helpers shared by the API tests."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from devkit.samples import b64, sample_queries

# The three query kinds as JSON request fields, for tests parametrized by them.
query_kinds = pytest.mark.parametrize(
    "query",
    [
        {k: b64(v) if isinstance(v, bytes) else v for k, v in q.items()}
        for _, q, _ in sample_queries()
    ],
    ids=[label for label, _, _ in sample_queries()],
)


def make_key(app: Any, scopes: list[str], collections: list[str] | None = None) -> str:
    from store.db import session_scope
    from store.keys import create_key

    with session_scope(app.extensions["umarvel"].sessions) as session:
        return create_key(session, "test", scopes, collections)[1]


def error(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.json
    body = response.json
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message", "details"}
    assert "Traceback" not in response.get_data(as_text=True)
    return body["error"]


def entries(rt: Any, job_id: str | None = None, kind: str | None = None) -> list[Any]:
    """The outbox entries still owed (of one job, of one kind), oldest first."""
    from sqlalchemy import select

    from ingestion.outbox import Entry
    from store.tables import OutboxEntry

    query = select(OutboxEntry).order_by(OutboxEntry.id)
    if job_id is not None:
        query = query.where(OutboxEntry.job_id == job_id)
    if kind is not None:
        query = query.where(OutboxEntry.kind == kind)
    with rt.sessions() as session:
        return [Entry.of(row) for row in session.scalars(query)]


def run_entries(rt: Any, job_id: str | None = None, kind: str | None = None) -> list[Any]:
    """Run what a worker would: each owed entry (of one job, of one kind), once."""
    from ingestion import engine

    return [engine.run(rt, entry.id) for entry in entries(rt, job_id, kind)]


def ingest_in_process(client: Any, rt: Any, docs: list[dict[str, Any]]) -> str:
    """Submit through the API, then run the job's chunks as a recall worker would;
    returns the job id."""
    response = client.post("/v1/collections/docs/documents", json={"documents": docs})
    assert response.status_code == 202, response.json
    job_id = str(response.json["id"])
    run_entries(rt, job_id)
    return job_id


def admin_session(stack: Any) -> Any:
    """An HTTP session carrying a new admin key of ``stack``."""
    import requests

    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {stack.create_key(('admin',))}"
    return session


def sweep_now(rt: Any) -> list[int]:
    """One outbox sweep, as if the sweep interval had passed since the last."""
    from ingestion import sweep

    rt.redis.delete(sweep.LOCK)
    return list(sweep.sweep(rt, 30))


def poll(http: Any, url: str, done: Any, timeout: float = 120.0) -> dict[str, Any]:
    """GET ``url`` until ``done(body)`` holds; fails after ``timeout`` seconds."""
    import time

    deadline = time.monotonic() + timeout
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        body = http.get(url).json()
        if done(body):
            return body
        time.sleep(0.1)
    raise AssertionError(f"{url} did not finish: {body}")


def redis_binary() -> str:
    """The ``redis-server`` the fault tests start and kill themselves."""
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not Path(binary).exists():
        pytest.fail("redis-server is not installed (scripts/services.sh installs it)")
    return binary


class InFlight:
    """Wraps ``function``; ``most`` is how many calls were inside it at once. Each call is
    held ``hold`` seconds first, so that callers allowed to overlap do."""

    def __init__(self, function: Any, hold: float = 0.02) -> None:
        self._function, self._hold = function, hold
        self._lock = threading.Lock()
        self._now = 0
        self.most = 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            self._now += 1
            self.most = max(self.most, self._now)
        time.sleep(self._hold)
        try:
            return self._function(*args, **kwargs)
        finally:
            with self._lock:
                self._now -= 1


def generate_p_yes(reranker: Any, penalty: float, query: Any, candidates: list[Any]) -> list[float]:
    """The reranker's reference: P(Yes) from generate()'s processed first-step scores."""
    import torch

    pairs = [reranker._prepare(query, reranker._image(query.image), c) for c in candidates]
    images = [img for pair in pairs for img in pair.images]
    # A candidate video goes in as the frames U-MARVEL's rule samples, as its evaluation
    # handed them to the processor.
    videos = [reranker.sample(c.video).frames for c in candidates if c.video is not None]
    batch = reranker.processor(
        text=[p.text for p in pairs],
        images=images or None,
        videos=videos or None,
        padding=True,
        padding_side="left",
        return_tensors="pt",
    )
    with torch.inference_mode():
        out = reranker.model.generate(
            **batch,
            max_new_tokens=1,
            do_sample=False,
            repetition_penalty=penalty,
            output_scores=True,
            return_dict_in_generate=True,
        )
    scores = out.scores[0][:, [reranker.yes_id, reranker.no_id]]
    return torch.softmax(scores.float(), dim=-1)[:, 0].tolist()
