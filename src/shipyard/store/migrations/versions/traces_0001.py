"""Traces and spans (issue 3): their own migration branch.

Revision ID: traces_0001
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "traces_0001"
down_revision = "0001"
branch_labels = ("traces",)
depends_on = None


def upgrade() -> None:
    op.create_table(
        "traces",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("name", sa.String(256)),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("project", sa.String(64)),
        sa.Column("deployment", sa.String(64)),
        sa.Column("status", sa.String(8), nullable=False),
        sa.Column("user", sa.String(256)),
        sa.Column("meta", sa.JSON),
        sa.Column("latency_ms", sa.Float),
        sa.Column("api_key_id", sa.String(64)),
        sa.Column("root_span_id", sa.String(16), nullable=False),
    )
    op.create_index("ix_traces_created_at", "traces", ["created_at"])
    op.create_index("ix_traces_deployment_created_at", "traces", ["deployment", "created_at"])
    op.create_index("ix_traces_status_created_at", "traces", ["status", "created_at"])
    op.create_index("ix_traces_user_created_at", "traces", ["user", "created_at"])
    op.create_index("ix_traces_project_created_at", "traces", ["project", "created_at"])
    op.create_table(
        "spans",
        sa.Column("trace_id", sa.String(32), nullable=False),
        sa.Column("span_id", sa.String(16), nullable=False),
        sa.Column("parent_id", sa.String(16)),
        sa.Column("name", sa.String(256), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("project", sa.String(64)),
        sa.Column("start_time", sa.Float, nullable=False),
        sa.Column("end_time", sa.Float),
        sa.Column("duration_ms", sa.Float),
        sa.Column("status", sa.String(8), nullable=False),
        sa.Column("status_code", sa.Integer),
        sa.Column("error", sa.Text),
        sa.Column("deployment", sa.String(64)),
        sa.Column("engine", sa.String(64)),
        sa.Column("model", sa.String(256)),
        sa.Column("stream", sa.Boolean),
        sa.Column("input", sa.Text),
        sa.Column("output", sa.Text),
        sa.Column("finish_reason", sa.String(32)),
        sa.Column("prompt_tokens", sa.Integer),
        sa.Column("completion_tokens", sa.Integer),
        sa.Column("cost", sa.Float),
        sa.Column("ttft_ms", sa.Float),
        sa.Column("itl_mean_ms", sa.Float),
        sa.Column("itl_p95_ms", sa.Float),
        sa.Column("attempts", sa.Integer),
        sa.Column("user", sa.String(256)),
        sa.Column("meta", sa.JSON),
        sa.Column("attributes", sa.JSON),
        sa.Column("api_key_id", sa.String(64)),
        sa.Column("prompt_ref", sa.String(256)),
        sa.PrimaryKeyConstraint("trace_id", "span_id", name="pk_spans"),
    )
    op.create_index("ix_spans_start_time", "spans", ["start_time"])


def downgrade() -> None:
    op.drop_table("spans")
    op.drop_table("traces")
