"""``Client``: the umarvel-search HTTP API from Python.

    from umarvel_client import Client

    api = Client("http://127.0.0.1:8000", key)
    api.collections.create("photos", metadata_fields={"year": "int"})
    api.documents.ingest("photos", [{"id": "a", "image": Path("a.jpg")}], progress=print)
    for hit in api.search("photos", text="a red car", top_k=5).hits:
        print(hit.rank, hit.document_id, hit.score)

Answers come back as the dataclasses of ``umarvel_client.types``; error answers as the exceptions of
``umarvel_client.errors``. ``429`` and ``503`` are retried after the server's ``Retry-After`` (at
most ``retries`` times, each wait capped at ``max_retry_wait``), and a search or an
ingestion waits for its job unless told not to.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from itertools import islice
from pathlib import Path
from typing import Any

import requests

from umarvel_client._version import __version__
from umarvel_client.errors import ApiError, ConnectionFailed, JobFailed, WaitTimeout, error_for
from umarvel_client.types import Collection, Document, IngestJob, IngestSummary, SearchResult

USER_AGENT = f"umarvel-client/{__version__} python-requests/{requests.__version__}"

ImageLike = bytes | str | Path
"""Image bytes, or the path of an image file (read and sent as base64)."""

RETRIED = (429, 503)


def encode_image(image: ImageLike) -> str:
    data = image if isinstance(image, bytes) else Path(image).read_bytes()
    return base64.b64encode(data).decode()


class Client:
    """One API, one key. Thread-safe for reads; one ``requests.Session`` per client."""

    def __init__(
        self,
        url: str,
        key: str | None = None,
        *,
        timeout: float = 60.0,
        retries: int = 5,
        max_retry_wait: float = 30.0,
        poll_seconds: float = 0.2,
        session: requests.Session | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.retries = retries
        self.max_retry_wait = max_retry_wait
        self.poll_seconds = poll_seconds
        self.http = session or requests.Session()
        self.http.headers["User-Agent"] = USER_AGENT
        if key:
            self.http.headers["Authorization"] = f"Bearer {key}"
        self.collections = Collections(self)
        self.documents = Documents(self)
        self.jobs = Jobs(self)

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """The parsed JSON of a successful answer (None for 204); raises ``ApiError``."""
        for attempt in range(self.retries + 1):
            try:
                response = self.http.request(
                    method, self.url + path, timeout=self.timeout, **kwargs
                )
            except requests.RequestException as exc:
                raise ConnectionFailed(f"cannot reach the API at {self.url}: {exc}") from None
            if response.status_code < 400:
                if response.status_code == 204 or not response.content:
                    return None
                try:
                    return response.json()
                except ValueError:
                    raise ConnectionFailed(f"{self.url} did not answer JSON") from None
            try:
                body: Any = response.json()
            except ValueError:
                body = response.text
            error = error_for(response.status_code, body, response.headers.get("Retry-After"))
            if response.status_code not in RETRIED or attempt == self.retries:
                raise error
            time.sleep(min(self.max_retry_wait, _backoff(error, attempt)))
        raise AssertionError("unreachable")

    def health(self) -> dict[str, Any]:
        """``/readyz``: whether SQL, Redis and a warm worker per queue answer."""
        try:
            return dict(self.request("GET", "/readyz"))
        except ApiError as exc:
            if exc.status == 503 and isinstance(exc.details, dict):
                return exc.details
            raise

    def search(
        self,
        collection: str,
        *,
        text: str | None = None,
        image: ImageLike | None = None,
        instruction: str | None = None,
        use_default_instruction: bool = True,
        top_k: int | None = None,
        rerank: bool | Mapping[str, Any] | None = None,
        filter: Mapping[str, Any] | None = None,
        wait: float | None = None,
        until_done: bool = True,
        timeout: float = 120.0,
    ) -> SearchResult:
        """Search a collection by text, image or both (a composed query).

        ``rerank``: ``True``/``False``, or ``{"enabled", "k", "weight"}``; ``None`` keeps the
        collection's defaults. ``wait``: seconds the server waits before answering with a
        running job (its default when ``None``). With ``until_done`` the job is then polled
        until it finishes (at most ``timeout`` seconds); else a running job comes back as
        it is, ``partial`` results included.
        """
        body: dict[str, Any] = {"use_default_instruction": use_default_instruction}
        if text is not None:
            body["text"] = text
        if image is not None:
            body["image"] = encode_image(image)
        if instruction is not None:
            body["instruction"] = instruction
        if top_k is not None:
            body["top_k"] = top_k
        if isinstance(rerank, bool):
            body["rerank"] = {"enabled": rerank}
        elif rerank is not None:
            body["rerank"] = dict(rerank)
        if filter is not None:
            body["filter"] = dict(filter)
        if wait is not None:
            body["wait"] = wait
        answer = self.request("POST", f"/v1/collections/{collection}/queries", json=body)
        result = SearchResult.from_json(answer)
        if until_done and not result.finished:
            result = self.jobs.wait_query(result.job_id, timeout=timeout)
        if until_done and result.status != "done":
            raise JobFailed(f"query job {result.job_id} ended {result.status}", result.raw)
        return result


class Collections:
    def __init__(self, client: Client) -> None:
        self._c = client

    def create(
        self,
        name: str,
        *,
        description: str = "",
        recall_model: str | None = None,
        rerank: Mapping[str, Any] | None = None,
        metadata_fields: Mapping[str, str] | None = None,
    ) -> Collection:
        """``rerank``: ``{"enabled", "k", "weight"}`` defaults; ``metadata_fields``: name to
        ``int``, ``float``, ``str`` or ``bool``."""
        body: dict[str, Any] = {"name": name, "description": description}
        if recall_model is not None:
            body["recall_model"] = recall_model
        if rerank is not None:
            body["rerank"] = dict(rerank)
        if metadata_fields is not None:
            body["metadata_fields"] = dict(metadata_fields)
        return Collection.from_json(self._c.request("POST", "/v1/collections", json=body))

    def list(self) -> list[Collection]:
        answer = self._c.request("GET", "/v1/collections")
        return [Collection.from_json(c) for c in answer["collections"]]

    def get(self, name: str) -> Collection:
        return Collection.from_json(self._c.request("GET", f"/v1/collections/{name}"))

    def patch(
        self,
        name: str,
        *,
        description: str | None = None,
        rerank: Mapping[str, Any] | None = None,
    ) -> Collection:
        body: dict[str, Any] = {}
        if description is not None:
            body["description"] = description
        if rerank is not None:
            body["rerank"] = dict(rerank)
        answer = self._c.request("PATCH", f"/v1/collections/{name}", json=body)
        return Collection.from_json(answer)

    def delete(self, name: str) -> None:
        self._c.request("DELETE", f"/v1/collections/{name}")

    def reindex(
        self, name: str, *, recall_model: str | None = None, wait: bool = False, **kw: Any
    ) -> IngestJob:
        """Start re-embedding every document into a new generation; ``wait`` follows it."""
        body = {} if recall_model is None else {"recall_model": recall_model}
        answer = self._c.request("POST", f"/v1/collections/{name}/reindex", json=body)
        job = IngestJob.from_json(answer)
        return self._c.jobs.wait_ingest(job.id, **kw) if wait else job


ProgressCallback = Callable[[IngestSummary], None]


class Documents:
    def __init__(self, client: Client) -> None:
        self._c = client

    def submit(self, collection: str, documents: Iterable[Mapping[str, Any]]) -> IngestJob:
        """One batch, accepted as one ingestion job (documents are upserted by id).

        A document is ``{"id", "text", "image", "metadata"}``; ``image`` may be bytes or a
        path (sent as base64), or use ``image_path`` for a file inside the server's
        ``UMARVEL_INGEST_ROOTS``.
        """
        batch = [_document(doc) for doc in documents]
        answer = self._c.request(
            "POST", f"/v1/collections/{collection}/documents", json={"documents": batch}
        )
        return IngestJob.from_json(answer)

    def ingest(
        self,
        collection: str,
        documents: Iterable[Mapping[str, Any]],
        *,
        batch_size: int = 256,
        progress: ProgressCallback | None = None,
        wait: bool = True,
        timeout: float | None = None,
    ) -> IngestSummary:
        """Send ``documents`` (any iterable, read lazily) in batches; with ``wait``, follow
        the jobs until each has finished, calling ``progress`` with the totals so far."""
        jobs: list[IngestJob] = []
        for batch in _batches(documents, batch_size):
            jobs.append(self.submit(collection, batch))
            if progress is not None:
                progress(IngestSummary(list(jobs)))
        if not wait:
            return IngestSummary(jobs)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            jobs = [job if job.finished else self._c.jobs.ingest_job(job.id) for job in jobs]
            summary = IngestSummary(jobs)
            if progress is not None:
                progress(summary)
            if all(job.finished for job in jobs):
                return summary
            if deadline is not None and time.monotonic() > deadline:
                raise WaitTimeout(f"ingestion into {collection!r} still running after {timeout}s")
            time.sleep(self._c.poll_seconds)

    def get(self, collection: str, document_id: str) -> Document:
        answer = self._c.request("GET", f"/v1/collections/{collection}/documents/{document_id}")
        return Document.from_json(answer)

    def delete(self, collection: str, document_id: str) -> None:
        self._c.request("DELETE", f"/v1/collections/{collection}/documents/{document_id}")

    def delete_where(self, collection: str, filter: Mapping[str, Any]) -> int:
        """Delete every document whose metadata matches ``filter``; how many went."""
        answer = self._c.request(
            "DELETE",
            f"/v1/collections/{collection}/documents",
            params={"filter": json.dumps(dict(filter))},
        )
        return int(answer["deleted"])


class Jobs:
    def __init__(self, client: Client) -> None:
        self._c = client

    def ingest_job(self, job_id: str) -> IngestJob:
        return IngestJob.from_json(self._c.request("GET", f"/v1/ingest-jobs/{job_id}"))

    def wait_ingest(
        self,
        job_id: str,
        *,
        timeout: float | None = None,
        progress: Callable[[IngestJob], None] | None = None,
    ) -> IngestJob:
        """The ingestion (or reindex) job once it has finished."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            job = self.ingest_job(job_id)
            if progress is not None:
                progress(job)
            if job.finished:
                return job
            if deadline is not None and time.monotonic() > deadline:
                raise WaitTimeout(f"ingestion job {job_id} still {job.state} after {timeout}s")
            time.sleep(self._c.poll_seconds)

    def query(self, job_id: str, *, offset: int = 0, limit: int | None = None) -> SearchResult:
        params: dict[str, int] = {"offset": offset}
        if limit is not None:
            params["limit"] = limit
        answer = self._c.request("GET", f"/v1/queries/{job_id}", params=params)
        return SearchResult.from_json(answer)

    def wait_query(self, job_id: str, *, timeout: float = 120.0) -> SearchResult:
        """The query job once it has finished (done, failed, cancelled or expired)."""
        deadline = time.monotonic() + timeout
        while True:
            result = self.query(job_id)
            if result.finished:
                return result
            if time.monotonic() > deadline:
                raise WaitTimeout(f"query job {job_id} still {result.status} after {timeout}s")
            time.sleep(self._c.poll_seconds)

    def cancel_query(self, job_id: str) -> SearchResult | None:
        """Cancel a running query job (its state after), or delete a finished one (None)."""
        answer = self._c.request("DELETE", f"/v1/queries/{job_id}")
        return None if answer is None else SearchResult.from_json(answer)


def _document(doc: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(doc)
    if isinstance(out.get("image"), (bytes, Path)):
        out["image"] = encode_image(out["image"])
    return out


def _batches(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    if size < 1:
        raise ValueError("batch_size must be at least 1")
    iterator = iter(items)
    while batch := list(islice(iterator, size)):
        yield batch


def _backoff(error: ApiError, attempt: int) -> float:
    return error.retry_after if error.retry_after is not None else float(2**attempt)
