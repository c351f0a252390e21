"""``AsyncClient``: the methods of ``umarvel_client.Client`` as coroutines, for asyncio.

    from umarvel_client import AsyncClient

    async with AsyncClient("http://127.0.0.1:8000", key) as api:
        result = await api.search("photos", text="a red car", top_k=5)
        summary = await api.documents.ingest("photos", docs, progress=print)

The same requests, retries, polling and answers as ``Client`` (both carry out the flows of
``umarvel_client._flows``; see ``umarvel_client.api`` for what is retried): only the I/O
differs. Waits between polls and retries are ``asyncio.sleep``; a ``progress`` callback is
still a plain function, and image files are read as ``Client`` reads them.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from types import TracebackType
from typing import Any, Self, TypeVar, Unpack

import httpx

from umarvel_client import _flows
from umarvel_client._flows import (
    Flow,
    Outcome,
    Output,
    ProgressCallback,
    Request,
    SearchOptions,
    Sleep,
)
from umarvel_client.types import (
    Collection,
    Document,
    DocumentPage,
    Facets,
    IngestJob,
    IngestSummary,
    SearchResult,
)

__all__ = ["AsyncClient", "AsyncCollections", "AsyncDocuments", "AsyncJobs"]

T = TypeVar("T")


class AsyncClient:
    """One API, one key, one pool of connections (an ``httpx.AsyncClient``).

    The arguments are ``Client``'s; ``session`` is an ``httpx.AsyncClient`` (yours to
    close). ``async with AsyncClient(...) as api:`` closes the pool at the end, as
    ``await api.aclose()`` does.
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
        session: httpx.AsyncClient | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.headers = _flows.headers(key)
        self.timeout = timeout
        self.retries = retries
        self.max_retry_wait = max_retry_wait
        self.poll_seconds = poll_seconds
        self.http = session if session is not None else httpx.AsyncClient()
        self._owns_http = session is None
        self.collections = AsyncCollections(self)
        self.documents = AsyncDocuments(self)
        self.jobs = AsyncJobs(self)

    async def aclose(self) -> None:
        """Close the client's pool of connections (not a ``session`` passed in)."""
        if self._owns_http:
            await self.http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def request(
        self, method: str, path: str, *, params: Mapping[str, Any] | None = None, json: Any = None
    ) -> Any:
        """The parsed JSON of a successful answer (None for 204); raises ``ApiError``."""
        request = Request(method, path, params=params, json=json)
        return await self._run(_flows.call(self, request))

    async def health(self) -> dict[str, Any]:
        """``/statusz``: whether SQL, Redis and a warm worker per queue answer; its body,
        ``status`` ``ready`` or ``not_ready`` alike."""
        return await self._run(_flows.health(self))

    async def search(
        self,
        collection: str,
        *,
        until_done: bool = True,
        timeout: float = 120.0,
        **options: Unpack[SearchOptions],
    ) -> SearchResult:
        """Search a collection by text, image or both: see ``Client.search``."""
        request = _flows.search_request(collection, options)
        flow = _flows.search(self, request, until_done=until_done, timeout=timeout)
        return await self._run(flow)

    async def _run(self, flow: Flow[T]) -> T:
        """Carry out a flow of ``umarvel_client._flows`` with asyncio."""
        outcome: Any = None
        while True:
            try:
                step = flow.send(outcome)
            except StopIteration as done:
                return done.value
            if isinstance(step, Sleep):
                await asyncio.sleep(step.seconds)
                outcome = None
            else:
                outcome = await self._send(step)

    async def _send(self, request: Request) -> Outcome:
        try:
            built = _flows.http_request(self.http, self, request)
            if request.sink is None:
                return await self.http.send(built)
            response = await self.http.send(built, stream=True)
            try:
                if response.status_code >= 400:
                    await response.aread()  # an error's envelope, read as any answer is
                else:
                    async for chunk in response.aiter_bytes():
                        request.sink.write(chunk)
            finally:
                await response.aclose()
            return response
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            return exc


