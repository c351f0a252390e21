"""the keys that asked for each query job

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07 16:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "query_job_keys",
        sa.Column("job_id", sa.String(length=32), nullable=False),
        sa.Column("api_key_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("withdrawn", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"],
            ["query_jobs.id"],
            name=op.f("fk_query_job_keys_job_id_query_jobs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("job_id", "api_key_id", name=op.f("pk_query_job_keys")),
    )


def downgrade() -> None:
    op.drop_table("query_job_keys")
