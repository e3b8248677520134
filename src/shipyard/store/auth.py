"""Access-control tables and repositories: API keys, shared limit counters, the audit log, encrypted secrets.

Keys are stored as a lookup digest plus a salted HMAC (shipyard.auth.keys); no part of a key is stored.
Counters are rows updated with atomic upserts so that several gateway processes share them.
The audit log is append-only (triggers refuse UPDATE and DELETE) and hash-chained; `prev_hash` is unique,
so two writers can never both extend the chain from the same row.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import (
    JSON,
    Column,
    Engine,
    Float,
    Index,
    Integer,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    and_,
    insert,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError

from shipyard.store.schema import metadata

__all__ = [
    "AuditRepo",
    "AuthRepos",
    "CounterRepo",
    "KeyRepo",
    "SecretRepo",
    "api_keys",
    "audit_log",
    "limit_counters",
    "provider_secrets",
]

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("name", String(128), nullable=False),
    Column("owner", String(128), nullable=False),
    Column("created_by", String(32)),  # the key that created it; null for the bootstrap admin key
    Column("lookup", String(64), nullable=False, unique=True),  # SHA-256 of the whole key, to find the row
    Column("salt", String(32), nullable=False),
    Column("digest", String(64), nullable=False),  # HMAC-SHA256(salt, key)
    Column("scopes", JSON, nullable=False),
    Column("deployments", JSON, nullable=False),
    Column("limits", JSON),
    Column("created_at", Float, nullable=False),
    Column("expires_at", Float),
    Column("revoked_at", Float),
    Column("last_used_at", Float),
)

limit_counters = Table(
    "limit_counters",
    metadata,
    Column("subject", String(160), nullable=False),  # "key:<id>" or "deployment:<name>"
    Column("metric", String(16), nullable=False),  # "requests" | "tokens" | "spend"
    Column("window", Integer, nullable=False),  # minute, day or month number
    Column("value", Float, nullable=False),
    PrimaryKeyConstraint("subject", "metric", "window"),
)

audit_log = Table(
    "audit_log",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("at", Float, nullable=False),
    Column("actor", String(64)),
    Column("action", String(64), nullable=False),
    Column("target", String(512), nullable=False),
    Column("before", JSON),
    Column("after", JSON),
    Column("prev_hash", String(64), nullable=False, unique=True),
    Column("hash", String(64), nullable=False),
    Index("ix_audit_log_at", "at"),
)

provider_secrets = Table(
    "provider_secrets",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("ciphertext", Text, nullable=False),  # Fernet token
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
)


def _plain(row: Mapping[str, Any]) -> dict[str, Any]:
    """A row as a dict with plain str keys (SQLAlchemy's may be `quoted_name`, which orjson refuses)."""
    return {str(k): v for k, v in row.items()}


def _insert(engine: Engine, table: Table) -> Any:
    return (sqlite if engine.dialect.name == "sqlite" else postgresql).insert(table)


class KeyRepo:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def add(self, row: Mapping[str, Any]) -> None:
        with self._engine.begin() as conn:
            conn.execute(insert(api_keys), [dict(row)])

    def by_lookup(self, lookup: str) -> dict[str, Any] | None:
        with self._engine.connect() as conn:
            row = conn.execute(select(api_keys).where(api_keys.c.lookup == lookup)).mappings().first()
        return _plain(row) if row else None

    def get(self, key_id: str) -> dict[str, Any] | None:
        with self._engine.connect() as conn:
            row = conn.execute(select(api_keys).where(api_keys.c.id == key_id)).mappings().first()
        return _plain(row) if row else None

    def list(self, created_by: str | None = None) -> list[dict[str, Any]]:
        query = select(api_keys).order_by(api_keys.c.created_at)
        if created_by is not None:
            query = query.where(api_keys.c.created_by == created_by)
        with self._engine.connect() as conn:
            return [_plain(r) for r in conn.execute(query).mappings().all()]

    def count_admins(self) -> int:
        return sum(1 for row in self.list() if "admin" in row["scopes"] and row["revoked_at"] is None)

    def update(self, key_id: str, values: Mapping[str, Any]) -> None:
        with self._engine.begin() as conn:
            conn.execute(update(api_keys).where(api_keys.c.id == key_id).values(**values))

    def touch(self, key_id: str, at: float) -> None:
        self.update(key_id, {"last_used_at": at})


class CounterRepo:
    """Shared counters: leases for request counts, additive upserts for tokens and spend."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def claim(self, subject: str, metric: str, window: int, want: int, limit: float) -> tuple[int, float]:
        """Add `want` (or else 1) to the counter if it stays within `limit`; return (amount added, new total)."""
        where = and_(
            limit_counters.c.subject == subject, limit_counters.c.metric == metric, limit_counters.c.window == window
        )
        with self._engine.begin() as conn:
            for attempt in range(2):
                for amount in dict.fromkeys((want, 1)):
                    stmt = (
                        update(limit_counters)
                        .where(where, limit_counters.c.value + amount <= limit)
                        .values(value=limit_counters.c.value + amount)
                        .returning(limit_counters.c.value)
                    )
                    row = conn.execute(stmt).first()
                    if row is not None:
                        return amount, float(row[0])
                exists = conn.execute(select(limit_counters.c.value).where(where)).first()
                if exists is not None or attempt:
                    break
                blank = {"subject": subject, "metric": metric, "window": window, "value": 0.0}
                conn.execute(_insert(self._engine, limit_counters).values(**blank).on_conflict_do_nothing())
        return 0, float(limit)

    def release(self, subject: str, metric: str, window: int, amount: float) -> None:
        """Give back an unused lease."""
        with self._engine.begin() as conn:
            conn.execute(
                update(limit_counters)
                .where(
                    limit_counters.c.subject == subject,
                    limit_counters.c.metric == metric,
                    limit_counters.c.window == window,
                    limit_counters.c.value >= amount,
                )
                .values(value=limit_counters.c.value - amount)
            )

    def add(self, deltas: Iterable[tuple[str, str, int, float]]) -> dict[tuple[str, str, int], float]:
        """Add each delta atomically; return the new totals."""
        totals: dict[tuple[str, str, int], float] = {}
        with self._engine.begin() as conn:
            for subject, metric, window, amount in deltas:
                stmt = _insert(self._engine, limit_counters).values(
                    subject=subject, metric=metric, window=window, value=amount
                )
                stmt = stmt.on_conflict_do_update(
                    index_elements=["subject", "metric", "window"],
                    set_={"value": limit_counters.c.value + stmt.excluded.value},
                ).returning(limit_counters.c.value)
                totals[(subject, metric, window)] = float(conn.execute(stmt).scalar_one())
        return totals

    def read(self, keys: Iterable[tuple[str, str, int]]) -> dict[tuple[str, str, int], float]:
        found: dict[tuple[str, str, int], float] = {}
        with self._engine.connect() as conn:
            for subject, metric, window in keys:
                value = conn.execute(
                    select(limit_counters.c.value).where(
                        limit_counters.c.subject == subject,
                        limit_counters.c.metric == metric,
                        limit_counters.c.window == window,
                    )
                ).scalar_one_or_none()
                found[(subject, metric, window)] = float(value or 0.0)
        return found

    def prune(self, metric: str, before_window: int) -> None:
        with self._engine.begin() as conn:
            conn.execute(
                limit_counters.delete().where(
                    limit_counters.c.metric == metric, limit_counters.c.window < before_window
                )
            )


class AuditRepo:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def last(self) -> dict[str, Any] | None:
        with self._engine.connect() as conn:
            row = conn.execute(select(audit_log).order_by(audit_log.c.seq.desc()).limit(1)).mappings().first()
        return _plain(row) if row else None

    def append(self, row: Mapping[str, Any]) -> bool:
        """Insert one row; False when another writer extended the chain from the same row first."""
        try:
            with self._engine.begin() as conn:
                conn.execute(insert(audit_log), [dict(row)])
        except IntegrityError:
            return False
        return True

    def list(self, limit: int = 100, after_seq: int = 0, actor: str | None = None) -> list[dict[str, Any]]:
        query = select(audit_log).where(audit_log.c.seq > after_seq).order_by(audit_log.c.seq).limit(limit)
        if actor is not None:
            query = query.where(audit_log.c.actor == actor)
        with self._engine.connect() as conn:
            return [_plain(r) for r in conn.execute(query).mappings().all()]

    def all(self) -> list[dict[str, Any]]:
        with self._engine.connect() as conn:
            return [_plain(r) for r in conn.execute(select(audit_log).order_by(audit_log.c.seq)).mappings().all()]


class SecretRepo:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def put(self, name: str, ciphertext: str) -> bool:
        """Store or replace; True when it replaced an existing secret."""
        now = time.time()
        with self._engine.begin() as conn:
            exists = conn.execute(select(provider_secrets.c.name).where(provider_secrets.c.name == name)).first()
            if exists:
                conn.execute(
                    update(provider_secrets)
                    .where(provider_secrets.c.name == name)
                    .values(ciphertext=ciphertext, updated_at=now)
                )
            else:
                conn.execute(
                    insert(provider_secrets),
                    [{"name": name, "ciphertext": ciphertext, "created_at": now, "updated_at": now}],
                )
        return exists is not None

    def get(self, name: str) -> str | None:
        with self._engine.connect() as conn:
            return conn.execute(
                select(provider_secrets.c.ciphertext).where(provider_secrets.c.name == name)
            ).scalar_one_or_none()

    def names(self) -> list[dict[str, Any]]:
        cols = (provider_secrets.c.name, provider_secrets.c.created_at, provider_secrets.c.updated_at)
        with self._engine.connect() as conn:
            return [_plain(r) for r in conn.execute(select(*cols).order_by(provider_secrets.c.name)).mappings()]

    def delete(self, name: str) -> bool:
        with self._engine.begin() as conn:
            return conn.execute(provider_secrets.delete().where(provider_secrets.c.name == name)).rowcount > 0


class AuthRepos:
    """The four repositories of access control, reachable as `store.auth`."""

    def __init__(self, engine: Engine) -> None:
        self.keys = KeyRepo(engine)
        self.counters = CounterRepo(engine)
        self.audit = AuditRepo(engine)
        self.secrets = SecretRepo(engine)
