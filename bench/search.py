"""Search latency of the embedded index (milvus-lite server, HNSW, COSINE) against exact search.

    python -m bench.search [--sizes 10000 100000] [--dim 64] [--queries 50]

For each collection size: insert random unit vectors through the adapter, flush, then time
top-10 searches through ``MilvusIndex.search`` and an exact numpy search of the same
vectors, and measure recall@10 of the index against the exact answer. Prints p50/p95 and
the ratios, and the largest size still interactive (p50 <= 100 ms).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from cli.stack import Stack, free_port
from recall.index import MilvusIndex

INTERACTIVE_MS = 100.0


def _unit(rows: int, dim: int, seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=(rows, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[int(0.95 * (len(ordered) - 1))]


def bench_size(index: MilvusIndex, size: int, dim: int, queries: int) -> dict[str, float]:
    name = f"bench_{size}"
    if index.exists(name):
        index.drop(name)
    vectors = _unit(size, dim, seed=size)
    index.create(name, dim)
    started = time.perf_counter()
    for start in range(0, size, 5000):
        rows = [
            {"id": str(i), "vector": vectors[i].tolist()}
            for i in range(start, min(size, start + 5000))
        ]
        index.upsert(name, rows)
    index.flush(name)
    load_seconds = time.perf_counter() - started
    probes = _unit(queries, dim, seed=size + 1)
    index.search(name, probes[0], 10)  # loads the collection and builds the index
    milvus_ms, exact_ms, recalls = [], [], []
    for probe in probes:
        t0 = time.perf_counter()
        hits = index.search(name, probe, 10)
        t1 = time.perf_counter()
        exact = np.argpartition(-(vectors @ probe), 10)[:10]
        t2 = time.perf_counter()
        milvus_ms.append((t1 - t0) * 1000)
        exact_ms.append((t2 - t1) * 1000)
        recalls.append(len({int(h.document_id) for h in hits} & set(exact.tolist())) / 10)
    index.drop(name)
    m50, m95 = _percentiles(milvus_ms)
    e50, e95 = _percentiles(exact_ms)
    return {
        "load_s": load_seconds,
        "milvus_p50": m50,
        "milvus_p95": m95,
        "exact_p50": e50,
        "exact_p95": e95,
        "recall": statistics.mean(recalls),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--queries", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        stack = Stack(Path(tmp), {"UMARVEL_MILVUS_URI": f"http://127.0.0.1:{port}"})
        stack.start_milvus_only()
        try:
            index = MilvusIndex(f"http://127.0.0.1:{port}")
            print(f"milvus-lite server, HNSW M=16 efConstruction=200, ef=64, dim {args.dim}")
            print(
                f"{'size':>8} {'insert+flush s':>14} {'milvus p50/p95 ms':>18} "
                f"{'exact p50/p95 ms':>17} {'p50 ratio':>9} {'recall@10':>9}"
            )
            interactive = 0
            for size in args.sizes:
                r = bench_size(index, size, args.dim, args.queries)
                print(
                    f"{size:>8} {r['load_s']:>14.1f} "
                    f"{r['milvus_p50']:>8.1f}/{r['milvus_p95']:<9.1f} "
                    f"{r['exact_p50']:>7.2f}/{r['exact_p95']:<9.2f} "
                    f"{r['milvus_p50'] / r['exact_p50']:>9.1f} {r['recall']:>9.3f}"
                )
                if r["milvus_p50"] <= INTERACTIVE_MS:
                    interactive = max(interactive, size)
            print(f"\nlargest size measured with p50 <= {INTERACTIVE_MS:.0f} ms: {interactive}")
        finally:
            stack.stop()


if __name__ == "__main__":
    main()
