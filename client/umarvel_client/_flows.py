"""Every call of the API, written once for ``Client`` and ``AsyncClient``, without I/O.

An operation is a *flow*: a generator that yields the steps it needs done, a ``Request`` to
send or a ``Sleep``, and is sent back each step's outcome: for a ``Request`` the
``httpx.Response``, or the ``httpx`` error that sending it raised; for a ``Sleep``, None.
``Client._run`` carries a flow out with blocking calls and ``AsyncClient._run`` with
``await``: what to send, when to send it again, how to follow a job and how to read an
answer are here, once, and only the I/O is theirs.
"""

from __future__ import annotations

import base64
import codecs
import io
import json
import time
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import IO, Any, Protocol, TypedDict, TypeVar, cast

import httpx

from umarvel_client._version import __version__
from umarvel_client.errors import ApiError, ConnectionFailed, JobFailed, WaitTimeout, error_for
from umarvel_client.types import (
    Collection,
    Document,
    DocumentPage,
    Facets,
    IngestJob,
    IngestSummary,
    SearchResult,
)

T = TypeVar("T")

ImageLike = bytes | str | Path
"""Image (or video) bytes, or the path of such a file (read and sent as base64)."""

ProgressCallback = Callable[[IngestSummary], None]

RETRIED_STATUSES = (429, 503)
"""Answers that say "not now": sent again after the server's ``Retry-After``, whatever the
method, as the server did not take the request."""

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})

CONNECTION_ERRORS = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.ReadError,
    httpx.WriteError,
    httpx.RemoteProtocolError,
)
"""Failures to connect, and connections reset or closed before an answer: a request that
is safe to send twice is sent again after them."""

CONNECTION_BACKOFF = 0.1
"""Seconds before the first resend after a connection error; doubled each time."""


USER_AGENT = f"umarvel-client/{__version__} python-httpx/{httpx.__version__}"


class Config(Protocol):
    """What a flow and a driver read of their client, at each step: a change applies at
    once."""

    url: str
    headers: dict[str, str]
    timeout: float
    retries: int
    max_retry_wait: float
    poll_seconds: float


Output = str | Path | IO[bytes] | IO[str]
"""Where an export goes: a file's path, or a binary or text stream (left open)."""


class Sink:
    """The body of a streamed answer, written to ``out`` as it arrives: bytes to a binary
    stream, text (decoded as UTF-8 across chunks) to a text stream. Counts its lines."""

    def __init__(self, out: IO[bytes] | IO[str]) -> None:
        text = _is_text(out)
        self._bytes = None if text else cast(IO[bytes], out)
        self._text = cast(IO[str], out) if text else None
        self._decoder = codecs.getincrementaldecoder("utf-8")()
        self.started = False
        self.lines = 0

    def write(self, chunk: bytes) -> None:
        self.started = self.started or bool(chunk)
        self.lines += chunk.count(b"\n")
        if self._bytes is not None:
            self._bytes.write(chunk)
        elif self._text is not None:
            self._text.write(self._decoder.decode(chunk))


def _is_text(out: IO[Any]) -> bool:
    return isinstance(out, io.TextIOBase) or "b" not in getattr(out, "mode", "b")


@contextmanager
def sink_for(out: Output) -> Iterator[Sink]:
    """A ``Sink`` writing to ``out``: a path is opened (and truncated) for it, and closed
    after; a stream stays open."""
    if isinstance(out, str | Path):
        with open(out, "wb") as handle:
            yield Sink(handle)
    else:
        yield Sink(out)


@dataclass(frozen=True)
class Request:
    """One HTTP request of the API, relative to the client's URL."""

    method: str
    path: str
    params: Mapping[str, Any] | None = None
    json: Any = None
    safe: bool | None = None
    """Whether sending it twice does no harm; None: as its method says (GET, PUT, DELETE)."""
    sink: Sink | None = None
    """Where a successful answer's body goes as it arrives, instead of into memory."""

    @property
    def resendable(self) -> bool:
        if self.sink is not None and self.sink.started:
            return False  # what arrived is written: sending it again would repeat it
        return self.method in IDEMPOTENT_METHODS if self.safe is None else self.safe


@dataclass(frozen=True)
class Sleep:
    seconds: float


Step = Request | Sleep
Flow = Generator[Step, Any, T]
Outcome = httpx.Response | Exception
"""What a driver sends back for a ``Request``."""


def headers(key: str | None) -> dict[str, str]:
    """The headers of every request: the client's name and version, and the key."""
    sent = {"User-Agent": USER_AGENT}
    if key:
        sent["Authorization"] = f"Bearer {key}"
    return sent


