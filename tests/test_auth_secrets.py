"""Stored provider secrets (Fernet, key from the environment) on a real store, and the `--local` key commands."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography.fernet import Fernet

from shipyard.auth.secrets import SecretBox
from shipyard.errors import ConfigError, ServiceUnavailable
from shipyard.store import Store
from tests.helpers import PYTHON, FakeUpstreamProcess, ShipyardProcess
from tests.test_auth import admin_key, auth_config, bearer, chat, fake, start_auth_server  # noqa: F401
from tests.test_auth import server as keyed_server  # noqa: F401


@pytest.fixture()
def store(store_url: str) -> Iterator[Store]:
    opened = Store(store_url)
    try:
        yield opened
    finally:
        opened.close()


def test_secrets_are_stored_encrypted_and_need_the_key(store: Store) -> None:
    key = Fernet.generate_key().decode()
    box = SecretBox(store.auth.secrets, key)
    assert box.put("openai", "sk-live-0123456789abcdef") is False
    assert box.put("openai", "sk-live-fedcba9876543210") is True
    stored = store.auth.secrets.get("openai")
    assert stored is not None and "sk-live" not in stored
    assert box.get("openai") == "sk-live-fedcba9876543210"
    assert [row["name"] for row in store.auth.secrets.names()] == ["openai"]
    with pytest.raises(ConfigError):
        SecretBox(store.auth.secrets, Fernet.generate_key().decode()).get("openai")  # another key
    with pytest.raises(ConfigError):
        SecretBox(store.auth.secrets, "not-a-fernet-key")
    with pytest.raises(ServiceUnavailable):
        SecretBox(store.auth.secrets, "").put("x", "y")


def test_the_secrets_api_without_an_encryption_key(keyed_server: ShipyardProcess, admin_key: str) -> None:  # noqa: F811
    server = keyed_server
    response = httpx.put(server.url + "/api/v1/secrets/openai", headers=bearer(admin_key), json={"value": "sk-x"})
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "secrets_key_missing"
    assert httpx.delete(server.url + "/api/v1/secrets/none", headers=bearer(admin_key)).status_code == 404


def _cli(*args: str, data_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SHIPYARD_DATA_DIR": str(data_dir), "SHIPYARD_API_KEY": ""}
    command = [PYTHON, "-m", "shipyard.cli.main", *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)


def test_local_key_commands_bootstrap_a_store(tmp_path: Path, fake: FakeUpstreamProcess) -> None:  # noqa: F811
    created = _cli("keys", "create", "ops", "--local", "-s", "admin", data_dir=tmp_path)
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    listed = _cli("keys", "list", "--local", "--json", data_dir=tmp_path)
    assert '"ops"' in listed.stdout and key not in listed.stdout
    server = start_auth_server(tmp_path, auth_config(fake), None)
    try:
        assert not [line for line in server.log().splitlines() if line.strip().startswith("sy-")]  # keys exist
        assert chat(server, key).status_code == 200
        audit = httpx.get(server.url + "/api/v1/audit", headers=bearer(key)).json()["data"]
        assert audit[0]["actor"] == "cli-local" and audit[0]["action"] == "key.create"
    finally:
        server.stop()
    key_id = next(line for line in listed.stdout.splitlines() if '"id"' in line).split('"')[3]
    assert _cli("keys", "revoke", key_id, "--local", data_dir=tmp_path).returncode == 0
    assert _cli("audit", "verify", "--local", data_dir=tmp_path).returncode == 0
