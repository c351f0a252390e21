"""The Python clients' HTTP behaviour against a real HTTP server scripted per test: the
error envelope as typed exceptions, Retry-After honoured, unreachable APIs, connections
dropped, pools closed. Each test of a call runs with ``Client`` and with ``AsyncClient``.
The client against the whole running stack is in tests/test_integration.py."""

from __future__ import annotations

import asyncio
import inspect
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from flask import Flask, jsonify, request
from werkzeug.serving import make_server

import umarvel_client as client_package
from cli.stack import free_port
from umarvel_client import (
    USER_AGENT,
    AsyncClient,
    Client,
    ConnectionFailed,
    Forbidden,
    InvalidRequest,
    NotFound,
    Overloaded,
    ServerError,
    Unavailable,
    __version__,
)

Answer = tuple[Any, int, dict[str, str]]


@pytest.fixture
def server() -> Iterator[tuple[str, list[Callable[[], Answer]], list[float]]]:
    """A live server whose next answers are popped from a list; it records when it was hit."""
    answers: list[Callable[[], Answer]] = []
    hits: list[float] = []
    app = Flask("scripted")

    @app.route("/<path:path>", methods=["GET", "POST", "DELETE", "PATCH"])
    def any_route(path: str) -> Any:
        hits.append(time.monotonic())
        body, status, headers = answers.pop(0)()
        return (jsonify(body) if not isinstance(body, str) else body), status, headers

    port = free_port()
    httpd = make_server("127.0.0.1", port, app, threaded=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{port}", answers, hits
    httpd.shutdown()


Through = Callable[..., Any]


@pytest.fixture(params=["sync", "async"])
def through(request: pytest.FixtureRequest) -> Through:
    """``through(url, key, use, **options)``: ``use(api)`` with a ``Client``, or awaited with
    an ``AsyncClient`` in ``asyncio.run``; each closed after. The same ``use`` serves both:
    with an ``AsyncClient`` its call returns the coroutine to await."""

    def with_client(url: str, key: str, use: Callable[[Any], Any], **options: Any) -> Any:
        with Client(url, key, **options) as api:
            return use(api)

    def with_async_client(url: str, key: str, use: Callable[[Any], Any], **options: Any) -> Any:
        async def main() -> Any:
            async with AsyncClient(url, key, **options) as api:
                answer = use(api)
                assert inspect.isawaitable(answer)
                return await answer

        return asyncio.run(main())

    return with_client if request.param == "sync" else with_async_client


def _error(status: int, code: str, retry_after: str | None = None) -> Callable[[], Answer]:
    headers = {"Retry-After": retry_after} if retry_after is not None else {}
    envelope = {"error": {"code": code, "message": f"a {code}", "details": {"n": 1}}}
    return lambda: (envelope, status, headers)


def test_retry_after_is_honoured_then_the_answer_returned(server: Any, through: Through) -> None:
    url, answers, hits = server
    answers += [_error(429, "overloaded", "0.3"), _error(503, "unavailable", "0.2")]
    answers.append(lambda: ({"collections": []}, 200, {}))
    assert through(url, "k", lambda api: api.collections.list()) == []
    assert len(hits) == 3
    assert hits[1] - hits[0] >= 0.3
    assert hits[2] - hits[1] >= 0.2


def test_retries_end_with_the_typed_error_and_its_retry_after(
    server: Any, through: Through
) -> None:
    url, answers, hits = server
    answers += [_error(429, "overloaded", "0.05") for _ in range(3)]
    with pytest.raises(Overloaded) as caught:
        through(url, "k", lambda api: api.collections.list(), retries=2)
    assert len(hits) == 3
    assert (caught.value.status, caught.value.code, caught.value.retry_after) == (
        429,
        "overloaded",
        0.05,
    )
    # A wait the server asks for beyond the cap is cut to the cap.
    answers += [_error(503, "unavailable", "3600"), lambda: ({"collections": []}, 200, {})]
    started = time.monotonic()
    through(url, "k", lambda api: api.collections.list(), max_retry_wait=0.1)
    assert time.monotonic() - started < 5


@pytest.mark.parametrize(
    ("status", "kind"),
    [(400, InvalidRequest), (403, Forbidden), (404, NotFound), (500, ServerError)],
)
def test_error_answers_are_typed_and_never_retried(
    server: Any, through: Through, status: int, kind: type
) -> None:
    url, answers, hits = server
    answers.append(_error(status, "some_code"))
    with pytest.raises(kind) as caught:
        through(url, "k", lambda api: api.collections.get("x"))
    assert len(hits) == 1
    assert (caught.value.status, caught.value.code) == (status, "some_code")
    assert caught.value.reason == "a some_code"
    assert caught.value.details == {"n": 1}


def test_a_non_json_error_and_an_unreachable_api(server: Any, through: Through) -> None:
    url, answers, _ = server
    answers.append(lambda: ("<html>bad gateway</html>", 503, {}))
    with pytest.raises(Unavailable, match="bad gateway"):
        through(url, "k", lambda api: api.collections.list(), retries=0)
    closed = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ConnectionFailed, match=f"cannot reach the API at {closed}"):
        through(closed, "k", lambda api: api.collections.list())


