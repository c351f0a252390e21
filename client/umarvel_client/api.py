"""``Client``: the umarvel-search HTTP API from Python, with blocking calls.

    from umarvel_client import Client

    with Client("http://127.0.0.1:8000", key) as api:
        api.collections.create("photos", metadata_fields={"year": "int"})
        api.documents.ingest("photos", [{"id": "a", "image": Path("a.jpg")}], progress=print)
        for hit in api.search("photos", text="a red car", top_k=5).hits:
            print(hit.rank, hit.document_id, hit.score)

Answers come back as the dataclasses of ``umarvel_client.types``; error answers as the
exceptions of ``umarvel_client.errors``. ``429`` and ``503`` are retried after the server's
``Retry-After``; a connection error (refused, reset or closed before an answer) is retried
after a short backoff, but only for a request that is safe to send twice: a GET, PUT or
DELETE, and a search (the server answers a repeated query from its cache or from the job
already running it). Creating a collection, a PATCH, a reindex and an ingestion batch are
never sent twice after a connection error: ``ConnectionFailed`` says that their outcome is
unknown. Retries of either kind count against ``retries`` together, each wait capped at
``max_retry_wait``. A search or an ingestion waits for its job unless told not to.

``umarvel_client.aio.AsyncClient`` has the same methods as coroutines; both carry out the
requests written once in ``umarvel_client._flows``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from types import TracebackType
from typing import Any, Self, TypeVar, Unpack

import httpx

from umarvel_client import _flows
from umarvel_client._flows import (
    USER_AGENT,
    Flow,
    ImageLike,
    Outcome,
    Output,
    ProgressCallback,
    Request,
    SearchOptions,
    Sleep,
    encode_image,
)
from umarvel_client._version import __version__
from umarvel_client.types import (
    Collection,
    Document,
    DocumentPage,
    Facets,
    IngestJob,
    IngestSummary,
    SearchResult,
)

__all__ = [
    "USER_AGENT",
    "Client",
    "Collections",
    "Documents",
    "ImageLike",
    "Jobs",
    "ProgressCallback",
    "__version__",
    "encode_image",
]

T = TypeVar("T")


class Client:
    """One API, one key, one pool of connections (an ``httpx.Client``). Thread-safe for reads.

    ``timeout``: seconds for each request (to connect, and between bytes of the answer).
    ``retries``: how many times a request is sent again after a ``429``, a ``503`` or,
    if it is safe to send twice, a connection error (see the module's docstring).
    ``session``: an ``httpx.Client`` to send through instead of a pool of the client's own;
    it stays yours to close.

    ``with Client(...) as api:`` closes the pool at the end, as ``close()`` does.
    """

    def __init__(
        self,
        url: str,
        key: str | None = None,
        *,
        timeout: float = 60.0,
        retries: int = 5,
        max_retry_wait: float = 30.0,
        poll_seconds: float = 0.2,
        session: httpx.Client | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.headers = _flows.headers(key)
        self.timeout = timeout
        self.retries = retries
        self.max_retry_wait = max_retry_wait
        self.poll_seconds = poll_seconds
        self.http = session if session is not None else httpx.Client()
        self._owns_http = session is None
        self.collections = Collections(self)
        self.documents = Documents(self)
        self.jobs = Jobs(self)

    def close(self) -> None:
        """Close the client's pool of connections (not a ``session`` passed in)."""
        if self._owns_http:
            self.http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def request(
        self, method: str, path: str, *, params: Mapping[str, Any] | None = None, json: Any = None
    ) -> Any:
        """The parsed JSON of a successful answer (None for 204); raises ``ApiError``."""
        return self._run(_flows.call(self, Request(method, path, params=params, json=json)))

    def health(self) -> dict[str, Any]:
        """``/statusz``: whether SQL, Redis and a warm worker per queue answer; its body,
        ``status`` ``ready`` or ``not_ready`` alike."""
        return self._run(_flows.health(self))

    def search(
        self,
        collection: str,
        *,
        until_done: bool = True,
        timeout: float = 120.0,
        **options: Unpack[SearchOptions],
    ) -> SearchResult:
        """Search a collection by text, image or both (a composed query), a video, or by
        stored documents (``like``, and away from ``unlike``; excluded from the results
        unless ``include_examples``). ``candidates="video"``: a text query for videos, in
        U-MARVEL's text-to-video prompt; a video hit's ``segment`` is its best time span.

        ``mode``: ``dense``, ``keyword`` or ``hybrid`` (``None``: the collection's default);
        ``fusion``: for hybrid, ``{"method": "rrf" | "weighted", "k", "keyword_weight"}``.
        ``offset`` and ``top_k``: the page of the ranking. ``group_by``: a declared metadata
        field, keeping at most ``group_size`` hits per value.
        ``rerank``: ``True``/``False``, or ``{"enabled", "k", "weight"}``; ``None`` keeps the
        collection's defaults. ``wait``: seconds the server waits before answering with a
        running job (its default when ``None``). With ``until_done`` the job is then polled
        until it finishes (at most ``timeout`` seconds); else a running job comes back as
        it is, ``partial`` results included.
        """
        request = _flows.search_request(collection, options)
        return self._run(_flows.search(self, request, until_done=until_done, timeout=timeout))

    def _run(self, flow: Flow[T]) -> T:
        """Carry out a flow of ``umarvel_client._flows`` with blocking I/O."""
        outcome: Any = None
        while True:
            try:
                step = flow.send(outcome)
            except StopIteration as done:
                return done.value
            if isinstance(step, Sleep):
                time.sleep(step.seconds)
                outcome = None
            else:
                outcome = self._send(step)

    def _send(self, request: Request) -> Outcome:
        try:
            built = _flows.http_request(self.http, self, request)
            if request.sink is None:
                return self.http.send(built)
            response = self.http.send(built, stream=True)
            try:
                if response.status_code >= 400:
                    response.read()  # an error's envelope, read as any answer is
                else:
                    for chunk in response.iter_bytes():
                        request.sink.write(chunk)
            finally:
                response.close()
            return response
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            return exc


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
        search_mode: str | None = None,
    ) -> Collection:
        """``rerank``: ``{"enabled", "k", "weight"}`` defaults; ``metadata_fields``: name to
        ``int``, ``float``, ``str`` or ``bool``."""
        return self._c._run(
            _flows.create_collection(
                self._c,
                name,
                description=description,
                recall_model=recall_model,
                rerank=rerank,
                metadata_fields=metadata_fields,
                search_mode=search_mode,
            )
        )

    def list(self) -> list[Collection]:
        return self._c._run(_flows.list_collections(self._c))

    def get(self, name: str) -> Collection:
        return self._c._run(_flows.get_collection(self._c, name))

    def patch(
        self,
        name: str,
        *,
        description: str | None = None,
        rerank: Mapping[str, Any] | None = None,
        search_mode: str | None = None,
    ) -> Collection:
        flow = _flows.patch_collection(
            self._c, name, description=description, rerank=rerank, search_mode=search_mode
        )
        return self._c._run(flow)

    def delete(self, name: str) -> None:
        self._c._run(_flows.delete_collection(self._c, name))

    def reindex(
        self, name: str, *, recall_model: str | None = None, wait: bool = False, **kw: Any
    ) -> IngestJob:
        """Start re-embedding every document into a new generation; ``wait`` follows it
        (``kw``: those of ``Jobs.wait_ingest``)."""
        flow = _flows.reindex(self._c, name, recall_model=recall_model, wait=wait, **kw)
        return self._c._run(flow)


