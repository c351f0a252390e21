"""Schema and migrations, on SQLite and on PostgreSQL."""

from __future__ import annotations

import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, select
from sqlalchemy.exc import IntegrityError

from store.db import (
    alembic_config,
    downgrade,
    make_engine,
    make_session_factory,
    session_scope,
    upgrade,
)
from store.tables import Base, Collection, Document, IngestJob, QueryJob


def test_one_alembic_head() -> None:
    script = ScriptDirectory.from_config(alembic_config("sqlite://"))
    assert len(script.get_heads()) == 1


def test_upgrade_downgrade_upgrade(database_url: str) -> None:
    upgrade(database_url)
    engine = make_engine(database_url)
    tables = set(inspect(engine).get_table_names())
    assert set(Base.metadata.tables) <= tables
    downgrade(database_url, "base")
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    upgrade(database_url)
    assert set(Base.metadata.tables) <= set(inspect(engine).get_table_names())
    engine.dispose()


def test_migrations_match_the_models(migrated_url: str) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    engine = make_engine(migrated_url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    engine.dispose()
    assert diff == []


def _collection(name: str = "docs") -> Collection:
    return Collection(name=name, recall_model="m", rerank_k=50, rerank_weight=0.1)


def test_rows_and_constraints(migrated_url: str) -> None:
    engine = make_engine(migrated_url)
    sessions = make_session_factory(engine)
    with session_scope(sessions) as session:
        collection = _collection()
        session.add(collection)
        session.flush()
        job = IngestJob(collection_id=collection.id, total=1)
        session.add(job)
        session.add(
            Document(collection_id=collection.id, external_id="a", text="x", ingest_job_id=job.id)
        )
        session.add(QueryJob(collection_id=collection.id, cache_key="k", request={"text": "x"}))
    with session_scope(sessions) as session:
        collection = session.scalar(select(Collection))
        assert collection.version == 1
        assert len(collection.uid) == 32
        doc = session.scalar(select(Document))
        assert (doc.status, doc.doc_metadata) == ("pending", {})
        assert session.scalar(select(QueryJob)).request == {"text": "x"}
    with pytest.raises(IntegrityError), session_scope(sessions) as session:
        session.add(Document(collection_id=collection.id, external_id="a"))
    with pytest.raises(IntegrityError), session_scope(sessions) as session:
        session.add(_collection())
    engine.dispose()
