"""Repositories: the narrow interface each aggregate offers. Tested on SQLite and PostgreSQL."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from sqlalchemy import Engine, delete, insert, select

from shipyard.store.schema import deployments, engines

__all__ = ["DeploymentRepo", "EngineRepo"]


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
