"""Search latency of a Milvus server (HNSW, COSINE) against exact search, as users meet it.

    python -m bench.search [--server lite|standalone | --uri URI] [--sizes 10000 100000]
                           [--dim 64] [--data random clustered] [--queries 50] [--settle 30]
                           [--ef 64] [--consistency LastWrite Strong Bounded]

For each collection size and kind of data: insert unit vectors through the adapter, flush,
then time top-10 searches through ``MilvusIndex.search`` twice: at once (the server may
still be building its index and compacting, as right after an ingestion) and again after
``--settle`` seconds of idleness. Each is set against an exact numpy search of the same
vectors, with recall@10 against the exact answer. ``random``: independent Gaussian
directions; ``clustered``: 100 tight clusters, where nearest neighbours are many and close.
Each ``--consistency`` (all three by default) searches the same collection, probe by probe
in turn, so that their figures are side by side; ``LastWrite`` searches are given the
timestamp of the insert's last write, as a query step is given the one recorded in Redis.
Prints p50/p95 of each phase, the ratios, and the largest size still interactive (settled
p50 <= 100 ms). ``--server`` starts milvus-lite (the embedded default) or the PyPI
``milvus`` standalone; ``--uri`` uses a server already running.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from cli.stack import MilvusStandalone, Stack, free_port
from recall.index import LAST_WRITE, SEARCH_EF, STRONG, MilvusIndex

INTERACTIVE_MS = 100.0
CLUSTERS = 100
CONSISTENCIES = [LAST_WRITE, STRONG, "Bounded"]


def vectors_of(kind: str, rows: int, dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "clustered":
        centres = rng.normal(size=(CLUSTERS, dim))
        v = centres[rng.integers(0, CLUSTERS, rows)] + 0.15 * rng.normal(size=(rows, dim))
    else:
        v = rng.normal(size=(rows, dim))
    v = v.astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[int(0.95 * (len(ordered) - 1))]


Phase = dict[str, dict[str, float]]  # consistency -> p50, p95, exact_p50, recall


def _phase(
    indexes: dict[str, MilvusIndex],
    name: str,
    vectors: np.ndarray,
    probes: np.ndarray,
    ef: int | None,
    written: int | None,
) -> Phase:
    """Each probe searched with each consistency in turn, each probe starting with the next
    one (so that none always follows the exact search, or a Strong search's wait)."""
    milvus_ms: dict[str, list[float]] = {mode: [] for mode in indexes}
    recalls: dict[str, list[float]] = {mode: [] for mode in indexes}
    exact_ms = []
    modes = list(indexes)
    for turn, probe in enumerate(probes):
        t0 = time.perf_counter()
        exact = set(np.argpartition(-(vectors @ probe), 10)[:10].tolist())
        exact_ms.append((time.perf_counter() - t0) * 1000)
        for mode in modes[turn % len(modes) :] + modes[: turn % len(modes)]:
            index = indexes[mode]
            t1 = time.perf_counter()
            hits = index.search(name, probe, 10, ef=ef, written_at=written)
            milvus_ms[mode].append((time.perf_counter() - t1) * 1000)
            recalls[mode].append(len({int(h.document_id) for h in hits} & exact) / 10)
    e50, _ = _percentiles(exact_ms)
    phase: Phase = {}
    for mode in indexes:
        m50, m95 = _percentiles(milvus_ms[mode])
        recall = statistics.mean(recalls[mode])
        phase[mode] = {"p50": m50, "p95": m95, "exact_p50": e50, "recall": recall}
    return phase


def bench_size(
    indexes: dict[str, MilvusIndex],
    size: int,
    dim: int,
    kind: str,
    queries: int,
    settle: float,
    ef: int | None = None,
) -> tuple[float, Phase, Phase]:
    """(insert seconds, searches at once, searches after ``settle`` idle seconds), each
    phase by consistency."""
    index = next(iter(indexes.values()))
    name = f"bench_{kind}_{size}_{dim}"
    if index.exists(name):
        index.drop(name)
    vectors = vectors_of(kind, size, dim, seed=size)
    index.create(name, dim)
    started = time.perf_counter()
    step = max(1, min(5000, 2_000_000 // dim))  # rows per upsert: a few MB per call
    written: int | None = None
    for start in range(0, size, step):
        rows = [
            {"id": str(i), "vector": vectors[i].tolist()}
            for i in range(start, min(size, start + step))
        ]
        written = index.upsert(name, rows)  # a later write's timestamp is never lower
    index.flush(name)
    load_seconds = time.perf_counter() - started
    probes = vectors_of(kind, queries, dim, seed=size + 1)
    for each in indexes.values():
        each.search(name, probes[0], 10)  # loads the collection
    fresh = _phase(indexes, name, vectors, probes, ef, written)
    time.sleep(settle)
    settled = _phase(indexes, name, vectors, probes, ef, written)
    index.drop(name)
    return load_seconds, fresh, settled


@contextlib.contextmanager
def server(kind: str, uri: str | None) -> Iterator[tuple[str, str]]:
    """(uri, description) of the server to measure; started and stopped here unless given."""
    if uri is not None:
        yield uri, f"the server at {uri}"
        return
    with tempfile.TemporaryDirectory() as tmp:
        if kind == "standalone":
            with MilvusStandalone(Path(tmp) / "standalone") as standalone:
                yield standalone.uri, "Milvus standalone 2.3.5 (PyPI milvus)"
            return
        port = free_port()
        stack = Stack(Path(tmp), {"UMARVEL_MILVUS_URI": f"http://127.0.0.1:{port}"})
        stack.start_milvus_only()
        try:
            yield f"http://127.0.0.1:{port}", "milvus-lite server (the embedded default)"
        finally:
            stack.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--server", choices=["lite", "standalone"], default="lite")
    parser.add_argument("--uri", default=None, help="a running server instead of --server")
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--data", nargs="+", choices=["random", "clustered"], default=["random"])
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--settle", type=float, default=30.0, help="idle seconds before phase 2")
    parser.add_argument("--ef", type=int, default=None, help=f"HNSW search ef (>= {SEARCH_EF})")
    parser.add_argument(
        "--consistency",
        nargs="+",
        choices=CONSISTENCIES,
        default=CONSISTENCIES,
        help="of searches, each measured side by side",
    )
    args = parser.parse_args()
    modes = list(dict.fromkeys(args.consistency))
    with server(args.server, args.uri) as (uri, described):
        indexes = {mode: MilvusIndex(uri, timeout=600, search_consistency=mode) for mode in modes}
        ef = max(args.ef or 0, 10, SEARCH_EF)
        print(f"{described}, HNSW M=16 efConstruction=200, ef={ef}, dim {args.dim}, top 10")
        print(
            f"{'data':>9} {'size':>8} {'consistency':>11} {'insert s':>8} "
            f"{'at once p50/p95':>16} {'settled p50/p95':>16} {'exact p50':>9} "
            f"{'settled ratio':>13} {'recall@10':>9}"
        )
        interactive = 0
        for kind in args.data:
            for size in args.sizes:
                load, fresh, settled = bench_size(
                    indexes, size, args.dim, kind, args.queries, args.settle, args.ef
                )
                for mode in modes:
                    now, later = fresh[mode], settled[mode]
                    print(
                        f"{kind:>9} {size:>8} {mode:>11} {load:>8.1f} "
                        f"{now['p50']:>7.1f}/{now['p95']:<8.1f} "
                        f"{later['p50']:>7.1f}/{later['p95']:<8.1f} "
                        f"{later['exact_p50']:>9.2f} {later['p50'] / later['exact_p50']:>13.1f} "
                        f"{later['recall']:>9.3f}"
                    )
                    if mode == modes[0] and later["p50"] <= INTERACTIVE_MS:
                        interactive = max(interactive, size)
                if len(modes) > 1:
                    ratios = ", ".join(
                        f"{mode} {settled[mode]['p50'] / settled[modes[-1]]['p50']:.2f}"
                        for mode in modes[:-1]
                    )
                    print(f"{'':>18} settled p50 against {modes[-1]}: {ratios}")
        print(
            f"\nlargest size measured with settled p50 <= {INTERACTIVE_MS:.0f} ms "
            f"({modes[0]}): {interactive}"
        )


if __name__ == "__main__":
    main()
