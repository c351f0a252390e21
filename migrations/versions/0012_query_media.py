"""a query job's media part is an image or a video

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-08 12:00:00.000000

``query_jobs.query_image_key`` becomes ``query_media_key``: the stored media a query was
made with, whichever kind it is. Its index (the media route's access rule and the media
clean-up look keys up there) is renamed with it.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _rename(old: str, new: str) -> None:
    op.drop_index(f"ix_query_jobs_{old}", table_name="query_jobs")
    with op.batch_alter_table("query_jobs") as batch_op:
        batch_op.alter_column(old, new_column_name=new, existing_type=sa.String(length=128))
    op.create_index(f"ix_query_jobs_{new}", "query_jobs", [new], unique=False)


def upgrade() -> None:
    _rename("query_image_key", "query_media_key")


def downgrade() -> None:
    _rename("query_media_key", "query_image_key")
