"""Search latency of a Milvus server (HNSW, COSINE) against exact search, as users meet it.

    python -m bench.search [--server lite|standalone | --uri URI] [--sizes 10000 100000]
                           [--dim 64] [--data random clustered] [--queries 50] [--settle 30]
                           [--ef 64] [--consistency Strong|Bounded]

For each collection size and kind of data: insert unit vectors through the adapter, flush,
then time top-10 searches through ``MilvusIndex.search`` twice: at once (the server may
still be building its index and compacting, as right after an ingestion) and again after
``--settle`` seconds of idleness. Each is set against an exact numpy search of the same
vectors, with recall@10 against the exact answer. ``random``: independent Gaussian
directions; ``clustered``: 100 tight clusters, where nearest neighbours are many and close.
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
from recall.index import SEARCH_EF, MilvusIndex

INTERACTIVE_MS = 100.0
CLUSTERS = 100


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


def _phase(
    index: MilvusIndex, name: str, vectors: np.ndarray, probes: np.ndarray, ef: int | None
) -> dict[str, float]:
    milvus_ms, exact_ms, recalls = [], [], []
    for probe in probes:
        t0 = time.perf_counter()
        hits = index.search(name, probe, 10, ef=ef)
        t1 = time.perf_counter()
        exact = np.argpartition(-(vectors @ probe), 10)[:10]
        t2 = time.perf_counter()
        milvus_ms.append((t1 - t0) * 1000)
        exact_ms.append((t2 - t1) * 1000)
        recalls.append(len({int(h.document_id) for h in hits} & set(exact.tolist())) / 10)
    (m50, m95), (e50, _) = _percentiles(milvus_ms), _percentiles(exact_ms)
    return {"p50": m50, "p95": m95, "exact_p50": e50, "recall": statistics.mean(recalls)}


def bench_size(
    index: MilvusIndex,
    size: int,
    dim: int,
    kind: str,
    queries: int,
    settle: float,
    ef: int | None = None,
) -> tuple[float, dict[str, float], dict[str, float]]:
    """(insert seconds, searches at once, searches after ``settle`` idle seconds)."""
    name = f"bench_{kind}_{size}_{dim}"
    if index.exists(name):
        index.drop(name)
    vectors = vectors_of(kind, size, dim, seed=size)
    index.create(name, dim)
    started = time.perf_counter()
    step = max(1, min(5000, 2_000_000 // dim))  # rows per upsert: a few MB per call
    for start in range(0, size, step):
        rows = [
            {"id": str(i), "vector": vectors[i].tolist()}
            for i in range(start, min(size, start + step))
        ]
        index.upsert(name, rows)
    index.flush(name)
    load_seconds = time.perf_counter() - started
    probes = vectors_of(kind, queries, dim, seed=size + 1)
    index.search(name, probes[0], 10)  # loads the collection
    fresh = _phase(index, name, vectors, probes, ef)
    time.sleep(settle)
    settled = _phase(index, name, vectors, probes, ef)
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
        "--consistency", choices=["Strong", "Bounded"], default="Strong", help="of searches"
    )
    args = parser.parse_args()
    with server(args.server, args.uri) as (uri, described):
        index = MilvusIndex(uri, timeout=600, search_consistency=args.consistency)
        ef = max(args.ef or 0, 10, SEARCH_EF)
        print(
            f"{described}, HNSW M=16 efConstruction=200, ef={ef}, dim {args.dim}, top 10, "
            f"{args.consistency} searches"
        )
        print(
            f"{'data':>9} {'size':>8} {'insert s':>8} {'at once p50/p95':>16} "
            f"{'settled p50/p95':>16} {'exact p50':>9} {'settled ratio':>13} {'recall@10':>9}"
        )
        interactive = 0
        for kind in args.data:
            for size in args.sizes:
                load, fresh, settled = bench_size(
                    index, size, args.dim, kind, args.queries, args.settle, args.ef
                )
                print(
                    f"{kind:>9} {size:>8} {load:>8.1f} "
                    f"{fresh['p50']:>7.1f}/{fresh['p95']:<8.1f} "
                    f"{settled['p50']:>7.1f}/{settled['p95']:<8.1f} "
                    f"{settled['exact_p50']:>9.2f} {settled['p50'] / settled['exact_p50']:>13.1f} "
                    f"{settled['recall']:>9.3f}"
                )
                if settled["p50"] <= INTERACTIVE_MS:
                    interactive = max(interactive, size)
        print(f"\nlargest size measured with settled p50 <= {INTERACTIVE_MS:.0f} ms: {interactive}")


if __name__ == "__main__":
    main()
