"""Engines, sessions and migrations.

Forked Celery workers use a ``NullPool`` engine so that no connection crosses a fork.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


def make_engine(url: str, *, nullpool: bool = False) -> Engine:
    """An engine for ``url``; SQLite gets WAL and a busy timeout so several processes share it."""
    parsed = make_url(url)
    kwargs: dict[str, Any] = {"future": True}
    if nullpool:
        kwargs["poolclass"] = NullPool
    else:
        kwargs["pool_pre_ping"] = True
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        kwargs["connect_args"] = {"timeout": 30}
    engine = create_engine(url, **kwargs)
    if parsed.get_backend_name() == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    _count_round_trips(engine)
    return engine


def _count_round_trips(engine: Engine) -> None:
    from core.metrics import SQL_ROUND_TRIPS

    statements, commits = SQL_ROUND_TRIPS.labels("statement"), SQL_ROUND_TRIPS.labels("commit")
    checkouts = SQL_ROUND_TRIPS.labels("checkout")
    event.listen(engine, "before_cursor_execute", lambda *_: statements.inc())
    event.listen(engine, "commit", lambda *_: commits.inc())
    event.listen(engine.pool, "checkout", lambda *_: checkouts.inc())


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def make_session_factory(engine: Engine, redis_client: Any = None) -> sessionmaker[Session]:
    """Sessions; with ``redis_client``, their changes to collections and API keys move the
    fences of the copies the query path reads from Redis (``core.fences``)."""
    factory = sessionmaker(engine, expire_on_commit=False)
    if redis_client is not None:
        from core.fences import Fences, watch

        watch(factory, Fences(redis_client))
    return factory


@contextmanager
def session_scope(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A transaction: commit on success, roll back on any exception."""
    session = factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


# PostgreSQL's codes for a transaction that lost a race and may simply run again.
_RACES = {
    "40P01": "a deadlock with a concurrent request",
    "40001": "a serialization failure against a concurrent request",
    "23505": "a concurrent request wrote the same row",
    "23503": "a concurrent request deleted a row this one refers to",
}


def lost_race(exc: BaseException) -> str | None:
    """Why ``exc`` is a race with a concurrent transaction (worth one more try), or None."""
    if not isinstance(exc, DBAPIError):
        return None
    code = getattr(exc.orig, "sqlstate", None)
    if code in _RACES:
        return _RACES[code]
    if "database is locked" in str(exc.orig):  # SQLite's busy timeout ran out
        return "the database was locked by a concurrent request"
    return None


def alembic_config(url: str) -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade(url: str, revision: str = "head") -> None:
    """Bring the schema at ``url`` to ``revision`` (Alembic)."""
    from alembic import command

    command.upgrade(alembic_config(url), revision)


def downgrade(url: str, revision: str) -> None:
    from alembic import command

    command.downgrade(alembic_config(url), revision)
