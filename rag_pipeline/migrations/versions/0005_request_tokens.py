"""Hand-offs carry a token that is also a tag on their runs: a hand-off whose runs ended or
never appeared is released at once, instead of after a fixed ten minutes.

Revision ID: 0005
Revises: 0004
"""
import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("documents") as batch:
        batch.add_column(sa.Column("request_token", sa.String(40)))
    op.create_index("ix_documents_request_token", "documents", ["request_token"])


def downgrade() -> None:
    op.drop_index("ix_documents_request_token", table_name="documents")
    with op.batch_alter_table("documents") as batch:
        batch.drop_column("request_token")
