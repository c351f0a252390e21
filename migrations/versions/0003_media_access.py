"""media access: who submitted a query, media looked up by key

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 14:10:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("documents", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_documents_image_key"), ["image_key"], unique=False)

    with op.batch_alter_table("query_jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("api_key_id", sa.Integer(), nullable=True))
        batch_op.create_index(batch_op.f("ix_query_jobs_api_key_id"), ["api_key_id"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_query_jobs_query_image_key"), ["query_image_key"], unique=False
        )
        batch_op.create_foreign_key(
            batch_op.f("fk_query_jobs_api_key_id_api_keys"),
            "api_keys",
            ["api_key_id"],
            ["id"],
            ondelete="SET NULL",
        )


def downgrade() -> None:
    with op.batch_alter_table("query_jobs", schema=None) as batch_op:
        batch_op.drop_constraint(
            batch_op.f("fk_query_jobs_api_key_id_api_keys"), type_="foreignkey"
        )
        batch_op.drop_index(batch_op.f("ix_query_jobs_query_image_key"))
        batch_op.drop_index(batch_op.f("ix_query_jobs_api_key_id"))
        batch_op.drop_column("api_key_id")

    with op.batch_alter_table("documents", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_documents_image_key"))
