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


def _call_span(start: float, deployment: str = "smollm2", **extra: object) -> dict:
    """The span a gateway call is recorded as (the root of its trace)."""
    trace_id = uuid.uuid4().hex
    row = {
        "trace_id": trace_id,
        "span_id": trace_id[16:],
        "parent_id": None,
        "name": "chat.completions",
        "kind": "llm",
        "source": "gateway",
        "start_time": start,
        "end_time": start + 0.0125,
        "duration_ms": 12.5,
        "status": "ok",
        "status_code": 200,
        "deployment": deployment,
        "engine": "local",
        "model": "smollm2",
        "stream": False,
        "attempts": 1,
        "prompt_tokens": 10,
        "completion_tokens": 3,
        "user": "alice",
    }
    row.update(extra)
    return row


def test_migrations_create_the_schema_and_are_idempotent(store_url: str) -> None:
    store = Store(store_url)
    tables = set(inspect(store.engine).get_table_names())
    assert {"engines", "deployments", "traces", "spans", "alembic_version"} <= tables
    assert "calls" not in tables  # gateway calls are spans now (traces_0002 drops the old table)
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


def test_gateway_calls_list_filter_and_page(store_url: str) -> None:
    store = Store(store_url)
    now = time.time()
    rows = [_call_span(now - i, deployment="a" if i % 2 else "b") for i in range(7)]
    sdk = {**_call_span(now), "kind": "function", "source": "sdk"}  # application spans are not gateway calls
    assert store.traces.write([*rows, sdk]) == 8
    assert len(store.traces.gateway_calls("a")) == 3
    newest = store.traces.gateway_calls(limit=3)
    assert [r["start_time"] for r in newest] == sorted((r["start_time"] for r in rows), reverse=True)[:3]
    older = store.traces.gateway_calls(limit=10, before=newest[-1]["start_time"])
    assert len(older) == 4
    assert {r["trace_id"] for r in newest} | {r["trace_id"] for r in older} == {r["trace_id"] for r in rows}
    assert all(r["user"] == "alice" and r["stream"] is False for r in newest)
    store.close()


def test_unreachable_database_is_a_clear_store_error() -> None:
    with pytest.raises(StoreError) as info:
        Store("postgresql://user:secret@127.0.0.1:1/nothing")
    assert "secret" not in str(info.value)
    assert "127.0.0.1:1" in str(info.value)


def test_redact_hides_passwords() -> None:
    assert _redact("postgresql+psycopg://u:pw@h:5432/db") == "postgresql+psycopg://u:***@h:5432/db"
    assert _redact("sqlite:////tmp/x.db") == "sqlite:////tmp/x.db"
