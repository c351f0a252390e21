"""a collection's documents in id order, for keyset pages

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-08 10:00:00.000000

Listing and exporting a collection's documents read them a page at a time after the last
id seen; an index on (collection_id, id) serves each page without sorting the collection.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_documents_collection_id_id", "documents", ["collection_id", "id"])


def downgrade() -> None:
    op.drop_index("ix_documents_collection_id_id", table_name="documents")
