"""The store's repositories on both real backends: SQLite (WAL) and PostgreSQL."""

from __future__ import annotations

import time
import uuid

import pytest
from sqlalchemy import inspect, text

from shipyard.errors import StoreError
from shipyard.store import Store
from shipyard.store.db import _redact

pytestmark = pytest.mark.postgres


def _call(created_at: float, deployment: str = "smollm2", **extra: object) -> dict:
    row = {
        "id": uuid.uuid4().hex,
        "created_at": created_at,
        "endpoint": "chat.completions",
        "deployment": deployment,
        "served_by": deployment,
        "engine": "local",
        "model": "smollm2",
        "stream": False,
        "status": 200,
        "error_code": None,
        "error_message": None,
        "attempts": 1,
        "latency_ms": 12.5,
        "ttft_ms": None,
        "prompt_tokens": 10,
        "completion_tokens": 3,
        "user": "alice",
    }
    row.update(extra)
    return row


def test_migrations_create_the_schema_and_are_idempotent(store_url: str) -> None:
    store = Store(store_url)
    tables = set(inspect(store.engine).get_table_names())
    assert {"engines", "deployments", "calls", "alembic_version"} <= tables
    store.close()
    again = Store(store_url)  # opening twice re-runs nothing and loses nothing
    with again.engine.connect() as conn:
        applied = set(conn.execute(text("select version_num from alembic_version")).scalars())
    # Each feature migrates on its own branch from 0001 (store/db.py upgrades to "heads"): every head is applied.
    from alembic.script import ScriptDirectory

    from shipyard.store.db import _MIGRATIONS

    assert applied == set(ScriptDirectory(str(_MIGRATIONS)).get_heads())
    assert "0001" not in applied or applied == {"0001"}
    again.close()


def test_sqlite_uses_wal(tmp_path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'x.db'}")
    with store.engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar_one() == "wal"
    store.close()


def test_engines_and_deployments_replace_all(store_url: str) -> None:
    store = Store(store_url)
    store.engines.replace_all({"a": {"kind": "openai", "base_url": "http://x/v1", "api_key_env": "KEY"}})
    store.engines.replace_all({"b": {"kind": "local", "model": "bundled:smollm2"}})
    names = [row["name"] for row in store.engines.list()]
    assert names == ["b"]
    assert store.engines.get("b")["kind"] == "local"
    assert store.engines.get("a") is None
    store.deployments.replace_all({"d1": {"targets": [{"engine": "b"}]}, "d0": {"targets": []}})
    assert [row["name"] for row in store.deployments.list()] == ["d0", "d1"]
    assert store.deployments.get("d1")["config"] == {"targets": [{"engine": "b"}]}
    store.close()


def test_calls_add_list_count_and_page(store_url: str) -> None:
    store = Store(store_url)
    now = time.time()
    rows = [_call(now - i, deployment="a" if i % 2 else "b") for i in range(7)]
    assert store.calls.add_many(rows) == 7
    assert store.calls.count() == 7
    assert store.calls.count("a") == 3
    newest = store.calls.list(limit=3)
    assert [r["created_at"] for r in newest] == sorted((r["created_at"] for r in rows), reverse=True)[:3]
    older = store.calls.list(limit=10, before=newest[-1]["created_at"])
    assert len(older) == 4
    assert {r["id"] for r in newest} | {r["id"] for r in older} == {r["id"] for r in rows}
    one = store.calls.get(rows[0]["id"])
    assert one is not None and one["user"] == "alice" and one["stream"] is False
    assert store.calls.get("missing") is None
    store.close()


def test_duplicate_call_id_is_refused(store_url: str) -> None:
    from sqlalchemy.exc import IntegrityError

    store = Store(store_url)
    row = _call(time.time())
    store.calls.add_many([row])
    with pytest.raises(IntegrityError):
        store.calls.add_many([row])
    assert store.calls.count() == 1
    store.close()


def test_unreachable_database_is_a_clear_store_error() -> None:
    with pytest.raises(StoreError) as info:
        Store("postgresql://user:secret@127.0.0.1:1/nothing")
    assert "secret" not in str(info.value)
    assert "127.0.0.1:1" in str(info.value)


def test_redact_hides_passwords() -> None:
    assert _redact("postgresql+psycopg://u:pw@h:5432/db") == "postgresql+psycopg://u:***@h:5432/db"
    assert _redact("sqlite:////tmp/x.db") == "sqlite:////tmp/x.db"
