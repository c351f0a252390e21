"""Micro-batching across concurrent callers."""

from __future__ import annotations

import threading
import time

import pytest

from workers.batcher import MicroBatcher


def test_concurrent_requests_share_one_call() -> None:
    calls: list[list[int]] = []

    def square(items: list[int]) -> list[int]:
        calls.append(list(items))
        return [i * i for i in items]

    batcher = MicroBatcher(square, max_items=100, max_wait=0.2)
    results: dict[int, list[int]] = {}
    barrier = threading.Barrier(8)

    def client(n: int) -> None:
        barrier.wait()
        results[n] = batcher.submit([n, n + 100])

    threads = [threading.Thread(target=client, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == {n: [n * n, (n + 100) ** 2] for n in range(8)}
    assert len(calls) < 8  # fewer model calls than requests
    assert sum(len(c) for c in calls) == 16
    assert batcher.batch_sizes == [len(c) for c in calls]


def test_max_items_bounds_a_batch() -> None:
    sizes: list[int] = []
    gate = threading.Event()

    def run(items: list[int]) -> list[int]:
        gate.wait(5)
        sizes.append(len(items))
        return items

    batcher = MicroBatcher(run, max_items=3, max_wait=0.5)
    threads = [threading.Thread(target=batcher.submit, args=([i],)) for i in range(7)]
    for thread in threads:
        thread.start()
    time.sleep(0.2)
    gate.set()
    for thread in threads:
        thread.join()
    assert sum(sizes) == 7
    assert max(sizes) <= 3


def test_a_failure_reaches_every_waiting_request() -> None:
    def broken(items: list[int]) -> list[int]:
        raise ValueError("model exploded")

    batcher = MicroBatcher(broken, max_items=10, max_wait=0.01)
    with pytest.raises(ValueError, match="model exploded"):
        batcher.submit([1])
    # The batcher survives and serves the next request.
    batcher._run = lambda items: items
    assert batcher.submit([2, 3]) == [2, 3]


def test_empty_requests_return_at_once() -> None:
    batcher = MicroBatcher(lambda items: items, max_items=1, max_wait=1.0)
    assert batcher.submit([]) == []
