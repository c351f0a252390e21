"""The Python client's HTTP behaviour against a real HTTP server scripted per test: the
error envelope as typed exceptions, Retry-After honoured, unreachable APIs. The client
against the whole running stack is in tests/test_integration.py."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask, jsonify, request
from werkzeug.serving import make_server

import umarvel_client as client_package
from cli.stack import free_port
from umarvel_client import (
    USER_AGENT,
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


def _error(status: int, code: str, retry_after: str | None = None) -> Callable[[], Answer]:
    headers = {"Retry-After": retry_after} if retry_after is not None else {}
    envelope = {"error": {"code": code, "message": f"a {code}", "details": {"n": 1}}}
    return lambda: (envelope, status, headers)


def test_retry_after_is_honoured_then_the_answer_returned(server: Any) -> None:
    url, answers, hits = server
    answers += [_error(429, "overloaded", "0.3"), _error(503, "unavailable", "0.2")]
    answers.append(lambda: ({"collections": []}, 200, {}))
    assert Client(url, "k").collections.list() == []
    assert len(hits) == 3
    assert hits[1] - hits[0] >= 0.3
    assert hits[2] - hits[1] >= 0.2


def test_retries_end_with_the_typed_error_and_its_retry_after(server: Any) -> None:
    url, answers, hits = server
    answers += [_error(429, "overloaded", "0.05") for _ in range(3)]
    with pytest.raises(Overloaded) as caught:
        Client(url, "k", retries=2).collections.list()
    assert len(hits) == 3
    assert (caught.value.status, caught.value.code, caught.value.retry_after) == (
        429,
        "overloaded",
        0.05,
    )
    # A wait the server asks for beyond the cap is cut to the cap.
    answers += [_error(503, "unavailable", "3600"), lambda: ({"collections": []}, 200, {})]
    started = time.monotonic()
    Client(url, "k", max_retry_wait=0.1).collections.list()
    assert time.monotonic() - started < 5


@pytest.mark.parametrize(
    ("status", "kind"),
    [(400, InvalidRequest), (403, Forbidden), (404, NotFound), (500, ServerError)],
)
def test_error_answers_are_typed_and_never_retried(server: Any, status: int, kind: type) -> None:
    url, answers, hits = server
    answers.append(_error(status, "some_code"))
    with pytest.raises(kind) as caught:
        Client(url, "k").collections.get("x")
    assert len(hits) == 1
    assert (caught.value.status, caught.value.code) == (status, "some_code")
    assert caught.value.reason == "a some_code"
    assert caught.value.details == {"n": 1}


def test_a_non_json_error_and_an_unreachable_api(server: Any) -> None:
    url, answers, _ = server
    answers.append(lambda: ("<html>bad gateway</html>", 503, {}))
    with pytest.raises(Unavailable, match="bad gateway"):
        Client(url, "k", retries=0).collections.list()
    closed = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ConnectionFailed, match=f"cannot reach the API at {closed}"):
        Client(closed, "k").collections.list()


def test_search_sends_the_request_and_follows_a_running_job(server: Any) -> None:
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
    result = Client(url, "k", poll_seconds=0.01).search(
        "c", text="a", image=b"\x89PNG", top_k=3, rerank=False, filter={"n": 1}, wait=0
    )
    assert seen == [
        {
            "use_default_instruction": True,
            "text": "a",
            "image": "iVBORw==",
            "top_k": 3,
            "rerank": {"enabled": False},
            "filter": {"n": 1},
            "wait": 0,
        }
    ]
    assert result.status == "done"
    assert [(h.document_id, h.p_yes, h.score) for h in result.hits] == [("d", 0.9, 0.59)]
    assert result.timings == {"recall": 0.1}


def test_the_client_names_itself_and_its_version(server: Any) -> None:
    url, answers, _ = server
    agents: list[str] = []

    def answer() -> Answer:
        agents.append(request.headers.get("User-Agent", ""))
        return {"collections": []}, 200, {}

    answers.append(answer)
    Client(url, "umk_x").request("GET", "/v1/collections")
    assert agents == [USER_AGENT]
    assert USER_AGENT.startswith(f"umarvel-client/{__version__} ")
    assert __version__ != "unknown"
    assert (Path(client_package.__file__).parent / "py.typed").exists()  # PEP 561: typed