class Documents:
    def __init__(self, client: Client) -> None:
        self._c = client

    def submit(self, collection: str, documents: Iterable[Mapping[str, Any]]) -> IngestJob:
        """One batch, accepted as one ingestion job (documents are upserted by id).

        A document is ``{"id", "text", "image", "metadata"}``; ``image`` may be bytes or a
        path (sent as base64), or use ``image_path`` for a file inside the server's
        ``UMARVEL_INGEST_ROOTS``. Videos (and other kinds) go in ``media``:
        ``[{"kind": "video", "data": Path("clip.mp4")}]`` (bytes or a path, sent as
        base64) or ``{"kind": "video", "path": "/server/clip.mp4"}``.
        """
        return self._c._run(_flows.submit(self._c, collection, documents))

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
        flow = _flows.ingest(
            self._c,
            collection,
            documents,
            batch_size=batch_size,
            progress=progress,
            wait=wait,
            timeout=timeout,
        )
        return self._c._run(flow)

    def get(self, collection: str, document_id: str) -> Document:
        return self._c._run(_flows.get_document(self._c, collection, document_id))

    def delete(self, collection: str, document_id: str) -> None:
        self._c._run(_flows.delete_document(self._c, collection, document_id))

    def delete_where(self, collection: str, filter: Mapping[str, Any]) -> int:
        """Delete every document whose metadata matches ``filter``; how many went."""
        return self._c._run(_flows.delete_where(self._c, collection, filter))

    def list(
        self,
        collection: str,
        *,
        filter: Mapping[str, Any] | None = None,
        status: str | None = None,
        cursor: str | None = None,
        limit: int | None = None,
    ) -> DocumentPage:
        """One page of the documents whose metadata matches ``filter`` (and whose state is
        ``status``: pending, indexed or failed), in the order the server keeps them.
        ``limit``: at most 1,000 (the server's default, 100, when None); ``cursor``: the
        previous page's ``next_cursor``."""
        flow = _flows.list_documents(
            self._c, collection, filter=filter, status=status, cursor=cursor, limit=limit
        )
        return self._c._run(flow)

    def iter_documents(
        self,
        collection: str,
        *,
        filter: Mapping[str, Any] | None = None,
        status: str | None = None,
        page_size: int | None = None,
    ) -> Iterator[Document]:
        """Every matching document, a page (``page_size``) fetched at a time, as it is
        needed. A document there from the first page to the last comes exactly once, whatever
        is added or deleted meanwhile."""
        cursor: str | None = None
        while True:
            page = self.list(
                collection, filter=filter, status=status, cursor=cursor, limit=page_size
            )
            yield from page.documents
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    def facets(
        self,
        collection: str,
        field: str,
        *,
        filter: Mapping[str, Any] | None = None,
        status: str | None = None,
        limit: int | None = None,
    ) -> Facets:
        """How many matching documents hold each value of the declared metadata ``field``,
        the most frequent first (at most ``limit``; 100 when None), and how many hold none."""
        flow = _flows.facets(self._c, collection, field, filter=filter, status=status, limit=limit)
        return self._c._run(flow)

    def export(
        self,
        collection: str,
        out: Output,
        *,
        filter: Mapping[str, Any] | None = None,
        status: str | None = None,
        media: str = "urls",
    ) -> int:
        """Write every matching document to ``out`` (a path, or a binary or text stream) as
        JSONL, as it arrives, in the shape ``ingest`` and the ingestion endpoint take;
        returns how many. ``media``: ``urls`` (parts as their URLs) or ``inline`` (their
        bytes as base64, so that each line can be ingested again as it is). Not sent again
        once lines have arrived: after ``ConnectionFailed`` ``out`` holds what came."""
        with _flows.sink_for(out) as sink:
            flow = _flows.export(
                self._c, collection, sink, filter=filter, status=status, media=media
            )
            return self._c._run(flow)


class Jobs:
    def __init__(self, client: Client) -> None:
        self._c = client

    def ingest_job(self, job_id: str) -> IngestJob:
        return self._c._run(_flows.ingest_job(self._c, job_id))

    def wait_ingest(
        self,
        job_id: str,
        *,
        timeout: float | None = None,
        progress: Callable[[IngestJob], None] | None = None,
    ) -> IngestJob:
        """The ingestion (or reindex) job once it has finished."""
        flow = _flows.wait_ingest(self._c, job_id, timeout=timeout, progress=progress)
        return self._c._run(flow)

    def query(self, job_id: str, *, offset: int = 0, limit: int | None = None) -> SearchResult:
        return self._c._run(_flows.query(self._c, job_id, offset=offset, limit=limit))

    def wait_query(self, job_id: str, *, timeout: float = 120.0) -> SearchResult:
        """The query job once it has finished (done, failed, cancelled or expired)."""
        return self._c._run(_flows.wait_query(self._c, job_id, timeout=timeout))

    def cancel_query(self, job_id: str) -> SearchResult | None:
        """Cancel a running query job (its state after), or delete a finished one (None)."""
        return self._c._run(_flows.cancel_query(self._c, job_id))
