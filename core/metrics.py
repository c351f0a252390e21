"""Prometheus metrics of the API and the workers.

Each process exposes its own: the API at ``/metrics``, a worker on
``UMARVEL_WORKER_METRICS_PORT``. Under gunicorn with several processes, set
``PROMETHEUS_MULTIPROC_DIR`` and the API aggregates every process's samples.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client import multiprocess as prometheus_multiprocess

REQUESTS = Counter(
    "umarvel_http_requests_total",
    "HTTP requests by route and status",
    ["route", "method", "status"],
)
REQUEST_SECONDS = Histogram(
    "umarvel_http_request_seconds", "HTTP request latency by route", ["route", "method"]
)
# Read from Redis when /metrics is scraped: across gunicorn's processes the most recent
# reading counts ("max" kept a depth once seen until the metrics folder was wiped).
QUEUE_DEPTH = Gauge(
    "umarvel_queue_depth",
    "Tasks waiting in each queue",
    ["queue"],
    multiprocess_mode="mostrecent",
)
CACHE_REQUESTS = Counter("umarvel_cache_requests_total", "Result cache lookups", ["result"])
STAGE_SECONDS = Histogram(
    "umarvel_stage_seconds",
    "Seconds per stage of a query",
    ["stage"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
BATCH_SIZE = Histogram(
    "umarvel_batch_size",
    "Items per model call",
    ["call"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
# Round trips to SQL and Redis, so a query's cost in them can be counted (bench.service).
SQL_ROUND_TRIPS = Counter(
    "umarvel_sql_round_trips_total",
    "SQL round trips of this process: statements, commits, pool checkouts (each pings first)",
    ["kind"],
)
REDIS_ROUND_TRIPS = Counter(
    "umarvel_redis_round_trips_total",
    "Round trips of the project's Redis client (a pipeline is one; Celery's broker is not)",
)
INGEST_DOCUMENTS = Counter(
    "umarvel_ingest_documents_total", "Ingested documents by outcome", ["result"]
)


def render() -> tuple[bytes, str]:
    """The exposition text of this process, or of every process in multiprocess mode."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        prometheus_multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST


BUILD_INFO = Gauge(
    "umarvel_build_info",
    "1, labelled with the version this process runs",
    ["version"],
    multiprocess_mode="max",
)
QUERY_JOBS = Counter(
    "umarvel_query_jobs_total",
    "Query jobs that ended, by outcome: done, failed, cancelled",
    ["outcome"],
)
# Read from SQL and Redis when /metrics is scraped, as the queue depth is.
OUTBOX_ENTRIES = Gauge(
    "umarvel_outbox_entries",
    "Ingestion work accepted and not yet confirmed by Milvus",
    multiprocess_mode="mostrecent",
)
OUTBOX_OLDEST_SECONDS = Gauge(
    "umarvel_outbox_oldest_seconds",
    "Age of the oldest outbox entry (0: none)",
    multiprocess_mode="mostrecent",
)
WORKERS = Gauge(
    "umarvel_workers",
    "Workers seen through their heartbeats, by queue and state: warm (model loaded), "
    "cold (loading), failing (a model error)",
    ["queue", "state"],
    multiprocess_mode="mostrecent",
)

RECONCILE_REPAIRS = Counter(
    "umarvel_reconcile_repairs_total",
    "Disagreements between SQL and Milvus that reconciliation repaired, by kind: missing "
    "(indexed, no vector), orphan (a vector of no document), stale (a vector of a document "
    "not indexed), outage (failed for an outage, sent again)",
    ["kind"],
)
