"""Schema and migrations, on SQLite and on PostgreSQL."""

from __future__ import annotations

import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, select
from sqlalchemy.exc import IntegrityError, StatementError

from core.contract import Fusion, Hit, RankedHit, RerankPlan, SearchMode, SearchPlan
from store.db import (
    alembic_config,
    downgrade,
    make_engine,
    make_session_factory,
    session_scope,
    upgrade,
)
from store.keywords import include_object
from store.states import DocumentStatus, QueryStatus
from store.tables import Base, Collection, Document, IngestJob, QueryJob

PLAN = SearchPlan(text="x", depth=10, top_k=3, rerank=RerankPlan(enabled=True, k=10, weight=0.1))


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
        context = MigrationContext.configure(conn, opts={"include_object": include_object})
        diff = compare_metadata(context, Base.metadata)
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
        session.add(QueryJob(collection_id=collection.id, cache_key="k", request=PLAN))
    with session_scope(sessions) as session:
        collection = session.scalar(select(Collection))
        assert collection.version == 1
        assert len(collection.uid) == 32
        doc = session.scalar(select(Document))
        assert (doc.status, doc.doc_metadata) == (DocumentStatus.PENDING, {})
        assert type(doc.status) is DocumentStatus
        query = session.scalar(select(QueryJob))
        assert query.request == PLAN
        assert query.status is QueryStatus.QUEUED
    with pytest.raises(IntegrityError), session_scope(sessions) as session:
        session.add(Document(collection_id=collection.id, external_id="a"))
    with pytest.raises(IntegrityError), session_scope(sessions) as session:
        session.add(_collection())
    engine.dispose()


def test_typed_columns_refuse_what_their_type_does_not_hold(migrated_url: str) -> None:
    engine = make_engine(migrated_url)
    sessions = make_session_factory(engine)
    with session_scope(sessions) as session:
        collection = _collection()
        session.add(collection)
        session.flush()
        collection_id = collection.id
    hits = [Hit(document_id="a", cosine=0.5)]
    ranked = [RankedHit(document_id="a", cosine=0.5, p_yes=None, score=0.5)]
    with session_scope(sessions) as session:
        job = QueryJob(collection_id=collection_id, cache_key="k", request=PLAN)
        job.recall_hits, job.results = hits, ranked
        session.add(job)
    with session_scope(sessions) as session:
        job = session.scalar(select(QueryJob))
        assert (job.recall_hits, job.results) == (hits, ranked)
    refused = [
        {"status": "sleeping"},  # no QueryStatus
        {"request": {"text": "x"}},  # a plan without top_k and rerank
        {"recall_hits": [{"document_id": "a"}]},  # a hit without its cosine
    ]
    for values in refused:
        with pytest.raises(StatementError), session_scope(sessions) as session:
            session.add(
                QueryJob(
                    **{"collection_id": collection_id, "cache_key": "k", "request": PLAN, **values}
                )
            )
    engine.dispose()


def test_a_plan_digest_is_its_content() -> None:
    same = SearchPlan.model_validate(PLAN.model_dump(mode="json"))
    assert same.digest() == PLAN.digest()
    other = PLAN.model_copy(update={"depth": 20})
    assert other.digest() != PLAN.digest()
    # Pages of one search share its digest: the job, and the cached ranking.
    page_two = PLAN.model_copy(update={"top_k": 5, "offset": 5})
    assert page_two.digest() == PLAN.digest()
    hybrid = PLAN.model_copy(update={"mode": SearchMode.HYBRID, "fusion": Fusion()})
    assert hybrid.digest() != PLAN.digest()
