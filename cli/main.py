"""The ``umarvel`` command line."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import click

from cli import remote
from cli.remote import api_options, client_for
from core.version import VERSION


class _Group(click.Group):
    """Expected failures end the command with one line and exit status 1, never a traceback:
    the project's errors, the API's (through the client), an unreachable or unmigrated
    database, an unreachable Redis, a setting out of range."""

    def invoke(self, ctx: click.Context) -> Any:
        from pydantic import ValidationError
        from redis.exceptions import ConnectionError as RedisDown
        from sqlalchemy.exc import DBAPIError

        from core.errors import UmarvelError
        from umarvel_client.errors import UmarvelClientError

        try:
            return super().invoke(ctx)
        except (UmarvelError, UmarvelClientError) as exc:
            raise click.ClickException(exc.message) from None
        except DBAPIError as exc:
            raise click.ClickException(_database_problem(exc)) from None
        except RedisDown as exc:
            raise click.ClickException(f"cannot reach Redis (UMARVEL_REDIS_URL): {exc}") from None
        except ValidationError as exc:
            if exc.title != "Settings":
                raise
            raise click.ClickException(_settings_problem(exc)) from None


def _settings_problem(exc: Any) -> str:
    """``UMARVEL_NAME: what is wrong`` for each setting pydantic refused."""
    problems = []
    for error in exc.errors():
        name = "_".join(str(part) for part in error["loc"]).upper()
        problems.append(f"UMARVEL_{name}: {error['msg']}" if name else error["msg"])
    return "invalid settings: " + "; ".join(problems)


def _database_problem(exc: Any) -> str:
    from sqlalchemy.engine import make_url

    from core.settings import get_settings

    url = make_url(get_settings().database_url).render_as_string(hide_password=True)
    reason = str(exc.orig).strip().splitlines()[0] if exc.orig else type(exc).__name__
    if "does not exist" in reason or "no such table" in reason:
        return f"the database {url} is not migrated: run `umarvel db upgrade` ({reason})"
    return f"cannot use the database {url} (UMARVEL_DATABASE_URL): {reason}"


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(VERSION, "--version", prog_name="umarvel")
def main() -> None:
    """umarvel-search: multimodal search with U-MARVEL recall and MLLM rerank.

    Commands that talk to a running API read UMARVEL_API and UMARVEL_API_KEY; the others
    read the same UMARVEL_* settings as the API and the workers.
    """


@main.command("tiny-models")
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--seed", default=0, show_default=True, help="Seed of the random weights.")
def tiny_models(out_dir: Path, seed: int) -> None:
    """Build tiny random Qwen2-VL and Qwen3-VL checkpoints in OUT_DIR/<arch>."""
    from devkit.tiny_models import build_all

    for arch, path in build_all(out_dir, seed=seed).items():
        click.echo(f"{arch}: {path}")


@main.group()
def db() -> None:
    """Database schema (Alembic)."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True)
def db_upgrade(revision: str) -> None:
    """Migrate UMARVEL_DATABASE_URL to REVISION."""
    from core.settings import get_settings
    from store.db import upgrade

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
    from store.keys import create_key

    with _session() as session:
        row, secret = create_key(session, name, scopes, collections or None)
        limited = ",".join(row.collections or ["*"])
        _audit(session, "keys.create", row, f"scopes {','.join(row.scopes)}; collections {limited}")
        click.echo(f"id {row.id} prefix {row.prefix} scopes {','.join(row.scopes)}")
    click.echo(secret)


