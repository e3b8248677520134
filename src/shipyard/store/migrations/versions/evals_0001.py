"""Experiments and their per-row results.

Revision ID: evals_0001
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "evals_0001"
down_revision = "0001"
branch_labels = ("evals",)
depends_on = None


def upgrade() -> None:
    op.create_table(
        "experiments",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("finished_at", sa.Float),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("dataset", sa.String(128)),
        sa.Column("dataset_version", sa.Integer),
        sa.Column("target", sa.JSON, nullable=False),
        sa.Column("suite", sa.JSON, nullable=False),
        sa.Column("rows_total", sa.Integer, nullable=False),
        sa.Column("summary", sa.JSON),
    )
    op.create_index("ix_experiments_name_created", "experiments", ["name", "created_at"])
    op.create_table(
        "experiment_rows",
        sa.Column("experiment_id", sa.String(32), primary_key=True),
        sa.Column("index", sa.Integer, primary_key=True),
        sa.Column("input", sa.JSON),
        sa.Column("expected", sa.JSON),
        sa.Column("output", sa.Text),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("error", sa.Text),
        sa.Column("latency_ms", sa.Float),
        sa.Column("prompt_tokens", sa.Integer),
        sa.Column("completion_tokens", sa.Integer),
        sa.Column("cost", sa.Float),
        sa.Column("scores", sa.JSON, nullable=False),
        sa.Column("trace_id", sa.String(64)),
        sa.Column("metadata", sa.JSON),
    )


def downgrade() -> None:
    op.drop_table("experiment_rows")
    op.drop_table("experiments")