def http_request(
    http: httpx.Client | httpx.AsyncClient, cfg: Config, request: Request
) -> httpx.Request:
    """The ``httpx.Request`` that sends ``request`` to the client's API."""
    return http.build_request(
        request.method,
        cfg.url + request.path,
        params=request.params,
        json=request.json,
        headers=cfg.headers,
        timeout=cfg.timeout,
    )


def encode_image(image: ImageLike) -> str:
    data = image if isinstance(image, bytes) else Path(image).read_bytes()
    return base64.b64encode(data).decode()


def call(
    cfg: Config, request: Request, *, answers: Callable[[httpx.Response], bool] | None = None
) -> Flow[Any]:
    """The parsed JSON of a successful answer (None for an empty one), or of an error answer
    that ``answers`` takes for an answer.

    ``429`` and ``503`` are retried after the server's ``Retry-After``, connection errors
    after a short backoff if the request is ``resendable``: at most ``cfg.retries`` times in
    all, each wait capped at ``cfg.max_retry_wait``. Raises ``ApiError`` (a subclass per
    status) or ``ConnectionFailed``.
    """
    for attempt in range(cfg.retries + 1):
        last = attempt == cfg.retries
        outcome: Outcome = yield request
        if isinstance(outcome, Exception):
            if last or not (request.resendable and isinstance(outcome, CONNECTION_ERRORS)):
                reason = str(outcome) or type(outcome).__name__
                raise ConnectionFailed(f"cannot reach the API at {cfg.url}: {reason}")
            yield Sleep(min(cfg.max_retry_wait, CONNECTION_BACKOFF * 2**attempt))
            continue
        if outcome.status_code < 400 and request.sink is not None:
            return None  # the body went to the sink
        if outcome.status_code < 400 or (answers is not None and answers(outcome)):
            return _json(outcome, cfg.url)
        error = error_for(outcome.status_code, _body(outcome), outcome.headers.get("Retry-After"))
        if last or outcome.status_code not in RETRIED_STATUSES:
            raise error
        yield Sleep(min(cfg.max_retry_wait, _backoff(error, attempt)))
    raise AssertionError("unreachable")


def _status_answer(response: httpx.Response) -> bool:
    """A ``503`` of ``/statusz`` that carries its checks: the system is not ready, which is
    an answer, not a request to send again later."""
    body = _body(response)
    return response.status_code == 503 and isinstance(body, dict) and "checks" in body


def health(cfg: Config) -> Flow[dict[str, Any]]:
    return dict((yield from call(cfg, Request("GET", "/statusz"), answers=_status_answer)))


class SearchOptions(TypedDict, total=False):
    """What a search may say; everything left out is the server's or the collection's
    default. See ``Client.search``."""

    text: str | None
    image: ImageLike | None
    video: ImageLike | None  # a video file's bytes or path
    instruction: str | None
    use_default_instruction: bool | None
    candidates: str | None  # what the documents are: any | text | image | image,text | video
    mode: str | None  # dense | keyword | hybrid
    fusion: Mapping[str, Any] | None  # hybrid: {"method": "rrf" or "weighted", "k", ...}
    like: Sequence[str] | None  # stored documents to search like
    unlike: Sequence[str] | None  # stored documents to search away from
    include_examples: bool | None
    top_k: int | None
    offset: int | None
    group_by: str | None
    group_size: int | None
    rerank: bool | Mapping[str, Any] | None
    filter: Mapping[str, Any] | None
    wait: float | None


def search_request(collection: str, options: SearchOptions) -> Request:
    """The query request for ``options``; a ``None`` value counts as left out."""
    body: dict[str, Any] = {name: value for name, value in options.items() if value is not None}
    for name in ("image", "video"):
        if name in body:
            body[name] = encode_image(body[name])
    if isinstance(body.get("rerank"), bool):
        body["rerank"] = {"enabled": body["rerank"]}
    for name in ("rerank", "fusion", "filter"):
        if name in body:
            body[name] = dict(body[name])
    for name in ("like", "unlike"):
        if name in body:
            body[name] = list(body[name])
    # Safe to send twice: a search changes no data, and the server answers the same query
    # from its cache or joins the job already running it rather than starting another.
    return Request("POST", f"/v1/collections/{collection}/queries", json=body, safe=True)


def search(
    cfg: Config, request: Request, *, until_done: bool, timeout: float
) -> Flow[SearchResult]:
    result = SearchResult.from_json((yield from call(cfg, request)))
    if until_done and not result.finished:
        result = yield from wait_query(cfg, result.job_id, timeout=timeout)
    if until_done and result.status != "done":
        raise JobFailed(f"query job {result.job_id} ended {result.status}", result.raw)
    return result


