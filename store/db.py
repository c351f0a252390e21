"""Engines, sessions and migrations.

Every process keeps a pool of open connections: opening one to PostgreSQL costs several
milliseconds (a TCP handshake, authentication, a server process), about as much as all the
statements of a query step. Each checkout pings its connection first, so a database
restart costs a reconnect, not a failed request; a forked child drops the connections it
inherited (never shares them with its parent) and opens its own.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy
from sqlalchemy import Engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


def make_engine(url: str, *, pool_size: int = 5) -> Engine:
    """An engine for ``url`` keeping up to ``pool_size`` connections open (as many more
    open under load and close when returned); SQLite gets WAL and a busy timeout so several
    processes share it."""
    parsed = make_url(url)
    kwargs: dict[str, Any] = {"future": True, "pool_pre_ping": True}
    if parsed.get_backend_name() == "postgresql":
        kwargs.update(pool_size=pool_size, max_overflow=pool_size)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        kwargs["connect_args"] = {"timeout": 30}
    # Looked up when called: tracing (core.tracing) wraps it once this module is imported.
    engine = sqlalchemy.create_engine(url, **kwargs)
    if parsed.get_backend_name() == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    _count_round_trips(engine)
    _forget_at_fork(engine)
    return engine


def _forget_at_fork(engine: Engine) -> None:
    """In a forked child, drop (without closing) the parent's pooled connections."""
    ref = weakref.ref(engine)

    def forget() -> None:
        if (alive := ref()) is not None:
            alive.dispose(close=False)

    os.register_at_fork(after_in_child=forget)


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
    fences of the copies the query path reads from Redis (``store.fences``)."""
    factory = sessionmaker(engine, expire_on_commit=False)
    if redis_client is not None:
        from store.fences import Fences, watch

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
