"""``umarvel`` commands that run the service's processes: the API, the workers, beat, a
readiness probe, and a milvus-lite server."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click


def _run_celery(argv: list[str]) -> None:
    """Run a Celery command on ``workers.app`` and end with its exit status.

    Not ``app.worker_main``: ``Celery.start`` (celery 5.7, ``celery/app/base.py``) waits for
    a ``click.exceptions.Exit`` that click 8 no longer raises in non-standalone mode (it
    returns the status instead), so the status is dropped. A worker stopped by an
    "Unrecoverable error", or one that gave up reconnecting, exited 0, and a supervisor
    with ``restart: on-failure`` left it down. Celery's own command line returns it.
    """
    from celery.bin.celery import celery

    status = celery.main(
        args=["--app", "workers.app", *argv], prog_name="celery", standalone_mode=False
    )
    if status:
        raise SystemExit(status)


@click.command()
@click.argument("queue", type=click.Choice(["recall", "rerank", "ingest"]))
@click.option(
    "--ingest/--no-ingest",
    "with_ingest",
    default=True,
    show_default=True,
    help="A recall worker also consumes the ingest queue (after queries, which come first); "
    "--no-ingest when dedicated ingest workers run.",
)
@click.option(
    "--nice",
    type=int,
    default=None,
    help="CPU niceness of the process (default: 10 for an ingest worker, else 0): on cores "
    "it shares with the query path, ingestion yields to queries.",
)
@click.option("--name", default=None, help="Celery node name (default: QUEUE@%h).")
@click.option(
    "--concurrency",
    type=int,
    default=None,
    help="Tasks at once (default UMARVEL_WORKER_CONCURRENCY); one worker process per GPU.",
)
@click.option("--loglevel", default="INFO", show_default=True)
def worker(
    queue: str,
    with_ingest: bool,
    nice: int | None,
    name: str | None,
    concurrency: int | None,
    loglevel: str,
) -> None:
    """Start a Celery worker that consumes QUEUE.

    One process holds the model; its task threads hand their model calls to the model's
    batcher, so queries that arrive together share a forward pass (two such calls run side
    by side on a CPU, ``UMARVEL_MODEL_RUNNERS``).
    """
    from core.logs import configure_logging
    from core.settings import get_settings

    configure_logging(loglevel)
    concurrency = concurrency or get_settings().worker_concurrency
    queues = f"{queue},ingest" if queue == "recall" and with_ingest else queue
    niceness = (10 if queue == "ingest" else 0) if nice is None else nice
    if niceness:
        os.nice(niceness)
    os.environ["UMARVEL_WORKER_QUEUE"] = queues  # warm-up and heartbeat for these queues

    _run_celery(
        [
            "worker",
            "--queues",
            queues,  # in this order: a waiting query is taken before ingestion work
            "--hostname",
            name or f"{queue}@%h",
            "--concurrency",
            str(concurrency),
            "--pool",
            "threads",
            "--loglevel",
            loglevel,
            "--without-gossip",
            "--without-mingle",
        ]
    )


@click.command()
@click.option("--loglevel", default="INFO", show_default=True)
def beat(loglevel: str) -> None:
    """Start Celery beat: periodic clean-up of expired query jobs."""
    _run_celery(["beat", "--loglevel", loglevel])


@click.command()
@click.argument("queue", type=click.Choice(["recall", "rerank", "ingest"]))
def ready(queue: str) -> None:
    """Exit 0 when a worker of QUEUE on this host reports a warm model (health checks)."""
    import socket

    from core.settings import get_settings
    from store.heartbeats import read_heartbeats
    from store.redis import make_redis

    host = socket.gethostname()
    beats = read_heartbeats(make_redis(get_settings().redis_url), queue)
    mine = [b for b in beats if str(b.get("hostname", "")).endswith(f"@{host}")]
    if not any(b.get("warm") for b in mine):
        errors = [b["error"] for b in mine if b.get("error")]
        raise click.ClickException(
            f"no warm {queue} worker on {host}" + (f": {errors}" if errors else "")
        )
    click.echo(f"{queue} worker on {host} is warm")


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True)
@click.option(
    "--workers",
    default=0,
    show_default=True,
    type=click.IntRange(0, 256),
    help="gunicorn processes (threaded workers, as in production); 0: the development server",
)
@click.option("--threads", default=8, show_default=True, type=click.IntRange(1, 1024))
def api(host: str, port: int, workers: int, threads: int) -> None:
    """Serve the HTTP API (a threaded development server, or gunicorn with --workers)."""
    if workers:
        gunicorn = [sys.executable, "-m", "gunicorn", "--bind", f"{host}:{port}"]
        gunicorn += ["--workers", str(workers), "--threads", str(threads), "--timeout", "120"]
        os.execv(sys.executable, [*gunicorn, "api.wsgi:app"])
    from werkzeug.serving import run_simple

    from api.app import create_app
    from core.logs import configure_logging

    configure_logging()
    run_simple(host, port, create_app(), threaded=True, use_reloader=False)


@click.command("milvus-lite")
@click.option("--data-dir", required=True, type=click.Path(file_okay=False))
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=19530, show_default=True)
def milvus_lite(data_dir: str, host: str, port: int) -> None:
    """Serve a milvus-lite data folder (one process owns it; clients connect by URI)."""
    binary = Path(sys.executable).with_name("milvus-lite")
    args = [str(binary), "server", "--data-dir", data_dir, "--host", host, "--port", str(port)]
    os.execv(args[0], args)


COMMANDS = [worker, beat, ready, api, milvus_lite]
