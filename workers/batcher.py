"""Micro-batching: requests that arrive together share one model call.

Worker threads (Celery's ``threads`` pool) submit lists of items and block; a batching
thread gathers what arrives within ``max_wait`` seconds (up to ``max_items`` items), runs
the model once on all of it, and hands each request its share. Only the batching threads
touch the model: one per model call allowed in flight (``runners``; two on a CPU,
where two single-threaded calls side by side outrun one call on two threads, and keep their
pace when another process takes a core). When a shared batch fails, each request runs
again alone, so only the request that caused the failure sees it.

Requests carry a priority (lower first): a query waiting is served before the next piece
of an ingestion chunk, and a batch holds requests of one priority only, so a query never
waits for more than a model call already running.

With ``arrivals``, the wait is only for company that is coming: tasks count themselves in
when they start and out once their request is queued, and a batch starts at once when no
other task is on its way. A lone query then pays no batching delay, and under load the
requests of the tasks already running still share a call.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


ARRIVAL_POLL = 0.0005  # seconds between looks at the arrivals while gathering


class Arrivals:
    """How many tasks are on their way to a batcher: started, request not yet queued."""

    def __init__(self) -> None:
        self._count = 0
        self._lock = threading.Lock()

    @contextmanager
    def coming(self) -> Iterator[Callable[[], None]]:
        """Counts the block in; the callable it gives (also called on leaving) counts it out."""
        with self._lock:
            self._count += 1
        left = False

        def arrived() -> None:
            nonlocal left
            if not left:
                left = True
                with self._lock:
                    self._count -= 1

        try:
            yield arrived
        finally:
            arrived()

    def __len__(self) -> int:
        return self._count


@dataclass(order=True)
class Request(Generic[T, R]):
    priority: int
    order: int
    items: list[T] = field(compare=False)
    future: Future[list[R]] = field(compare=False)


class MicroBatcher(Generic[T, R]):
    def __init__(
        self,
        run: Callable[[list[T]], Sequence[R]],
        *,
        max_items: int,
        max_wait: float,
        name: str = "batcher",
        on_batch: Callable[[int], None] | None = None,
        arrivals: Arrivals | None = None,
        runners: int = 1,
    ) -> None:
        if runners < 1:
            raise ValueError(f"runners must be at least 1, not {runners}")
        self._run = run
        self.max_items = max_items
        self.max_wait = max_wait
        self._arrivals = arrivals
        self._requests: queue.PriorityQueue[Request[T, R]] = queue.PriorityQueue()
        self._order = itertools.count()  # first come, first served within a priority
        self.batch_sizes: list[int] = []  # items per model call, for tests
        self._on_batch = on_batch
        self._threads = [
            threading.Thread(target=self._loop, name=f"{name}-{i}", daemon=True)
            for i in range(runners)
        ]
        for thread in self._threads:
            thread.start()

    def submit(
        self,
        items: Sequence[T],
        timeout: float | None = None,
        priority: int = 0,
        arrived: Callable[[], None] | None = None,
    ) -> list[R]:
        """Results for ``items``, in order, computed in a shared batch. ``arrived`` (from
        ``Arrivals.coming``) is called once the request is queued."""
        if not items:
            if arrived is not None:
                arrived()
            return []
        future: Future[list[R]] = Future()
        self._requests.put(Request(priority, next(self._order), list(items), future))
        if arrived is not None:
            arrived()
        try:
            return future.result(timeout=timeout)
        except FutureTimeout:
            raise TimeoutError(f"the model did not answer within {timeout} s") from None

    def _gather(self) -> list[tuple[list[T], Future[list[R]]]]:
        first = self._requests.get()
        batch = [(first.items, first.future)]
        count = len(first.items)
        deadline = time.monotonic() + self.max_wait
        while count < self.max_items:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            if self._arrivals is not None:
                if not len(self._arrivals) and self._requests.empty():
                    break  # nobody else is coming
                remaining = min(remaining, ARRIVAL_POLL)
            try:
                request = self._requests.get(timeout=remaining)
            except queue.Empty:
                continue
            if request.priority != first.priority:  # its own batch, after this one
                self._requests.put(request)
                break
            batch.append((request.items, request.future))
            count += len(request.items)
        return batch

    def _loop(self) -> None:
        while True:
            batch = self._gather()
            items = [item for request_items, _ in batch for item in request_items]
            try:
                results = self._call(items)
            except BaseException as exc:
                if len(batch) == 1:
                    batch[0][1].set_exception(exc)
                    continue
                log.warning(
                    "a batch of %d requests failed (%s); running each alone", len(batch), exc
                )
                for request_items, future in batch:
                    self._run_alone(request_items, future)
                continue
            log.debug("batch of %d items from %d requests", len(items), len(batch))
            start = 0
            for request_items, future in batch:
                future.set_result(results[start : start + len(request_items)])
                start += len(request_items)

    def _run_alone(self, items: list[T], future: Future[list[R]]) -> None:
        try:
            future.set_result(self._call(items))
        except BaseException as exc:
            future.set_exception(exc)

    def _call(self, items: list[T]) -> list[R]:
        results = list(self._run(items))
        if len(results) != len(items):
            raise RuntimeError(f"batch of {len(items)} gave {len(results)} results")
        self.batch_sizes.append(len(items))
        if self._on_batch is not None:
            self._on_batch(len(items))
        return results
