"""keyword search over document text; a collection's default search mode

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07 20:30:00.000000

Every document gets ``search_text`` (its terms, ``store.keywords``), filled here for the
documents there are: nothing is embedded again. Each store indexes it with its own
full-text engine: SQLite an FTS5 table kept by triggers, PostgreSQL a stored ``tsvector``
column with a GIN index.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from store.keywords import FTS_TABLE, VECTOR_COLUMN, search_text

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BATCH = 2000

SQLITE_TRIGGERS = {
    "documents_fts_insert": f"""
        CREATE TRIGGER documents_fts_insert AFTER INSERT ON documents BEGIN
            INSERT INTO {FTS_TABLE}(rowid, search_text) VALUES (new.id, new.search_text);
        END""",
    "documents_fts_delete": f"""
        CREATE TRIGGER documents_fts_delete AFTER DELETE ON documents BEGIN
            INSERT INTO {FTS_TABLE}({FTS_TABLE}, rowid, search_text)
                VALUES ('delete', old.id, old.search_text);
        END""",
    "documents_fts_update": f"""
        CREATE TRIGGER documents_fts_update AFTER UPDATE OF search_text ON documents BEGIN
            INSERT INTO {FTS_TABLE}({FTS_TABLE}, rowid, search_text)
                VALUES ('delete', old.id, old.search_text);
            INSERT INTO {FTS_TABLE}(rowid, search_text) VALUES (new.id, new.search_text);
        END""",
}


def upgrade() -> None:
    with op.batch_alter_table("collections", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("search_mode", sa.String(length=16), server_default="dense", nullable=False)
        )
    with op.batch_alter_table("documents", schema=None) as batch_op:
        batch_op.add_column(sa.Column("search_text", sa.Text(), nullable=True))
    _fill_search_text()
    if op.get_bind().dialect.name == "sqlite":
        op.execute(
            f"CREATE VIRTUAL TABLE {FTS_TABLE} USING fts5(search_text, content='documents', "
            "content_rowid='id', tokenize='unicode61 remove_diacritics 0')"
        )
        op.execute(f"INSERT INTO {FTS_TABLE}({FTS_TABLE}) VALUES ('rebuild')")
        for trigger in SQLITE_TRIGGERS.values():
            op.execute(trigger)
    else:
        op.execute(
            f"ALTER TABLE documents ADD COLUMN {VECTOR_COLUMN} tsvector GENERATED ALWAYS AS "
            "(to_tsvector('simple', coalesce(search_text, ''))) STORED"
        )
        op.execute(
            f"CREATE INDEX ix_documents_{VECTOR_COLUMN} ON documents USING gin ({VECTOR_COLUMN})"
        )


def _fill_search_text() -> None:
    bind = op.get_bind()
    documents = sa.table(
        "documents", sa.column("id", sa.Integer), sa.column("text"), sa.column("search_text")
    )
    after = 0
    while True:
        rows = bind.execute(
            sa.select(documents.c.id, documents.c.text)
            .where(documents.c.id > after, documents.c.text.is_not(None))
            .order_by(documents.c.id)
            .limit(BATCH)
        ).all()
        if not rows:
            return
        bind.execute(
            documents.update()
            .where(documents.c.id == sa.bindparam("row_id"))
            .values(search_text=sa.bindparam("terms")),
            [{"row_id": row.id, "terms": search_text(row.text)} for row in rows],
        )
        after = rows[-1].id


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        for name in SQLITE_TRIGGERS:
            op.execute(f"DROP TRIGGER IF EXISTS {name}")
        op.execute(f"DROP TABLE IF EXISTS {FTS_TABLE}")
    else:
        op.execute(f"DROP INDEX IF EXISTS ix_documents_{VECTOR_COLUMN}")
        op.execute(f"ALTER TABLE documents DROP COLUMN IF EXISTS {VECTOR_COLUMN}")
    with op.batch_alter_table("documents", schema=None) as batch_op:
        batch_op.drop_column("search_text")
    with op.batch_alter_table("collections", schema=None) as batch_op:
        batch_op.drop_column("search_mode")
