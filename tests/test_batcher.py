"""Micro-batching across concurrent callers."""

from __future__ import annotations

import threading
import time

import pytest

from workers.batcher import Arrivals, MicroBatcher


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


def test_a_poison_request_fails_alone() -> None:
    """One request that breaks the shared batch must not fail the others in it."""
    calls: list[list[int]] = []

    def run(items: list[int]) -> list[int]:
        calls.append(list(items))
        if -1 in items:
            raise ValueError("cannot embed -1")
        return [i * 10 for i in items]

    batcher = MicroBatcher(run, max_items=100, max_wait=0.3)
    outcomes: dict[int, object] = {}
    barrier = threading.Barrier(9)

    def client(n: int) -> None:
        barrier.wait()
        try:
            outcomes[n] = batcher.submit([n, n + 1] if n >= 0 else [5, -1])
        except ValueError as exc:
            outcomes[n] = exc

    threads = [threading.Thread(target=client, args=(n,)) for n in [-1, *range(0, 16, 2)]]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert isinstance(outcomes.pop(-1), ValueError)
    assert outcomes == {n: [n * 10, (n + 1) * 10] for n in range(0, 16, 2)}
    assert any(len(c) > 2 for c in calls)  # they did share a batch first


def test_empty_requests_return_at_once() -> None:
    batcher = MicroBatcher(lambda items: items, max_items=1, max_wait=1.0)
    assert batcher.submit([]) == []


def test_waiting_queries_go_before_the_next_ingestion_piece() -> None:
    """Priority 0 (queries) is served before priority 1 (ingestion pieces), and a batch
    never mixes the two."""
    calls: list[list[str]] = []
    gate = threading.Event()

    def run(items: list[str]) -> list[str]:
        if not calls:
            gate.wait(5)  # the first call holds the model while the rest queue up
        calls.append(list(items))
        return items

    batcher = MicroBatcher(run, max_items=100, max_wait=0.05)
    first = threading.Thread(target=batcher.submit, args=(["piece-0"],), kwargs={"priority": 1})
    first.start()
    time.sleep(0.2)
    threads = [
        threading.Thread(target=batcher.submit, args=([f"piece-{n}"],), kwargs={"priority": 1})
        for n in (1, 2)
    ]
    threads += [threading.Thread(target=batcher.submit, args=([f"query-{n}"],)) for n in (1, 2)]
    for thread in threads:
        thread.start()
        time.sleep(0.02)
    gate.set()
    for thread in [first, *threads]:
        thread.join()
    assert calls[0] == ["piece-0"]
    assert sorted(calls[1]) == ["query-1", "query-2"]  # the queries, together, next
    assert sorted(item for call in calls[2:] for item in call) == ["piece-1", "piece-2"]


def test_a_lone_request_with_nobody_coming_runs_without_the_wait() -> None:
    """With arrivals, a request that no other task is on its way to join starts its call at
    once, however long ``max_wait`` is; without them it waits the whole window."""
    for arrivals, slowest in ((Arrivals(), 0.3), (None, None)):
        batcher = MicroBatcher(lambda items: items, max_items=10, max_wait=1.0, arrivals=arrivals)
        with (arrivals or Arrivals()).coming() as arrived:
            t0 = time.monotonic()
            assert batcher.submit(["alone"], arrived=arrived) == ["alone"]
            took = time.monotonic() - t0
        if slowest is not None:
            assert took < slowest
        else:
            assert took >= 0.9