def test_health_reads_the_whole_systems_status(server: Any, through: Through) -> None:
    url, answers, hits = server
    checks = {"database": {"ok": True}, "redis": {"ok": True}}
    not_ready = {"status": "not_ready", "checks": checks}
    # A 503 with the checks is the answer (not retried); a 503 without them is an outage.
    answers.append(lambda: (not_ready, 503 if request.path == "/statusz" else 404, {}))
    assert through(url, "k", lambda api: api.health()) == not_ready
    assert len(hits) == 1
    answers.append(lambda: ({"status": "ready", "checks": checks}, 200, {}))
    assert through(url, "k", lambda api: api.health())["status"] == "ready"
    answers.append(_error(503, "unavailable"))
    with pytest.raises(Unavailable):
        through(url, "k", lambda api: api.health(), retries=0)


def test_search_sends_the_request_and_follows_a_running_job(server: Any, through: Through) -> None:
    url, answers, _ = server
    seen: list[Any] = []

    def accepted() -> Answer:
        seen.append(request.get_json())
        return (
            {"id": "j1", "url": "/v1/queries/j1", "status": "queued", "is_running": True},
            202,
            {},
        )

    hit = {"rank": 1, "document_id": "d", "cosine": 0.5, "text": "t", "metadata": {}}
    done = {
        "id": "j1",
        "status": "done",
        "is_running": False,
        "is_partial": False,
        "cached": False,
        "timings": {"recall": 0.1},
        "results": [{**hit, "image_url": None, "p_yes": 0.9, "score": 0.59}],
    }
    running = {**done, "status": "recalling", "is_running": True, "results": []}
    answers += [accepted, lambda: (running, 200, {}), lambda: (done, 200, {})]
    result = through(
        url,
        "k",
        lambda api: api.search(
            "c",
            text="a",
            image=b"\x89PNG",
            top_k=3,
            rerank=False,
            filter={"n": 1},
            mode="hybrid",
            like=("d0",),
            offset=10,
            group_by="n",
            instruction=None,  # None: left out, the server's default
            wait=0,
        ),
        poll_seconds=0.01,
    )
    assert seen == [
        {
            "text": "a",
            "image": "iVBORw==",
            "top_k": 3,
            "rerank": {"enabled": False},
            "filter": {"n": 1},
            "mode": "hybrid",
            "like": ["d0"],
            "offset": 10,
            "group_by": "n",
            "wait": 0,
        }
    ]
    assert result.status == "done"
    assert [(h.document_id, h.p_yes, h.score) for h in result.hits] == [("d", 0.9, 0.59)]
    assert result.timings == {"recall": 0.1}


def test_the_client_names_itself_and_its_version(server: Any, through: Through) -> None:
    url, answers, _ = server
    agents: list[str] = []

    def answer() -> Answer:
        agents.append(request.headers.get("User-Agent", ""))
        return {"collections": []}, 200, {}

    answers.append(answer)
    through(url, "umk_x", lambda api: api.request("GET", "/v1/collections"))
    assert agents == [USER_AGENT]
    assert USER_AGENT.startswith(f"umarvel-client/{__version__} python-httpx/")
    assert __version__ != "unknown"
    assert (Path(client_package.__file__).parent / "py.typed").exists()  # PEP 561: typed


def test_the_context_managers_close_the_pool_but_not_a_session_passed_in(server: Any) -> None:
    url, answers, _ = server
    answers += [lambda: ({"collections": []}, 200, {}) for _ in range(4)]
    with Client(url, "k") as api:
        assert api.collections.list() == []
        assert not api.http.is_closed
    assert api.http.is_closed
    with pytest.raises(RuntimeError, match="closed"):
        api.collections.list()

    async def main() -> tuple[Any, Any]:
        async with AsyncClient(url, "k") as api:
            assert await api.collections.list() == []
            assert not api.http.is_closed
        return api, api.http

    closed_api, pool = asyncio.run(main())
    assert pool.is_closed
    with pytest.raises(RuntimeError, match="closed"):
        asyncio.run(closed_api.collections.list())

    # A session passed in is the caller's: sent through, and left open.
    with httpx.Client() as session:
        with Client(url, "k", session=session) as api:
            assert api.collections.list() == []
        assert not session.is_closed
    asyncio.run(_with_async_session(url))


async def _with_async_session(url: str) -> None:
    async with httpx.AsyncClient() as session:
        async with AsyncClient(url, "k", session=session) as api:
            assert await api.collections.list() == []
        assert not session.is_closed


