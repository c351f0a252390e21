"""``umarvel`` commands for operators of the stores: the schema, API keys, the audit log,
query-job clean-up, the outbox and the caches."""

from __future__ import annotations

from typing import Any

import click


@click.group()
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


@click.group()
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


@click.command("audit")
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


@click.group()
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


@click.group()
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


@click.group()
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


COMMANDS = [db, keys, audit, jobs, outbox, cache]
