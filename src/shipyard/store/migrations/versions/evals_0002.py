"""Online evaluation scores of gateway calls.

Revision ID: evals_0002
Revises: evals_0001
"""

import sqlalchemy as sa
from alembic import op

revision = "evals_0002"
down_revision = "evals_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "trace_scores",
        sa.Column("trace_id", sa.String(32), primary_key=True),
        sa.Column("span_id", sa.String(16), primary_key=True),
        sa.Column("rule", sa.String(64), primary_key=True),
        sa.Column("scorer", sa.String(64), primary_key=True),
        sa.Column("deployment", sa.String(64)),
        sa.Column("span_time", sa.Float, nullable=False),
        sa.Column("scored_at", sa.Float, nullable=False),
        sa.Column("value", sa.Float),
        sa.Column("reason", sa.Text),
        sa.Column("details", sa.JSON),
    )
    op.create_index("ix_trace_scores_rule_time", "trace_scores", ["rule", "scorer", "span_time"])


def downgrade() -> None:
    op.drop_table("trace_scores")