class Dropper:
    """A raw HTTP server that reads each request and closes the first ``drops`` connections
    without answering (with a reset when ``reset``), then answers each with ``body``."""

    def __init__(self, drops: int, body: bytes, reset: bool = False) -> None:
        self.drops = drops
        self.body = body
        self.reset = reset
        self.requests: list[str] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.05)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._listener.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(5)
                self.requests.append(_read_request(conn))
                if len(self.requests) <= self.drops:
                    if self.reset:  # close with RST rather than FIN
                        conn.setsockopt(
                            socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                        )
                    continue
                head = (
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(self.body)}\r\nConnection: close\r\n\r\n"
                )
                conn.sendall(head.encode() + self.body)


def _read_request(conn: socket.socket) -> str:
    """The request line, once the head and its body (by Content-Length) are read."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += conn.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    length = next(
        (
            int(line.split(":", 1)[1])
            for line in lines
            if line.lower().startswith("content-length:")
        ),
        0,
    )
    while len(body) < length:
        body += conn.recv(65536)
    return lines[0]


@pytest.fixture
def dropper() -> Iterator[Callable[..., Dropper]]:
    made: list[Dropper] = []

    def make(drops: int, body: bytes, reset: bool = False) -> Dropper:
        made.append(Dropper(drops, body, reset))
        return made[-1]

    yield make
    for server in made:
        server.close()


@pytest.mark.parametrize("reset", [False, True], ids=["closed", "reset"])
def test_a_dropped_connection_is_retried_for_a_get_and_a_search(
    dropper: Callable[..., Dropper], through: Through, reset: bool
) -> None:
    server = dropper(1, b'{"collections": []}', reset)
    assert through(server.url, "k", lambda api: api.collections.list()) == []
    assert server.requests == ["GET /v1/collections HTTP/1.1"] * 2

    # A search is safe to send twice: the server answers the same query from its cache or
    # from the job already running it.
    done = b'{"id": "j", "status": "done", "is_running": false, "results": []}'
    server = dropper(2, done, reset)
    assert through(server.url, "k", lambda api: api.search("c", text="a")).status == "done"
    assert server.requests == ["POST /v1/collections/c/queries HTTP/1.1"] * 3

    # Connection errors count against the same retries as 429 and 503: none left, none sent.
    server = dropper(1, b'{"collections": []}', reset)
    with pytest.raises(ConnectionFailed, match="cannot reach the API"):
        through(server.url, "k", lambda api: api.collections.list(), retries=0)
    assert len(server.requests) == 1


def test_an_ingestion_batch_is_never_sent_twice_after_a_dropped_connection(
    dropper: Callable[..., Dropper], through: Through
) -> None:
    job = b'{"id": "i", "kind": "ingest", "state": "done", "total": 1, "done": 1, "failed": 0}'
    server = dropper(2, job)
    with pytest.raises(ConnectionFailed, match="cannot reach the API"):
        through(server.url, "k", lambda api: api.documents.submit("c", [{"id": "a", "text": "t"}]))
    with pytest.raises(ConnectionFailed):  # nor through ingest, which submits the same way
        through(server.url, "k", lambda api: api.documents.ingest("c", [{"id": "b", "text": "t"}]))
    assert server.requests == ["POST /v1/collections/c/documents HTTP/1.1"] * 2
    # The same batch once the server answers: accepted, then followed until done.
    summary = through(server.url, "k", lambda api: api.documents.ingest("c", [{"id": "a"}]))
    assert (summary.total, summary.done) == (1, 1)


def test_ingest_reads_lazily_and_reports_progress_async(server: Any) -> None:
    url, answers, _ = server
    sent: list[Any] = []

    def accepted(job_id: str, total: int) -> Callable[[], Answer]:
        def answer() -> Answer:
            sent.append(request.get_json())
            job = {"id": job_id, "kind": "ingest", "state": "queued", "total": total}
            return {**job, "done": 0, "failed": 0}, 202, {}

        return answer

    finished = {"kind": "ingest", "state": "done", "failed": 0}
    answers += [accepted("i1", 2), accepted("i2", 1)]
    answers += [lambda: ({**finished, "id": "i1", "total": 2, "done": 2}, 200, {})]
    answers += [lambda: ({**finished, "id": "i2", "total": 1, "done": 1}, 200, {})]
    seen: list[tuple[int, int]] = []
    docs = ({"id": str(n), "image": bytes([n])} for n in range(3))

    async def main() -> Any:
        async with AsyncClient(url, "k", poll_seconds=0.01) as api:
            return await api.documents.ingest(
                "c", docs, batch_size=2, progress=lambda s: seen.append((s.done, s.total))
            )

    summary = asyncio.run(main())
    assert [[d["id"] for d in body["documents"]] for body in sent] == [["0", "1"], ["2"]]
    assert sent[0]["documents"][1]["image"] == "AQ=="
    assert seen == [(0, 2), (0, 3), (3, 3)]
    assert (summary.total, summary.done, summary.failed) == (3, 3, 0)