@keys.command("quotas")
@click.argument("ident")
@click.option("--rate", type=click.IntRange(min=0), help="Requests per second (0: no limit).")
@click.option(
    "--waiting", type=click.IntRange(min=0), help="Query POSTs held waiting at once (0: none)."
)
@click.option("--queued", type=click.IntRange(min=0), help="Query jobs queued or running at once.")
def keys_quotas(ident: str, rate: int | None, waiting: int | None, queued: int | None) -> None:
    """Give the key with this id or prefix its own quotas; an option left out takes the
    deployment's default (UMARVEL_KEY_RATE_LIMIT, _MAX_WAITING, _MAX_QUEUED)."""
    from store.keys import Quotas, set_quotas

    with _session() as session:
        row = set_quotas(session, ident, Quotas(rate, waiting, queued))
        shown = {"rate": rate, "waiting": waiting, "queued": queued}
        text = " ".join(f"{k}={'default' if v is None else v}" for k, v in shown.items())
        _audit(session, "keys.quotas", row, text)
        click.echo(f"key {row.id} ({row.prefix}): {text}")


@keys.command("list")
def keys_list() -> None:
    """Every key, without secrets."""
    from sqlalchemy import select

    from store.keys import describe
    from store.tables import ApiKey

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
    from store.keys import revoke

    with _session() as session:
        row = revoke(session, ident)
        _audit(session, "keys.revoke", row)
        click.echo(f"revoked key {row.id} ({row.prefix})")


def _audit(session: Any, action: str, key: Any, detail: str | None = None) -> None:
    """An operator's change to a key, in the audit log, in the change's own transaction."""
    from store.audit import Outcome, record

    target = f"key {key.id} ({key.prefix})"
    record(session, action, Outcome.OK, target=target, detail=detail)


