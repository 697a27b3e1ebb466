"""Uploads from object storage: the source's change token (an S3 ETag), where a file's mtime
(`mtime_ns`) says nothing. NULL for files, whose behaviour is unchanged.

Revision ID: 0006
Revises: 0005
"""
import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("documents") as batch:
        batch.add_column(sa.Column("change_token", sa.String(200)))


def downgrade() -> None:
    with op.batch_alter_table("documents") as batch:
        batch.drop_column("change_token")
