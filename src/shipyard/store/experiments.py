"""Experiments: one evaluation run (suite, dataset version, target) and its per-row results.

Rows are upserted by (experiment, index), so a resumed run rewrites only the rows it redoes.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import JSON, Column, Engine, Float, Index, Integer, String, Table, Text, delete, insert, select, update

from shipyard.store.schema import metadata

__all__ = ["ExperimentRepo", "experiment_rows", "experiments"]

experiments = Table(
    "experiments",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("name", String(128), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("finished_at", Float),
    Column("status", String(16), nullable=False),  # running | finished | failed
    Column("dataset", String(128)),
    Column("dataset_version", Integer),
    Column("target", JSON, nullable=False),  # deployment, prompt ref, params
    Column("suite", JSON, nullable=False),  # the suite as run (scorers, options, concurrency)
    Column("rows_total", Integer, nullable=False),
    Column("summary", JSON),  # per scorer: mean and bootstrap interval; latency, tokens, cost, errors
    Index("ix_experiments_name_created", "name", "created_at"),
)

experiment_rows = Table(
    "experiment_rows",
    metadata,
    Column("experiment_id", String(32), primary_key=True),
    Column("index", Integer, primary_key=True),
    Column("input", JSON),
    Column("expected", JSON),
    Column("output", Text),
    Column("status", String(16), nullable=False),  # ok | error
    Column("error", Text),
    Column("latency_ms", Float),
    Column("prompt_tokens", Integer),
    Column("completion_tokens", Integer),
    Column("cost", Float),
    Column("scores", JSON, nullable=False),  # scorer -> {"value", "reason"}
    Column("trace_id", String(64)),
    Column("metadata", JSON),
)

_ROW_FIELDS = [c.name for c in experiment_rows.columns]


class ExperimentRepo:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def create(self, experiment: Mapping[str, Any]) -> None:
        row = {"created_at": time.time(), "status": "running", "finished_at": None, "summary": None, **experiment}
        with self._engine.begin() as conn:
            conn.execute(insert(experiments), [row])

    def get(self, experiment_id: str) -> dict[str, Any] | None:
        with self._engine.connect() as conn:
            row = conn.execute(select(experiments).where(experiments.c.id == experiment_id)).mappings().first()
        return dict(row) if row else None

    def list(self, limit: int = 50, name: str | None = None) -> list[dict[str, Any]]:
        query = select(experiments).order_by(experiments.c.created_at.desc()).limit(limit)
        if name is not None:
            query = query.where(experiments.c.name == name)
        with self._engine.connect() as conn:
            return [dict(r) for r in conn.execute(query).mappings().all()]

    def save_rows(self, experiment_id: str, rows: Iterable[Mapping[str, Any]]) -> int:
        """Insert or replace these rows' results (one transaction)."""
        items = [{k: r.get(k) for k in _ROW_FIELDS} | {"experiment_id": experiment_id} for r in rows]
        if not items:
            return 0
        indexes = [item["index"] for item in items]
        with self._engine.begin() as conn:
            conn.execute(
                delete(experiment_rows).where(
                    experiment_rows.c.experiment_id == experiment_id, experiment_rows.c.index.in_(indexes)
                )
            )
            conn.execute(insert(experiment_rows), items)
        return len(items)

    def rows(self, experiment_id: str) -> list[dict[str, Any]]:
        query = (
            select(experiment_rows)
            .where(experiment_rows.c.experiment_id == experiment_id)
            .order_by(experiment_rows.c.index)
        )
        with self._engine.connect() as conn:
            return [dict(r) for r in conn.execute(query).mappings().all()]

    def finish(self, experiment_id: str, status: str, summary: Mapping[str, Any]) -> None:
        values = {"status": status, "summary": dict(summary), "finished_at": time.time()}
        with self._engine.begin() as conn:
            conn.execute(update(experiments).where(experiments.c.id == experiment_id).values(**values))