@main.command("audit")
@click.option("--action", help="Only this action (e.g. collection.delete, keys.revoke).")
@click.option("--key-id", type=int, help="Only events of this key.")
@click.option("--outcome", type=click.Choice(["ok", "failed", "refused"]))
@click.option("--limit", type=click.IntRange(1, 10_000), default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def audit(
    action: str | None, key_id: int | None, outcome: str | None, limit: int, as_json: bool
) -> None:
    """The audit log, newest first: admin actions and refused requests."""
    import json

    from store.audit import Filters, page, view

    with _session() as session:
        filters = Filters(action=action, key_id=key_id, outcome=outcome)
        events = [view(event) for event in page(session, filters, None, limit)[0]]
    for event in events:
        if as_json:
            click.echo(json.dumps(event))
        else:
            who = event["key_id"] if event["key_id"] is not None else event["key_prefix"] or "-"
            click.echo(
                f"{event['at']}  {event['action']:<24} {event['outcome']:<8} "
                f"key {who}  {event['target'] or '-'}  {event['detail'] or ''}".rstrip()
            )


def _session() -> Any:
    from core.settings import get_settings
    from store.db import make_engine, make_session_factory, session_scope
    from store.redis import make_redis

    settings = get_settings()
    engine = make_engine(settings.database_url)
    return session_scope(make_session_factory(engine, make_redis(settings.redis_url)))


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


@main.command()
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


@main.command()
@click.option("--loglevel", default="INFO", show_default=True)
def beat(loglevel: str) -> None:
    """Start Celery beat: periodic clean-up of expired query jobs."""
    _run_celery(["beat", "--loglevel", loglevel])


@main.command()
@click.argument("source", type=click.Path(exists=True, path_type=Path))
@click.option("--collection", required=True, help="Target collection (it must exist).")
@api_options
@click.option("--batch-size", default=256, show_default=True, type=click.IntRange(1, 10_000))
@click.option(
    "--state",
    "state_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Progress file for resuming (default: SOURCE.ingest-state.json).",
)
@click.option("--no-wait", is_flag=True, help="Return once every batch is queued.")
@click.option("--json", "as_json", is_flag=True, help="The totals and errors as one JSON object.")
def ingest(
    source: Path,
    collection: str,
    api: str,
    key: str,
    batch_size: int,
    state_path: Path | None,
    no_wait: bool,
    as_json: bool,
) -> None:
    """Ingest a folder of images (captions in <stem>.txt) or a JSONL manifest, resumably.

    Exits 1 when any document failed (each failure is listed)."""
    import json

    from cli.ingest import run_ingest

    state = state_path or source.with_name(source.name + ".ingest-state.json")
    summary = run_ingest(
        source, collection, client_for(api, key), batch_size, state, wait=not no_wait
    )
    errors = [{"index": e.index, "id": e.id, "message": e.message} for e in summary.errors]
    if as_json:
        totals = {"total": summary.total, "done": summary.done, "failed": summary.failed}
        click.echo(json.dumps({**totals, "jobs": [j.id for j in summary.jobs], "errors": errors}))
    else:
        for error in errors:
            click.echo(f"failed: {error['id'] or error['index']}: {error['message']}", err=True)
        click.echo(f"{summary.done} indexed, {summary.failed} failed of {summary.total}")
    if summary.failed:
        raise SystemExit(1)


@main.command()
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


@main.group()
def jobs() -> None:
    """Query and ingestion jobs."""


@jobs.command("cleanup")
def jobs_cleanup() -> None:
    """Delete query jobs past UMARVEL_JOB_TTL_SECONDS (finished or not) and ingestion jobs
    finished longer ago than UMARVEL_INGEST_JOB_TTL_SECONDS, then unreferenced media older
    than UMARVEL_MEDIA_GRACE_SECONDS, now (beat does both every 10 minutes)."""
    from core.settings import get_settings
    from workers.queries import cleanup_jobs, cleanup_media
    from workers.runtime import Runtime

    rt = Runtime(get_settings())
    click.echo(f"deleted {cleanup_jobs(rt)} expired query and ingestion jobs")
    click.echo(f"deleted {cleanup_media(rt)} unreferenced media objects")


@main.group()
def outbox() -> None:
    """Ingestion work accepted and not yet done (the outbox)."""


@outbox.command("list")
@click.option("--failing", is_flag=True, help="only entries that have failed at least once")
@click.option("--json", "as_json", is_flag=True, help="one JSON array instead of a table")
def outbox_list(failing: bool, as_json: bool) -> None:
    """Entries owed, oldest first: kind, job, attempts, when they run next, last error.
    Deletes and drops that keep failing are retried hourly and show here."""
    import json

    from sqlalchemy import select

    from store.tables import OutboxEntry

    query = select(OutboxEntry).order_by(OutboxEntry.id)
    if failing:
        query = query.where(OutboxEntry.attempts > 0)
    with _session() as session:
        rows = [
            {
                "id": row.id,
                "kind": row.kind,
                "job_id": row.job_id,
                "attempts": row.attempts,
                "not_before": row.not_before.isoformat(),
                "last_error": row.last_error,
            }
            for row in session.scalars(query)
        ]
    if as_json:
        click.echo(json.dumps(rows))
        return
    for row in rows:
        error = (row["last_error"] or "").replace("\n", " ")[:120]
        click.echo(
            f"{row['id']:>8}  {row['kind']:<8} {row['job_id'] or '-':<32} "
            f"{row['attempts']:>3}  {row['not_before']}  {error}"
        )
    click.echo(f"{len(rows)} entries")


@main.group()
def cache() -> None:
    """The Redis copies of keys and collections that the query path reads."""


@cache.command("clear")
def cache_clear() -> None:
    """Forget every copy of API keys and collections (after rows were changed by hand in
    SQL; changes made through the API, the CLI or the workers need nothing)."""
    from core.settings import get_settings
    from store.fences import Fences
    from store.redis import make_redis

    removed = Fences(make_redis(get_settings().redis_url)).clear()
    click.echo(f"forgot {removed} copies")


@main.command()
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


@main.command("milvus-lite")
@click.option("--data-dir", required=True, type=click.Path(file_okay=False))
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=19530, show_default=True)
def milvus_lite(data_dir: str, host: str, port: int) -> None:
    """Serve a milvus-lite data folder (one process owns it; clients connect by URI)."""
    binary = Path(sys.executable).with_name("milvus-lite")
    args = [str(binary), "server", "--data-dir", data_dir, "--host", host, "--port", str(port)]
    os.execv(args[0], args)


