"""Query latency while a large ingestion runs, against the same queries on an idle stack.

    python -m bench.contention [--documents 100000] [--queries 60]

One stack (milvus-lite, a recall worker that also consumes the ingest queue, a rerank
worker, the API) and one collection with a few hundred documents to search. First the
queries run on the idle stack; then an ingestion of ``--documents`` text documents into a
second collection is submitted (1,000 a request) and, once all of it is accepted, the same
number of new queries run while the workers write it. Prints both p50s, each query stage,
and their ratio (target <= 1.5). ``--dedicated-ingest`` runs the ingestion in an ingest
worker of its own (the recall worker serves queries only, and the ingest worker runs at
niceness 10, ``umarvel worker ingest``'s default).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import redis
import requests

from cli.stack import Stack, free_port
from devkit.tiny_models import build_all

REDIS_URL = "redis://127.0.0.1:6379/14"
# Names of this run's own: a --database-url may hold earlier runs' collections.
SEARCHED, INGESTED = (f"{kind}_{int(time.time())}" for kind in ("searched", "ingested"))


STAGES: dict[str, list[float]] = {}


def _query_ms(http: requests.Session, base: str, text: str) -> float:
    started = time.perf_counter()
    response = http.post(
        f"{base}/v1/collections/{SEARCHED}/queries",
        json={"text": text, "rerank": {"enabled": False}, "wait": 30},
    )
    elapsed = (time.perf_counter() - started) * 1000
    if response.status_code != 200 or response.json()["status"] != "done":
        raise RuntimeError(f"query failed: {response.status_code} {response.text[:200]}")
    for stage, seconds in response.json()["timings"].items():
        STAGES.setdefault(stage, []).append(seconds * 1000)
    return elapsed


def _ingest(http: requests.Session, base: str, documents: int) -> int:
    """Submit the documents 1,000 a request; back off when the ingest queue is full."""
    sent = 0
    while sent < documents:
        batch = [
            {"id": f"i{n}", "text": f"ingested document number {n} about topic {n % 97}"}
            for n in range(sent, min(documents, sent + 1000))
        ]
        url = f"{base}/v1/collections/{INGESTED}/documents"
        response = http.post(url, json={"documents": batch})
        if response.status_code == 429:
            time.sleep(float(response.headers.get("Retry-After", "1")))
            continue
        response.raise_for_status()
        sent += len(batch)
    return sent


def _counts(http: requests.Session, base: str) -> dict[str, int]:
    return dict(http.get(f"{base}/v1/collections/{INGESTED}").json()["documents"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--documents", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=60)
    parser.add_argument(
        "--dedicated-ingest",
        action="store_true",
        help="an ingest worker process of its own (the recall worker serves queries only)",
    )
    parser.add_argument("--chunk-size", type=int, default=None, help="UMARVEL_INGEST_CHUNK_SIZE")
    parser.add_argument(
        "--yield-seconds", type=float, default=None, help="UMARVEL_INGEST_YIELD_SECONDS"
    )
    parser.add_argument("--database-url", default=None, help="default: SQLite in a temp folder")
    parser.add_argument("--models", type=Path, default=Path(".umarvel/tiny-models"))
    args = parser.parse_args()
    models = build_all(args.models)
    redis.Redis.from_url(REDIS_URL).flushdb()
    with tempfile.TemporaryDirectory() as tmp:
        env = {
            "UMARVEL_DATABASE_URL": args.database_url or f"sqlite:///{tmp}/bench.db",
            "UMARVEL_REDIS_URL": REDIS_URL,
            "UMARVEL_MILVUS_URI": f"http://127.0.0.1:{free_port()}",
            "UMARVEL_MEDIA_ROOT": f"{tmp}/media",
            "UMARVEL_RECALL_MODEL": str(models["qwen3_vl"].resolve()),
            "UMARVEL_RERANK_MODEL": str(models["qwen2_vl"].resolve()),
            "UMARVEL_QUERY_EMBEDDING_TTL_SECONDS": "0",  # every query embeds
        }
        if args.chunk_size:
            env["UMARVEL_INGEST_CHUNK_SIZE"] = str(args.chunk_size)
        if args.yield_seconds is not None:
            env["UMARVEL_INGEST_YIELD_SECONDS"] = str(args.yield_seconds)
        queues = ("recall", "rerank", "ingest") if args.dedicated_ingest else ("recall", "rerank")
        with Stack(Path(tmp), env, worker_queues=queues) as stack:
            stack.wait_ready()
            http = requests.Session()
            http.headers["Authorization"] = f"Bearer {stack.create_key(('admin',))}"
            base = stack.api_url
            for name in (SEARCHED, INGESTED):
                http.post(f"{base}/v1/collections", json={"name": name}).raise_for_status()
            docs = [{"id": f"s{n}", "text": f"searched document {n}"} for n in range(300)]
            job = http.post(
                f"{base}/v1/collections/{SEARCHED}/documents", json={"documents": docs}
            ).json()
            while http.get(base + job["url"]).json()["state"] != "done":
                time.sleep(0.2)
            _query_ms(http, base, "warm-up")
            idle = [_query_ms(http, base, f"idle query {n}") for n in range(args.queries)]
            idle_stages = {k: statistics.median(v) for k, v in STAGES.items()}
            STAGES.clear()

            started = time.perf_counter()
            # Every document is accepted first (the API's own parsing is not the subject),
            # then the queries run while the workers write them. A dedicated ingest worker
            # is away meanwhile, so that there is a backlog to write; it is started again
            # (and warmed up) before the busy queries.
            if args.dedicated_ingest:
                stack.kill("worker-ingest")
            _ingest(http, base, args.documents)
            accepted = time.perf_counter() - started
            if args.dedicated_ingest:
                stack.start_worker("ingest")
            while _counts(http, base)["indexed"] < 1000:  # writing, not loading its model
                time.sleep(0.5)
            before_busy, busy_started = _counts(http, base)["indexed"], time.perf_counter()
            busy = [_query_ms(http, base, f"busy query {n}") for n in range(args.queries)]
            busy_seconds = time.perf_counter() - busy_started
            indexed = _counts(http, base)
    idle_p50, busy_p50 = statistics.median(idle), statistics.median(busy)
    layout = "a dedicated ingest worker" if args.dedicated_ingest else "one recall worker"
    print(
        f"{args.queries} queries each, tiny models, 2-core CPU, {layout}; during the busy queries "
        f"{indexed['indexed']} documents were indexed and {indexed['pending']} still waited "
        f"({accepted:.0f} s to accept them all, {time.perf_counter() - started:.0f} s in all)"
    )
    print(f"query p50 idle {idle_p50:.1f} ms, during ingestion {busy_p50:.1f} ms")
    rate = (indexed["indexed"] - before_busy) / busy_seconds
    print(f"ingestion while the queries ran: {rate:.0f} documents/s over {busy_seconds:.1f} s")
    busy_stages = {k: statistics.median(v) for k, v in STAGES.items()}
    for stage in sorted(busy_stages):
        before = idle_stages.get(stage, 0.0)
        print(f"  {stage}: p50 idle {before:.1f} ms, busy {busy_stages[stage]:.1f} ms")
    print(f"ratio {busy_p50 / idle_p50:.2f}x (target <= 1.5)")


if __name__ == "__main__":
    main()
