"""Revision counter for compare-and-set, chunk sets per chunker, and the embedding cache.

Revision ID: 0002
Revises: 0001
"""
import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("documents") as batch:
        batch.add_column(sa.Column("revision", sa.Integer, nullable=False, server_default="0"))
        batch.add_column(sa.Column("indexed_chunker", sa.String(128)))
    with op.batch_alter_table("chunks") as batch:
        batch.drop_constraint("uq_chunks_position", type_="unique")
        batch.create_unique_constraint("uq_chunks_position", ["document_id", "version", "chunker", "chunk_index"])
    # Documents indexed before this revision are served by the chunk set they were indexed with.
    op.execute(
        "UPDATE documents SET indexed_chunker = (SELECT min(c.chunker) FROM chunks c"
        " WHERE c.document_id = documents.id AND c.version = documents.indexed_version)"
        " WHERE indexed_version IS NOT NULL"
    )
    op.create_table(
        "embedding_cache",
        sa.Column("embedding", sa.String(255), primary_key=True),
        sa.Column("text_sha256", sa.String(64), primary_key=True),
        sa.Column("dimensions", sa.Integer, nullable=False),
        sa.Column("vector", sa.LargeBinary, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("embedding_cache")
    with op.batch_alter_table("chunks") as batch:
        batch.drop_constraint("uq_chunks_position", type_="unique")
        batch.create_unique_constraint("uq_chunks_position", ["document_id", "version", "chunk_index"])
    with op.batch_alter_table("documents") as batch:
        batch.drop_column("indexed_chunker")
        batch.drop_column("revision")
