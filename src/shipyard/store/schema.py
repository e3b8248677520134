"""Tables. Change them only together with a new migration in migrations/versions/."""

from __future__ import annotations

from sqlalchemy import JSON, Boolean, Column, Float, Index, Integer, MetaData, String, Table, Text

__all__ = ["calls", "deployments", "engines", "metadata"]

metadata = MetaData()

engines = Table(
    "engines",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("kind", String(32), nullable=False),
    Column("config", JSON, nullable=False),  # as configured; keys appear only as env-variable names
    Column("updated_at", Float, nullable=False),
)

deployments = Table(
    "deployments",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("config", JSON, nullable=False),
    Column("updated_at", Float, nullable=False),
)

calls = Table(
    "calls",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("created_at", Float, nullable=False),  # unix seconds
    Column("endpoint", String(32), nullable=False),
    Column("deployment", String(64), nullable=False),
    Column("served_by", String(64)),  # the deployment that answered (differs after a fallback)
    Column("engine", String(64)),
    Column("model", String(256)),
    Column("stream", Boolean, nullable=False),
    Column("status", Integer, nullable=False),
    Column("error_code", String(64)),
    Column("error_message", Text),
    Column("attempts", Integer, nullable=False),
    Column("latency_ms", Float, nullable=False),
    Column("ttft_ms", Float),
    Column("prompt_tokens", Integer),
    Column("completion_tokens", Integer),
    Column("user", String(256)),
    Index("ix_calls_created_at", "created_at"),
    Index("ix_calls_deployment_created_at", "deployment", "created_at"),
)
