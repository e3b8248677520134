"""Tables. Change them only together with a new migration in migrations/versions/."""

from __future__ import annotations

from sqlalchemy import JSON, Column, Float, MetaData, String, Table

__all__ = ["deployments", "engines", "metadata"]

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
