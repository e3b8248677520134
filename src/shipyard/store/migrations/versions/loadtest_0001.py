"""Load-test runs.

Revision ID: loadtest_0001
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "loadtest_0001"
down_revision = "0001"
branch_labels = ("loadtest",)
depends_on = None


def upgrade() -> None:
    op.create_table(
        "loadtest_runs",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("label", sa.String(256)),
        sa.Column("target", sa.String(1024), nullable=False),
        sa.Column("model", sa.String(256), nullable=False),
        sa.Column("shape", sa.String(256), nullable=False),
        sa.Column("workers", sa.Integer, nullable=False),
        sa.Column("passed", sa.Boolean),
        sa.Column("requests", sa.Integer, nullable=False),
        sa.Column("throughput_rps", sa.Float),
        sa.Column("record", sa.JSON, nullable=False),
    )
    op.create_index("ix_loadtest_runs_created_at", "loadtest_runs", ["created_at"])


def downgrade() -> None:
    op.drop_table("loadtest_runs")
