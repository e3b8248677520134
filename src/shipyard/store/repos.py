"""Repositories: the narrow interface each aggregate offers. Tested on SQLite and PostgreSQL."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import Engine, delete, func, insert, select

from shipyard.store.schema import calls, deployments, engines

__all__ = ["CallRepo", "DeploymentRepo", "EngineRepo"]


class _NamedConfigRepo:
    """Engines and deployments: the configured set, replaced as a whole on each start."""

    table = engines

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def _row(self, name: str, config: Mapping[str, Any], now: float) -> dict[str, Any]:
        return {"name": name, "config": dict(config), "updated_at": now}

    def replace_all(self, items: Mapping[str, Mapping[str, Any]]) -> None:
        now = time.time()
        with self._engine.begin() as conn:
            conn.execute(delete(self.table))
            if items:
                conn.execute(insert(self.table), [self._row(n, c, now) for n, c in items.items()])

    def list(self) -> list[dict[str, Any]]:
        with self._engine.connect() as conn:
            rows = conn.execute(select(self.table).order_by(self.table.c.name)).mappings().all()
        return [dict(r) for r in rows]

    def get(self, name: str) -> dict[str, Any] | None:
        with self._engine.connect() as conn:
            row = conn.execute(select(self.table).where(self.table.c.name == name)).mappings().first()
        return dict(row) if row else None


class EngineRepo(_NamedConfigRepo):
    table = engines

    def _row(self, name: str, config: Mapping[str, Any], now: float) -> dict[str, Any]:
        return {"name": name, "kind": config["kind"], "config": dict(config), "updated_at": now}


class DeploymentRepo(_NamedConfigRepo):
    table = deployments


class CallRepo:
    """The minimal record of each gateway call (full tracing builds on it)."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def add_many(self, records: Iterable[Mapping[str, Any]]) -> int:
        rows = [dict(r) for r in records]
        if rows:
            with self._engine.begin() as conn:
                conn.execute(insert(calls), rows)
        return len(rows)

    def count(self, deployment: str | None = None) -> int:
        query = select(func.count()).select_from(calls)
        if deployment is not None:
            query = query.where(calls.c.deployment == deployment)
        with self._engine.connect() as conn:
            return int(conn.execute(query).scalar_one())

    def list(self, limit: int = 50, deployment: str | None = None, before: float | None = None) -> list[dict[str, Any]]:
        query = select(calls).order_by(calls.c.created_at.desc(), calls.c.id.desc()).limit(limit)
        if deployment is not None:
            query = query.where(calls.c.deployment == deployment)
        if before is not None:
            query = query.where(calls.c.created_at < before)
        with self._engine.connect() as conn:
            return [dict(r) for r in conn.execute(query).mappings().all()]

    def get(self, call_id: str) -> dict[str, Any] | None:
        with self._engine.connect() as conn:
            row = conn.execute(select(calls).where(calls.c.id == call_id)).mappings().first()
        return dict(row) if row else None
