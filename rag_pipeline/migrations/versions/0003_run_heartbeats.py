"""Run worker heartbeats, so a run whose process died is noticed and retried; when the current
version was registered, and whether its being overdue was reported.

Revision ID: 0003
Revises: 0002
"""
import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("documents") as batch:
        batch.add_column(sa.Column("registered_at", sa.DateTime(timezone=True)))
        batch.add_column(sa.Column("overdue_reported_at", sa.DateTime(timezone=True)))
    op.execute("UPDATE documents SET registered_at = updated_at")
    op.create_table(
        "run_heartbeats",
        sa.Column("run_id", sa.String(64), primary_key=True),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("beat_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
    )


def downgrade() -> None:
    op.drop_table("run_heartbeats")
    with op.batch_alter_table("documents") as batch:
        batch.drop_column("overdue_reported_at")
        batch.drop_column("registered_at")