# Collections


def create_collection(
    cfg: Config,
    name: str,
    *,
    description: str,
    recall_model: str | None,
    rerank: Mapping[str, Any] | None,
    metadata_fields: Mapping[str, str] | None,
    search_mode: str | None = None,
) -> Flow[Collection]:
    body: dict[str, Any] = {"name": name, "description": description}
    if search_mode is not None:
        body["search_mode"] = search_mode
    if recall_model is not None:
        body["recall_model"] = recall_model
    if rerank is not None:
        body["rerank"] = dict(rerank)
    if metadata_fields is not None:
        body["metadata_fields"] = dict(metadata_fields)
    return Collection.from_json(
        (yield from call(cfg, Request("POST", "/v1/collections", json=body)))
    )


def list_collections(cfg: Config) -> Flow[list[Collection]]:
    answer = yield from call(cfg, Request("GET", "/v1/collections"))
    return [Collection.from_json(c) for c in answer["collections"]]


def get_collection(cfg: Config, name: str) -> Flow[Collection]:
    return Collection.from_json((yield from call(cfg, Request("GET", f"/v1/collections/{name}"))))


def patch_collection(
    cfg: Config,
    name: str,
    *,
    description: str | None,
    rerank: Mapping[str, Any] | None,
    search_mode: str | None = None,
) -> Flow[Collection]:
    body: dict[str, Any] = {}
    if search_mode is not None:
        body["search_mode"] = search_mode
    if description is not None:
        body["description"] = description
    if rerank is not None:
        body["rerank"] = dict(rerank)
    request = Request("PATCH", f"/v1/collections/{name}", json=body)
    return Collection.from_json((yield from call(cfg, request)))


def delete_collection(cfg: Config, name: str) -> Flow[None]:
    yield from call(cfg, Request("DELETE", f"/v1/collections/{name}"))


def reindex(
    cfg: Config, name: str, *, recall_model: str | None, wait: bool, **kw: Any
) -> Flow[IngestJob]:
    body = {} if recall_model is None else {"recall_model": recall_model}
    answer = yield from call(cfg, Request("POST", f"/v1/collections/{name}/reindex", json=body))
    job = IngestJob.from_json(answer)
    return (yield from wait_ingest(cfg, job.id, **kw)) if wait else job


# Documents


def submit(cfg: Config, collection: str, documents: Iterable[Mapping[str, Any]]) -> Flow[IngestJob]:
    batch = [_document(doc) for doc in documents]
    path = f"/v1/collections/{collection}/documents"
    return IngestJob.from_json(
        (yield from call(cfg, Request("POST", path, json={"documents": batch})))
    )


def ingest(
    cfg: Config,
    collection: str,
    documents: Iterable[Mapping[str, Any]],
    *,
    batch_size: int,
    progress: ProgressCallback | None,
    wait: bool,
    timeout: float | None,
) -> Flow[IngestSummary]:
    jobs: list[IngestJob] = []
    for batch in _batches(documents, batch_size):
        jobs.append((yield from submit(cfg, collection, batch)))
        if progress is not None:
            progress(IngestSummary(list(jobs)))
    if not wait:
        return IngestSummary(jobs)
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        for i, job in enumerate(jobs):
            if not job.finished:
                jobs[i] = yield from ingest_job(cfg, job.id)
        summary = IngestSummary(list(jobs))
        if progress is not None:
            progress(summary)
        if all(job.finished for job in jobs):
            return summary
        if deadline is not None and time.monotonic() > deadline:
            raise WaitTimeout(f"ingestion into {collection!r} still running after {timeout}s")
        yield Sleep(cfg.poll_seconds)


def get_document(cfg: Config, collection: str, document_id: str) -> Flow[Document]:
    path = f"/v1/collections/{collection}/documents/{document_id}"
    return Document.from_json((yield from call(cfg, Request("GET", path))))


def delete_document(cfg: Config, collection: str, document_id: str) -> Flow[None]:
    yield from call(cfg, Request("DELETE", f"/v1/collections/{collection}/documents/{document_id}"))


def delete_where(cfg: Config, collection: str, filter: Mapping[str, Any]) -> Flow[int]:
    params = selection(filter, None)
    path = f"/v1/collections/{collection}/documents"
    return int((yield from call(cfg, Request("DELETE", path, params=params)))["deleted"])