def test_a_batch_waits_for_a_task_on_its_way_and_takes_it_along() -> None:
    """A task counted in (started, its request not queued yet) keeps the batch open, up to
    ``max_wait``: its request joins the call of the one already queued."""
    calls: list[list[str]] = []

    def run(items: list[str]) -> list[str]:
        calls.append(list(items))
        return items

    arrivals = Arrivals()
    batcher = MicroBatcher(run, max_items=10, max_wait=2.0, arrivals=arrivals)
    late_started = threading.Event()

    def late_task() -> None:
        with arrivals.coming() as arrived:
            late_started.set()
            time.sleep(0.2)  # reads its job, say, before it needs the model
            batcher.submit(["late"], arrived=arrived)

    thread = threading.Thread(target=late_task)
    thread.start()
    late_started.wait(5)
    with arrivals.coming() as arrived:
        t0 = time.monotonic()
        batcher.submit(["early"], arrived=arrived)
        took = time.monotonic() - t0
    thread.join()
    assert calls == [["early", "late"]]
    assert 0.15 < took < 1.5  # it waited for the late task, not the whole window
    assert len(arrivals) == 0


def test_arrivals_count_a_task_out_once_however_it_leaves() -> None:
    arrivals = Arrivals()
    with arrivals.coming() as arrived:
        assert len(arrivals) == 1
        arrived()
        arrived()  # a second call changes nothing
        assert len(arrivals) == 0
    assert len(arrivals) == 0

    def failing_step() -> None:
        with arrivals.coming():
            raise RuntimeError("the step failed")

    with pytest.raises(RuntimeError):
        failing_step()
    assert len(arrivals) == 0
    with arrivals.coming(), arrivals.coming():
        assert len(arrivals) == 2
    assert len(arrivals) == 0


@pytest.mark.parametrize("runners", [1, 2])
def test_runners_run_that_many_model_calls_side_by_side(runners: int) -> None:
    """Two requests that can only finish together (each call waits for the other) both
    finish with two runners; with one, the first call waits alone until its barrier breaks."""
    barrier = threading.Barrier(2, timeout=1.0)

    def meet(items: list[int]) -> list[int]:
        barrier.wait()
        return items

    batcher = MicroBatcher(meet, max_items=1, max_wait=0.0, runners=runners)
    outcomes: list[object] = []

    def client(n: int) -> None:
        try:
            outcomes.append(batcher.submit([n], timeout=5))
        except threading.BrokenBarrierError as exc:
            outcomes.append(exc)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if runners == 2:
        assert sorted(outcomes) == [[0], [1]]  # type: ignore[type-var]
    else:
        assert any(isinstance(outcome, threading.BrokenBarrierError) for outcome in outcomes)


def test_runners_and_concurrent_calls_must_be_at_least_one() -> None:
    from recall.embedder import EmbedderConfig
    from rerank import RerankerConfig

    with pytest.raises(ValueError, match="runners"):
        MicroBatcher(lambda items: items, max_items=1, max_wait=0.0, runners=0)
    for config in (EmbedderConfig, RerankerConfig):
        with pytest.raises(ValueError, match="concurrent_calls"):
            config(concurrent_calls=0)


@pytest.mark.parametrize(
    ("configured", "torch_threads", "runners", "threads"),
    [(0, 0, "default", "shared"), (1, 0, 1, "shared"), (3, 5, 3, 5)],
)
def test_a_cpu_worker_runs_two_model_calls_side_by_side_on_half_the_cores_each(
    monkeypatch: pytest.MonkeyPatch,
    configured: int,
    torch_threads: int,
    runners: int | str,
    threads: int | str,
) -> None:
    """``UMARVEL_MODEL_RUNNERS=0`` is two runners on a CPU (one with a single core), and
    torch's threads default to the cores shared among them; both settings win when given."""
    import os

    import torch

    from core.settings import Settings
    from workers.runtime import CPU_RUNNERS, Runtime

    cores = len(os.sched_getaffinity(0))
    settings = Settings(device="cpu", model_runners=configured, torch_threads=torch_threads)
    rt = Runtime(settings)
    assert rt.runners == (min(CPU_RUNNERS, cores) if runners == "default" else runners)
    expected = max(1, cores // rt.runners) if threads == "shared" else threads
    assert rt.torch_threads == expected
    chosen: list[int] = []
    monkeypatch.setattr(torch, "set_num_threads", chosen.append)
    rt._threads()
    assert chosen == [expected]
