"""The audit log: append-only, hash-chained, verified; on SQLite and PostgreSQL, through the store, the real
server's API and `shipyard audit verify`."""

from __future__ import annotations

import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError

from shipyard.auth.audit import AuditLog, verify_chain
from shipyard.auth.keys import new_key
from shipyard.store import Store
from tests.helpers import PYTHON, FakeUpstreamProcess, ShipyardProcess
from tests.test_auth import auth_config, bearer, fake, make_key, start_auth_server  # noqa: F401 - fixture


@pytest.fixture()
def store(store_url: str) -> Iterator[Store]:
    opened = Store(store_url)
    try:
        yield opened
    finally:
        opened.close()


def _fill(log: AuditLog, n: int = 5) -> None:
    for i in range(n):
        log.record("key-1", "prompt.update", f"prompt:p{i}", {"version": i}, {"version": i + 1, "token": "s3cr3t!!"})


def _drop_guards(store: Store) -> None:
    """What an attacker with DDL rights does first: remove the append-only triggers."""
    with store.engine.begin() as conn:
        if store.dialect == "postgresql":
            conn.execute(sa.text("DROP TRIGGER audit_log_append_only ON audit_log"))
        else:
            conn.execute(sa.text("DROP TRIGGER audit_log_no_update"))
            conn.execute(sa.text("DROP TRIGGER audit_log_no_delete"))


def test_chain_verifies_and_secrets_are_redacted(store: Store) -> None:
    log = AuditLog(store.auth.audit)
    _fill(log)
    assert log.verify() == []
    rows = store.auth.audit.all()
    assert [r["seq"] for r in rows] == [1, 2, 3, 4, 5]
    assert rows[0]["after"] == {"version": 1, "token": "[redacted]"}
    assert rows[1]["prev_hash"] == rows[0]["hash"]


def test_the_database_refuses_updates_and_deletes(store: Store) -> None:
    _fill(AuditLog(store.auth.audit), 2)
    for statement in ("UPDATE audit_log SET actor = 'mallory'", "DELETE FROM audit_log"):
        with pytest.raises(DBAPIError), store.engine.begin() as conn:
            conn.execute(sa.text(statement))
    assert len(store.auth.audit.all()) == 2


def test_a_changed_row_is_detected(store: Store) -> None:
    log = AuditLog(store.auth.audit)
    _fill(log)
    _drop_guards(store)
    with store.engine.begin() as conn:
        conn.execute(sa.text("UPDATE audit_log SET actor = 'someone-else' WHERE seq = 3"))
    problems = log.verify()
    assert problems == ["row 3: its contents do not match its hash (the row was changed)"]


def test_a_deleted_row_is_detected(store: Store) -> None:
    log = AuditLog(store.auth.audit)
    _fill(log)
    _drop_guards(store)
    with store.engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM audit_log WHERE seq = 2"))
    problems = log.verify()
    assert any("missing" in p for p in problems) and any("row 3" in p and "follow" in p for p in problems)


def test_a_rewritten_chain_is_detected_without_the_old_head(store: Store) -> None:
    """Recomputing one row's hash (after changing it) breaks the link of the next row."""
    log = AuditLog(store.auth.audit)
    _fill(log)
    _drop_guards(store)
    rows = store.auth.audit.all()
    forged = {**rows[1], "actor": "mallory"}
    from shipyard.auth.audit import row_hash

    with store.engine.begin() as conn:
        conn.execute(
            sa.text("UPDATE audit_log SET actor = 'mallory', hash = :h WHERE seq = 2"), {"h": row_hash(forged)}
        )
    assert any("row 3" in p for p in verify_chain(store.auth.audit.all()))


def test_concurrent_writers_keep_one_chain(store: Store) -> None:
    log = AuditLog(store.auth.audit)
    errors: list[BaseException] = []

    def write() -> None:
        try:
            _fill(log, 10)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=write) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(store.auth.audit.all()) == 40
    assert log.verify() == []


def _cli(*args: str, data_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, "-m", "shipyard.cli.main", *args, "--local", "--config", str(data_dir / "shipyard.yaml")],
        env={**os.environ, "SHIPYARD_DATA_DIR": str(data_dir)},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_server_audits_changes_and_the_cli_detects_tampering(
    tmp_path: Path,
    fake: FakeUpstreamProcess,  # noqa: F811
) -> None:
    admin = new_key()
    server: ShipyardProcess = start_auth_server(tmp_path, auth_config(fake), admin)
    try:
        _, row = make_key(server, admin, name="ci", deployments=["d1"])
        assert httpx.post(server.url + f"/api/v1/keys/{row['id']}/revoke", headers=bearer(admin)).status_code == 200
        pushed = httpx.post(
            server.url + "/api/v1/prompts/greet/versions",
            headers=bearer(admin),
            json={"template": "Hello {{ name }}", "variables": ["name"]},
        )
        assert pushed.status_code == 201, pushed.text
        rows = httpx.get(server.url + "/api/v1/audit", headers=bearer(admin)).json()["data"]
        actions = [(r["action"], r["target"]) for r in rows]
        admin_id = httpx.get(server.url + "/api/v1/keys/self", headers=bearer(admin)).json()["id"]
        assert actions[0] == ("key.create", f"key:{admin_id}")  # the bootstrap admin key
        assert ("key.create", f"key:{row['id']}") in actions
        revoke = next(r for r in rows if r["action"] == "key.revoke")
        assert revoke["actor"] == admin_id
        assert revoke["before"]["revoked_at"] is None and revoke["after"]["revoked_at"] is not None
        assert ("api.post", "/api/v1/prompts/greet/versions") in actions  # generic row for other routes
        report = httpx.get(server.url + "/api/v1/audit/verify", headers=bearer(admin)).json()
        assert report["ok"] is True and report["rows"] == len(rows)
    finally:
        server.stop()
    verified = _cli("audit", "verify", data_dir=tmp_path)
    assert verified.returncode == 0 and f"ok: {len(rows)} rows, chain intact" in verified.stdout, verified.stderr
    store = Store(f"sqlite:///{tmp_path / 'shipyard.db'}")
    try:
        _drop_guards(store)
        with store.engine.begin() as conn:
            conn.execute(sa.text("UPDATE audit_log SET after = '{\"revoked_at\": null}' WHERE action = 'key.revoke'"))
    finally:
        store.close()
    tampered = _cli("audit", "verify", data_dir=tmp_path)
    assert tampered.returncode == 1
    assert "TAMPERED" in tampered.stderr and "was changed" in tampered.stderr