def selection(filter: Mapping[str, Any] | None, status: str | None, **given: Any) -> dict[str, Any]:
    """The query parameters that select documents, a filter (as JSON) and a state, with
    those of ``given`` that are not None."""
    params = {name: value for name, value in given.items() if value is not None}
    if filter is not None:
        params["filter"] = json.dumps(dict(filter))
    if status is not None:
        params["status"] = status
    return params


def list_documents(
    cfg: Config,
    collection: str,
    *,
    filter: Mapping[str, Any] | None,
    status: str | None,
    cursor: str | None,
    limit: int | None,
) -> Flow[DocumentPage]:
    params = selection(filter, status, cursor=cursor, limit=limit)
    request = Request("GET", f"/v1/collections/{collection}/documents", params=params)
    return DocumentPage.from_json((yield from call(cfg, request)))


def facets(
    cfg: Config,
    collection: str,
    field: str,
    *,
    filter: Mapping[str, Any] | None,
    status: str | None,
    limit: int | None,
) -> Flow[Facets]:
    params = selection(filter, status, field=field, limit=limit)
    request = Request("GET", f"/v1/collections/{collection}/facets", params=params)
    return Facets.from_json((yield from call(cfg, request)))


def export(
    cfg: Config,
    collection: str,
    sink: Sink,
    *,
    filter: Mapping[str, Any] | None,
    status: str | None,
    media: str,
) -> Flow[int]:
    """Every selected document's JSON line, written to ``sink`` as it arrives; how many."""
    params = selection(filter, status, media=media)
    path = f"/v1/collections/{collection}/export"
    yield from call(cfg, Request("GET", path, params=params, sink=sink))
    return sink.lines


# Jobs


def ingest_job(cfg: Config, job_id: str) -> Flow[IngestJob]:
    return IngestJob.from_json((yield from call(cfg, Request("GET", f"/v1/ingest-jobs/{job_id}"))))


def wait_ingest(
    cfg: Config,
    job_id: str,
    *,
    timeout: float | None = None,
    progress: Callable[[IngestJob], None] | None = None,
) -> Flow[IngestJob]:
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        job = yield from ingest_job(cfg, job_id)
        if progress is not None:
            progress(job)
        if job.finished:
            return job
        if deadline is not None and time.monotonic() > deadline:
            raise WaitTimeout(f"ingestion job {job_id} still {job.state} after {timeout}s")
        yield Sleep(cfg.poll_seconds)


def query(cfg: Config, job_id: str, *, offset: int, limit: int | None) -> Flow[SearchResult]:
    params: dict[str, int] = {"offset": offset}
    if limit is not None:
        params["limit"] = limit
    answer = yield from call(cfg, Request("GET", f"/v1/queries/{job_id}", params=params))
    return SearchResult.from_json(answer)


def wait_query(cfg: Config, job_id: str, *, timeout: float) -> Flow[SearchResult]:
    deadline = time.monotonic() + timeout
    while True:
        result = yield from query(cfg, job_id, offset=0, limit=None)
        if result.finished:
            return result
        if time.monotonic() > deadline:
            raise WaitTimeout(f"query job {job_id} still {result.status} after {timeout}s")
        yield Sleep(cfg.poll_seconds)


def cancel_query(cfg: Config, job_id: str) -> Flow[SearchResult | None]:
    answer = yield from call(cfg, Request("DELETE", f"/v1/queries/{job_id}"))
    return None if answer is None else SearchResult.from_json(answer)


# Answers


def _json(response: httpx.Response, url: str) -> Any:
    if response.status_code == 204 or not response.content:
        return None
    try:
        return response.json()
    except ValueError:
        raise ConnectionFailed(f"{url} did not answer JSON") from None


def _body(response: httpx.Response) -> Any:
    """An error answer's JSON, or its text when it is not JSON (a proxy's HTML page)."""
    try:
        return response.json()
    except ValueError:
        return response.text


def _backoff(error: ApiError, attempt: int) -> float:
    return error.retry_after if error.retry_after is not None else float(2**attempt)


def _document(doc: Mapping[str, Any]) -> dict[str, Any]:
    """A document as the API takes it: an image, or a media part's ``data``, given as bytes
    or a local path is sent as base64."""
    out = dict(doc)
    if isinstance(out.get("image"), (bytes, Path)):
        out["image"] = encode_image(out["image"])
    if "media" in out:
        out["media"] = [
            {**part, "data": encode_image(part["data"])}
            if isinstance(part.get("data"), (bytes, Path))
            else dict(part)
            for part in out["media"]
        ]
    return out


def _batches(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    if size < 1:
        raise ValueError("batch_size must be at least 1")
    iterator = iter(items)
    while batch := list(islice(iterator, size)):
        yield batch
