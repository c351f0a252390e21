"""The ``umarvel`` command line."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import click


class _Group(click.Group):
    """Project errors end the command with their message, never a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        from core.errors import UmarvelError

        try:
            return super().invoke(ctx)
        except UmarvelError as exc:
            raise click.ClickException(exc.message) from None


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """umarvel-search: multimodal search with U-MARVEL recall and MLLM rerank."""


@main.command("tiny-models")
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--seed", default=0, show_default=True, help="Seed of the random weights.")
def tiny_models(out_dir: Path, seed: int) -> None:
    """Build tiny random Qwen2-VL and Qwen3-VL checkpoints in OUT_DIR/<arch>."""
    from core.tiny_models import build_all

    for arch, path in build_all(out_dir, seed=seed).items():
        click.echo(f"{arch}: {path}")


@main.group()
def db() -> None:
    """Database schema (Alembic)."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True)
def db_upgrade(revision: str) -> None:
    """Migrate UMARVEL_DATABASE_URL to REVISION."""
    from core.db import upgrade
    from core.settings import get_settings

    upgrade(get_settings().database_url, revision)
    click.echo(f"database at {revision}")


@main.group()
def keys() -> None:
    """API keys (stored hashed in UMARVEL_DATABASE_URL)."""


@keys.command("create")
@click.argument("name")
@click.option(
    "--scope",
    "scopes",
    multiple=True,
    required=True,
    type=click.Choice(["search", "admin"]),
    help="Repeat for several scopes.",
)
@click.option("--collection", "collections", multiple=True, help="Limit to these collections.")
def keys_create(name: str, scopes: tuple[str, ...], collections: tuple[str, ...]) -> None:
    """Create a key; its secret is printed once."""
    from core.auth import create_key

    with _session() as session:
        row, secret = create_key(session, name, scopes, collections or None)
        click.echo(f"id {row.id} prefix {row.prefix} scopes {','.join(row.scopes)}")
    click.echo(secret)


@keys.command("list")
def keys_list() -> None:
    """Every key, without secrets."""
    from sqlalchemy import select

    from core.auth import describe
    from core.models import ApiKey

    with _session() as session:
        for row in session.scalars(select(ApiKey).order_by(ApiKey.id)):
            info = describe(row)
            state = f"revoked {info['revoked_at']}" if info["revoked_at"] else "active"
            limit = ",".join(info["collections"] or ["*"])
            click.echo(
                f"{info['id']:>4}  {info['prefix']}  {info['name']:<20} "
                f"{','.join(info['scopes']):<13} {limit:<20} {state}"
            )


@keys.command("revoke")
@click.argument("ident")
def keys_revoke(ident: str) -> None:
    """Revoke the key with this id or prefix."""
    from core.auth import revoke

    with _session() as session:
        row = revoke(session, ident)
        click.echo(f"revoked key {row.id} ({row.prefix})")


def _session() -> Any:
    from core.db import make_engine, make_session_factory, session_scope
    from core.settings import get_settings

    return session_scope(make_session_factory(make_engine(get_settings().database_url)))


@main.command()
@click.argument("queue", type=click.Choice(["recall", "rerank"]))
@click.option("--name", default=None, help="Celery node name (default: QUEUE@%h).")
@click.option(
    "--concurrency",
    type=int,
    default=None,
    help="Tasks at once (default UMARVEL_WORKER_CONCURRENCY); one worker process per GPU.",
)
@click.option("--loglevel", default="INFO", show_default=True)
def worker(queue: str, name: str | None, concurrency: int | None, loglevel: str) -> None:
    """Start a Celery worker that consumes QUEUE.

    One process holds the model; its task threads hand their model calls to one batching
    thread, so queries that arrive together share a forward pass.
    """
    from core.logs import configure_logging
    from core.settings import get_settings
    from workers.app import app

    configure_logging(loglevel)
    concurrency = concurrency or get_settings().worker_concurrency
    os.environ["UMARVEL_WORKER_QUEUE"] = queue  # warm-up and heartbeat for this queue

    app.worker_main(
        [
            "worker",
            "--queues",
            queue,
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


@main.command()
@click.option("--loglevel", default="INFO", show_default=True)
def beat(loglevel: str) -> None:
    """Start Celery beat: periodic clean-up of expired query jobs."""
    from workers.app import app

    app.start(["beat", "--loglevel", loglevel])


@main.command()
@click.argument("source", type=click.Path(exists=True, path_type=Path))
@click.option("--collection", required=True, help="Target collection (it must exist).")
@click.option("--api", default="http://127.0.0.1:8000", show_default=True, envvar="UMARVEL_API")
@click.option("--key", required=True, envvar="UMARVEL_API_KEY", help="An admin API key.")
@click.option("--batch-size", default=256, show_default=True, type=click.IntRange(1, 10_000))
@click.option(
    "--state",
    "state_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Progress file for resuming (default: SOURCE.ingest-state.json).",
)
@click.option("--no-wait", is_flag=True, help="Return once every batch is queued.")
def ingest(
    source: Path,
    collection: str,
    api: str,
    key: str,
    batch_size: int,
    state_path: Path | None,
    no_wait: bool,
) -> None:
    """Ingest a folder of images (captions in <stem>.txt) or a JSONL manifest, resumably."""
    from cli.ingest import run_ingest

    state = state_path or source.with_name(source.name + ".ingest-state.json")
    sums = run_ingest(source, collection, api, key, batch_size, state, wait=not no_wait)
    click.echo(f"{sums['done']} indexed, {sums['failed']} failed of {sums['total']}")


@main.command()
@click.argument("queue", type=click.Choice(["recall", "rerank"]))
def ready(queue: str) -> None:
    """Exit 0 when a worker of QUEUE on this host reports a warm model (health checks)."""
    import socket

    from core.cache import make_redis
    from core.settings import get_settings
    from workers.heartbeat import read_heartbeats

    host = socket.gethostname()
    beats = read_heartbeats(make_redis(get_settings().redis_url), queue)
    mine = [b for b in beats if str(b.get("hostname", "")).endswith(f"@{host}")]
    if not any(b.get("warm") for b in mine):
        errors = [b["error"] for b in mine if b.get("error")]
        raise click.ClickException(
            f"no warm {queue} worker on {host}" + (f": {errors}" if errors else "")
        )
    click.echo(f"{queue} worker on {host} is warm")


@main.group()
def jobs() -> None:
    """Query and ingestion jobs."""


@jobs.command("cleanup")
def jobs_cleanup() -> None:
    """Delete query jobs past UMARVEL_JOB_TTL_SECONDS now (beat does it every 10 minutes)."""
    from core.settings import get_settings
    from workers.pipeline import cleanup_jobs
    from workers.runtime import Runtime

    click.echo(f"deleted {cleanup_jobs(Runtime(get_settings()))} expired query jobs")


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True)
def api(host: str, port: int) -> None:
    """Serve the HTTP API (threaded development server; use gunicorn in production)."""
    from werkzeug.serving import run_simple

    from api.app import create_app
    from core.logs import configure_logging

    configure_logging()
    run_simple(host, port, create_app(), threaded=True, use_reloader=False)


@main.command("milvus-lite")
@click.option("--data-dir", required=True, type=click.Path(file_okay=False))
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=19530, show_default=True)
def milvus_lite(data_dir: str, host: str, port: int) -> None:
    """Serve a milvus-lite data folder (one process owns it; clients connect by URI)."""
    binary = Path(sys.executable).with_name("milvus-lite")
    args = [str(binary), "server", "--data-dir", data_dir, "--host", host, "--port", str(port)]
    os.execv(args[0], args)


@main.command()
@click.option("--workdir", default=".umarvel/demo", show_default=True, type=click.Path())
@click.option(
    "--models",
    default=".umarvel/tiny-models",
    show_default=True,
    type=click.Path(),
    help="Where the tiny models are built when no real checkpoint is given.",
)
@click.option("--recall-model", default=None, help="U-MARVEL checkpoint (hub id or folder).")
@click.option("--rerank-model", default=None, help="Reranker checkpoint (hub id or folder).")
def demo(workdir: str, models: str, recall_model: str | None, rerank_model: str | None) -> None:
    """Start the embedded stack, ingest a sample collection, run three queries, stop."""
    from cli.demo import run_demo

    sys.exit(run_demo(Path(workdir), Path(models), recall_model, rerank_model))


if __name__ == "__main__":
    main()
