"""Load-test runs: the `loadtest_runs` table and its repository. Tested on SQLite and PostgreSQL.

A run record (see shipyard.loadtest.execute) is kept whole in `record`; the columns beside it are what
`shipyard loadtest list` shows and filters on without reading the JSON.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, Boolean, Column, Engine, Float, Index, Integer, String, Table, delete, insert, select

from shipyard.store.schema import metadata

__all__ = ["LoadtestRunRepo", "loadtest_runs"]

loadtest_runs = Table(
    "loadtest_runs",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("created_at", Float, nullable=False),  # unix seconds
    Column("kind", String(16), nullable=False),  # run | sweep
    Column("label", String(256)),
    Column("target", String(1024), nullable=False),
    Column("model", String(256), nullable=False),
    Column("shape", String(256), nullable=False),
    Column("workers", Integer, nullable=False),
    Column("passed", Boolean),  # None: no SLOs were given
    Column("requests", Integer, nullable=False),
    Column("throughput_rps", Float),
    Column("record", JSON, nullable=False),
    Index("ix_loadtest_runs_created_at", "created_at"),
)


class LoadtestRunRepo:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def add(self, record: dict[str, Any]) -> str:
        summary = record.get("summary") or {}
        row = {
            "id": record["id"],
            "created_at": float(record["created_at"]),
            "kind": record.get("kind", "run"),
            "label": record.get("label"),
            "target": record["target"],
            "model": record["model"],
            "shape": record["shape"],
            "workers": int(record.get("workers", 1)),
            "passed": record.get("passed"),
            "requests": int(summary.get("requests", 0)),
            "throughput_rps": summary.get("throughput_rps"),
            "record": record,
        }
        with self._engine.begin() as conn:
            conn.execute(insert(loadtest_runs), row)
        return row["id"]

    def list(self, limit: int = 20) -> list[dict[str, Any]]:
        """Newest first, without the records."""
        columns = [c for c in loadtest_runs.c if c.name != "record"]
        query = select(*columns).order_by(loadtest_runs.c.created_at.desc(), loadtest_runs.c.id.desc()).limit(limit)
        with self._engine.connect() as conn:
            return [dict(r) for r in conn.execute(query).mappings().all()]

    def find(self, id_or_prefix: str) -> list[str]:
        """Ids equal to, or starting with, the given text (a label matches too)."""
        table = loadtest_runs
        escaped = id_or_prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        query = select(table.c.id).where(table.c.id.like(escaped + "%", escape="\\") | (table.c.label == id_or_prefix))
        with self._engine.connect() as conn:
            ids = [r[0] for r in conn.execute(query.order_by(table.c.id)).all()]
        return [id_or_prefix] if id_or_prefix in ids else ids

    def get(self, run_id: str) -> dict[str, Any] | None:
        with self._engine.connect() as conn:
            row = conn.execute(select(loadtest_runs.c.record).where(loadtest_runs.c.id == run_id)).first()
        return dict(row[0]) if row else None

    def delete(self, run_id: str) -> bool:
        with self._engine.begin() as conn:
            return conn.execute(delete(loadtest_runs).where(loadtest_runs.c.id == run_id)).rowcount > 0