class AsyncCollections:
    def __init__(self, client: AsyncClient) -> None:
        self._c = client

    async def create(
        self,
        name: str,
        *,
        description: str = "",
        recall_model: str | None = None,
        rerank: Mapping[str, Any] | None = None,
        metadata_fields: Mapping[str, str] | None = None,
        search_mode: str | None = None,
    ) -> Collection:
        """See ``Collections.create``."""
        return await self._c._run(
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

    async def list(self) -> list[Collection]:
        return await self._c._run(_flows.list_collections(self._c))

    async def get(self, name: str) -> Collection:
        return await self._c._run(_flows.get_collection(self._c, name))

    async def patch(
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
        return await self._c._run(flow)

    async def delete(self, name: str) -> None:
        await self._c._run(_flows.delete_collection(self._c, name))

    async def reindex(
        self, name: str, *, recall_model: str | None = None, wait: bool = False, **kw: Any
    ) -> IngestJob:
        """See ``Collections.reindex``."""
        flow = _flows.reindex(self._c, name, recall_model=recall_model, wait=wait, **kw)
        return await self._c._run(flow)


class AsyncDocuments:
    def __init__(self, client: AsyncClient) -> None:
        self._c = client

    async def submit(self, collection: str, documents: Iterable[Mapping[str, Any]]) -> IngestJob:
        """One batch, accepted as one ingestion job: see ``Documents.submit``."""
        return await self._c._run(_flows.submit(self._c, collection, documents))

    async def ingest(
        self,
        collection: str,
        documents: Iterable[Mapping[str, Any]],
        *,
        batch_size: int = 256,
        progress: ProgressCallback | None = None,
        wait: bool = True,
        timeout: float | None = None,
    ) -> IngestSummary:
        """Send ``documents`` in batches and follow the jobs: see ``Documents.ingest``."""
        flow = _flows.ingest(
            self._c,
            collection,
            documents,
            batch_size=batch_size,
            progress=progress,
            wait=wait,
            timeout=timeout,
        )
        return await self._c._run(flow)

    async def get(self, collection: str, document_id: str) -> Document:
        return await self._c._run(_flows.get_document(self._c, collection, document_id))

    async def delete(self, collection: str, document_id: str) -> None:
        await self._c._run(_flows.delete_document(self._c, collection, document_id))

    async def delete_where(self, collection: str, filter: Mapping[str, Any]) -> int:
        """Delete every document whose metadata matches ``filter``; how many went."""
        return await self._c._run(_flows.delete_where(self._c, collection, filter))

    async def list(
        self,
        collection: str,
        *,
        filter: Mapping[str, Any] | None = None,
        status: str | None = None,
        cursor: str | None = None,
        limit: int | None = None,
    ) -> DocumentPage:
        """One page of the matching documents: see ``Documents.list``."""
        flow = _flows.list_documents(
            self._c, collection, filter=filter, status=status, cursor=cursor, limit=limit
        )
        return await self._c._run(flow)

    async def iter_documents(
        self,
        collection: str,
        *,
        filter: Mapping[str, Any] | None = None,
        status: str | None = None,
        page_size: int | None = None,
    ) -> AsyncIterator[Document]:
        """Every matching document, a page at a time (``async for``): see
        ``Documents.iter_documents``."""
        cursor: str | None = None
        while True:
            page = await self.list(
                collection, filter=filter, status=status, cursor=cursor, limit=page_size
            )
            for document in page.documents:
                yield document
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    async def facets(
        self,
        collection: str,
        field: str,
        *,
        filter: Mapping[str, Any] | None = None,
        status: str | None = None,
        limit: int | None = None,
    ) -> Facets:
        """Counts per value of a declared field: see ``Documents.facets``."""
        flow = _flows.facets(self._c, collection, field, filter=filter, status=status, limit=limit)
        return await self._c._run(flow)

    async def export(
        self,
        collection: str,
        out: Output,
        *,
        filter: Mapping[str, Any] | None = None,
        status: str | None = None,
        media: str = "urls",
    ) -> int:
        """Every matching document to ``out`` as JSONL: see ``Documents.export``. Writes
        to ``out`` are plain blocking writes, as ``Client`` makes them."""
        with _flows.sink_for(out) as sink:
            flow = _flows.export(
                self._c, collection, sink, filter=filter, status=status, media=media
            )
            return await self._c._run(flow)


class AsyncJobs:
    def __init__(self, client: AsyncClient) -> None:
        self._c = client

    async def ingest_job(self, job_id: str) -> IngestJob:
        return await self._c._run(_flows.ingest_job(self._c, job_id))

    async def wait_ingest(
        self,
        job_id: str,
        *,
        timeout: float | None = None,
        progress: Callable[[IngestJob], None] | None = None,
    ) -> IngestJob:
        """The ingestion (or reindex) job once it has finished."""
        flow = _flows.wait_ingest(self._c, job_id, timeout=timeout, progress=progress)
        return await self._c._run(flow)

    async def query(
        self, job_id: str, *, offset: int = 0, limit: int | None = None
    ) -> SearchResult:
        return await self._c._run(_flows.query(self._c, job_id, offset=offset, limit=limit))

    async def wait_query(self, job_id: str, *, timeout: float = 120.0) -> SearchResult:
        """The query job once it has finished (done, failed, cancelled or expired)."""
        return await self._c._run(_flows.wait_query(self._c, job_id, timeout=timeout))

    async def cancel_query(self, job_id: str) -> SearchResult | None:
        """Cancel a running query job (its state after), or delete a finished one (None)."""
        return await self._c._run(_flows.cancel_query(self._c, job_id))