@main.group("eval")
def eval_group() -> None:
    """Measure retrieval quality: M-BEIR, or labelled queries on your own collection."""


@eval_group.command("mbeir")
@click.argument("root", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--task",
    "tasks",
    multiple=True,
    help="An M-BEIR set such as mscoco_task0; repeat for several (default: all 16).",
)
@click.option("--model", default=None, help="Embedding checkpoint [UMARVEL_RECALL_MODEL].")
@click.option("--pool", type=click.Choice(["local", "global"]), default="local", show_default=True)
@click.option("--index", type=click.Choice(["exact", "milvus"]), default="exact", show_default=True)
@click.option("--milvus-uri", default=None, help="Milvus for --index milvus [UMARVEL_MILVUS_URI].")
@click.option("--rerank-model", default=None, help="Rerank the top of each list with this model.")
@click.option(
    "--fusion-weight",
    "weights",
    multiple=True,
    type=float,
    help="w in cosine + w * P(Yes); repeat to compare weights (default 0.1).",
)
@click.option("--rerank-top", default=50, show_default=True, type=click.IntRange(1, 1000))
@click.option(
    "--instruction-seed",
    default=0,
    show_default=True,
    type=int,
    help="Seeds the per-query pick among a dataset's instructions.",
)
@click.option("--first-instruction", is_flag=True, help="Always the table's first instruction.")
@click.option("--image-root", type=click.Path(file_okay=False, path_type=Path), default=None)
@click.option(
    "--output", type=click.Path(file_okay=False, path_type=Path), default=Path(".umarvel/eval")
)
@click.option(
    "--cache-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Pool embeddings kept between runs (default: OUTPUT/cache).",
)
@click.option("--chunk-size", default=1024, show_default=True, type=click.IntRange(1))
@click.option("--device", default=None, help="[UMARVEL_DEVICE]")
@click.option("--dtype", default=None, help="[UMARVEL_DTYPE]")
def eval_mbeir(
    root: Path,
    tasks: tuple[str, ...],
    model: str | None,
    pool: str,
    index: str,
    milvus_uri: str | None,
    rerank_model: str | None,
    weights: tuple[float, ...],
    rerank_top: int,
    instruction_seed: int,
    first_instruction: bool,
    image_root: Path | None,
    output: Path,
    cache_dir: Path | None,
    chunk_size: int,
    device: str | None,
    dtype: str | None,
) -> None:
    """Recall@k on the M-BEIR test sets under ROOT, laid out like the paper's table."""
    from cli.evaluate import ProgressBars, write_outputs
    from core.settings import get_settings
    from evaluation import mbeir, report
    from recall.embedder import Embedder

    settings = get_settings()
    config = mbeir.RunConfig(
        root=root,
        tasks=mbeir.select_tasks(tasks),
        model=model or settings.recall_model,
        output=output,
        cache_dir=cache_dir or output / "cache",
        image_root=image_root,
        pool=pool,
        index=index,
        milvus_uri=milvus_uri or settings.milvus_uri,
        rerank_model=rerank_model,
        chunk_size=chunk_size,
        options=mbeir.RunOptions(
            rerank_top=rerank_top,
            fusion_weights=(weights or (0.1,)) if rerank_model else (),
            instruction_seed=None if first_instruction else instruction_seed,
        ),
    )
    device, dtype = device or settings.device, dtype or settings.dtype
    embedder = Embedder.from_pretrained(config.model, device=device, dtype=dtype)
    reranker = None
    if rerank_model:
        from rerank.reranker import Reranker

        reranker = Reranker.from_pretrained(rerank_model, device=device, dtype=dtype)
    bars = ProgressBars()
    try:
        summary = mbeir.run(config, embedder, reranker, progress=bars)
    finally:
        bars.close()
    write_outputs(output, summary, report.mbeir_table(summary), report.mbeir_chart)


