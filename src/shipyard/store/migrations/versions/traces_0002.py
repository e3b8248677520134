"""Drop the minimal `calls` table: gateway calls are spans now (/api/v1/calls reads them).

Revision ID: traces_0002
Revises: traces_0001
"""

import sqlalchemy as sa
from alembic import op

revision = "traces_0002"
down_revision = "traces_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_table("calls")


def downgrade() -> None:
    op.create_table(
        "calls",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("endpoint", sa.String(32), nullable=False),
        sa.Column("deployment", sa.String(64), nullable=False),
        sa.Column("served_by", sa.String(64)),
        sa.Column("engine", sa.String(64)),
        sa.Column("model", sa.String(256)),
        sa.Column("stream", sa.Boolean, nullable=False),
        sa.Column("status", sa.Integer, nullable=False),
        sa.Column("error_code", sa.String(64)),
        sa.Column("error_message", sa.Text),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("latency_ms", sa.Float, nullable=False),
        sa.Column("ttft_ms", sa.Float),
        sa.Column("prompt_tokens", sa.Integer),
        sa.Column("completion_tokens", sa.Integer),
        sa.Column("user", sa.String(256)),
    )
    op.create_index("ix_calls_created_at", "calls", ["created_at"])
    op.create_index("ix_calls_deployment_created_at", "calls", ["deployment", "created_at"])
