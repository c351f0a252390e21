"""media parts of documents

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07 18:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "document_media",
        sa.Column("document_id", sa.Integer(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("key", sa.String(length=128), nullable=False),
        sa.ForeignKeyConstraint(
            ["document_id"],
            ["documents.id"],
            name=op.f("fk_document_media_document_id_documents"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("document_id", "position", name=op.f("pk_document_media")),
    )
    with op.batch_alter_table("document_media", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_document_media_key"), ["key"], unique=False)
    # Every image a document holds today is its first media part.
    op.execute(
        "INSERT INTO document_media (document_id, position, kind, key) "
        "SELECT id, 0, 'image', image_key FROM documents WHERE image_key IS NOT NULL"
    )


def downgrade() -> None:
    with op.batch_alter_table("document_media", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_document_media_key"))

    op.drop_table("document_media")