@eval_group.command("sample-mbeir")
@click.argument("root", type=click.Path(file_okay=False, path_type=Path))
@click.option("--task", "tasks", multiple=True, help="Sets to generate (default: all 16).")
@click.option("--pool-size", default=9, show_default=True, type=click.IntRange(1, 10_000))
def eval_sample_mbeir(root: Path, tasks: tuple[str, ...], pool_size: int) -> None:
    """Write a small synthetic dataset in M-BEIR's layout to ROOT (to try the harness)."""
    from evaluation import mbeir, synthetic

    names = [t.name for t in mbeir.select_tasks(tasks)]
    synthetic.build(root, names, pool_size=pool_size)
    click.echo(f"wrote {len(names)} M-BEIR sets to {root}")


@eval_group.command("collection")
@click.argument("name")
@click.option(
    "--queries",
    "queries_file",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help='JSONL: {"query": ..., "relevant": [ids]} per line.',
)
@api_options
@click.option("--k", "ks", multiple=True, type=click.IntRange(1, 1000), help="Default 1, 5, 10.")
@click.option(
    "--output",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Default: .umarvel/eval/NAME.",
)
def eval_collection(
    name: str, queries_file: Path, api: str, key: str, ks: tuple[int, ...], output: Path | None
) -> None:
    """Recall@k, MRR and nDCG@10 of labelled queries, without and with rerank."""
    from cli.evaluate import ProgressBars, write_outputs
    from evaluation import collection

    queries = list(collection.read_queries(queries_file))
    bars = ProgressBars()
    try:
        summary = collection.evaluate(
            client_for(api, key),
            name,
            queries,
            tuple(sorted(set(ks))) or (1, 5, 10),
            progress=bars(f"queries {name}", len(queries)),
        )
    finally:
        bars.close()
    out = output or Path(".umarvel/eval") / name
    write_outputs(out, summary, collection.table(summary), collection.chart)


@main.command()
@click.option("--model", default=None, help="Embedding checkpoint [UMARVEL_RECALL_MODEL].")
@click.option("--query-text", default=None)
@click.option("--query-image", type=click.Path(exists=True, dir_okay=False), default=None)
@click.option("--instruction", default=None, help="What to find (the query's instruction).")
@click.option(
    "--candidates",
    "candidates_flag",
    is_flag=True,
    help="Then the candidates: texts, image files, or IMAGE::TEXT pairs.",
)
@click.argument("candidates", nargs=-1, required=True)
@click.option("--device", default=None, help="[UMARVEL_DEVICE]")
@click.option("--dtype", default=None, help="[UMARVEL_DTYPE]")
def similarity(
    model: str | None,
    query_text: str | None,
    query_image: str | None,
    instruction: str | None,
    candidates_flag: bool,
    candidates: tuple[str, ...],
    device: str | None,
    dtype: str | None,
) -> None:
    """Print the cosine between a query and each candidate (U-MARVEL's demo)."""
    from core.settings import get_settings
    from evaluation.similarity import cosine_matrix, render
    from recall.embedder import Embedder
    from recall.prompts import Query

    if query_text is None and query_image is None:
        raise click.UsageError("give --query-text, --query-image or both")
    settings = get_settings()
    embedder = Embedder.from_pretrained(
        model or settings.recall_model,
        device=device or settings.device,
        dtype=dtype or settings.dtype,
    )
    query = Query(text=query_text, image=query_image, instruction=instruction)
    label = " + ".join(p for p in (query_image and Path(query_image).name, query_text) if p)
    matrix = cosine_matrix(embedder, [query], candidates)
    click.echo(render(matrix, [label], candidates))


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


main.add_command(remote.collections)
main.add_command(remote.search)

if __name__ == "__main__":
    main()
