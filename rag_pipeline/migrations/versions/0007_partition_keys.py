"""Readable partition keys: each document's Dagster partition key (`kb/path`, or a sanitized
form with a hash when Dagster cannot hold the name) is stored beside its id, so steps map keys
to ids and the sensor ids to keys in indexed lookups. The document id stays the identity of
rows and Qdrant points; an index built with document ids as partition keys moves its
partitions to these keys at the sensor's next ticks (defs/sensors.py), re-embedding nothing.

Revision ID: 0007
Revises: 0006
"""
import sqlalchemy as sa
from alembic import op

from rag_pipeline.core.batching import batched
from rag_pipeline.core.identity import partition_key

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("documents") as batch:
        batch.add_column(sa.Column("partition_key", sa.String(255)))
    conn = op.get_bind()
    documents = sa.table(
        "documents", sa.column("id"), sa.column("knowledge_base"), sa.column("path"), sa.column("partition_key")
    )
    rows = conn.execute(sa.select(documents.c.id, documents.c.knowledge_base, documents.c.path)).all()
    update = documents.update().where(documents.c.id == sa.bindparam("b_id")).values(partition_key=sa.bindparam("b_key"))
    for part in batched(rows):
        conn.execute(update, [{"b_id": r.id, "b_key": partition_key(r.knowledge_base, r.path)} for r in part])
    with op.batch_alter_table("documents") as batch:
        batch.alter_column("partition_key", existing_type=sa.String(255), nullable=False)
    op.create_index("ix_documents_partition_key", "documents", ["partition_key"], unique=True)


def downgrade() -> None:
    op.drop_index("ix_documents_partition_key", table_name="documents")
    with op.batch_alter_table("documents") as batch:
        batch.drop_column("partition_key")
