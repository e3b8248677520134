"""An `openai` engine whose API key is a stored, encrypted secret (`api_key_secret`), through real servers.

The engine is the fake hosted provider (a third-party stand-in) started with `--api-key`, so it answers 401 to
any other bearer token. The secret goes into the server's real SQLite store with `SecretBox` before the server
starts, and is replaced through `PUT /api/v1/secrets/{name}` while it runs.
"""

from __future__ import annotations

import secrets
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.fernet import Fernet

from shipyard.auth.keys import new_key
from shipyard.auth.secrets import SecretBox
from shipyard.config import OpenAIEngineConfig
from shipyard.store import Store
from tests.helpers import FakeUpstreamProcess, ShipyardProcess, start_fake_upstream, wait_until
from tests.test_auth import bearer, chat, start_auth_server
from tests.test_auth_leaks import fragments, leaks

PROVIDER_KEY = "pk-" + secrets.token_urlsafe(24)


@pytest.fixture(scope="module")
def keyed_fake() -> Iterator[FakeUpstreamProcess]:
    upstream = start_fake_upstream("--api-key", PROVIDER_KEY)
    try:
        yield upstream
    finally:
        upstream.stop()


def secret_config(fake: FakeUpstreamProcess, secret: str = "provider") -> dict[str, Any]:
    return {
        "engines": {"up": {"kind": "openai", "base_url": fake.base_url, "api_key_secret": secret}},
        "deployments": {"d1": {"targets": [{"engine": "up", "model": "fake-model"}], "retries": 0}},
    }


def store_secret(data_dir: Path, fernet_key: str, name: str, value: str) -> None:
    data_dir.mkdir(parents=True, exist_ok=True)
    store = Store(f"sqlite:///{data_dir / 'shipyard.db'}")
    try:
        SecretBox(store.auth.secrets, fernet_key).put(name, value)
    finally:
        store.close()


def failed_start(data_dir: Path, config: dict[str, Any], env: dict[str, str]) -> str:
    """Start a server that must refuse to start; return its log."""
    server = ShipyardProcess(data_dir, config, env={"SHIPYARD_AUTH": "off", **env})
    server.start()
    try:
        assert server.process is not None
        wait_until(lambda: server.process.poll() is not None, 60, 0.1, "shipyard to exit")  # type: ignore[union-attr]
        assert server.process.returncode != 0
        return server.log()
    finally:
        server.stop()


def test_config_takes_one_key_source() -> None:
    with pytest.raises(ValueError, match="not both"):
        OpenAIEngineConfig.model_validate(
            {"kind": "openai", "base_url": "http://x/v1", "api_key_env": "K", "api_key_secret": "k"}
        )
    assert OpenAIEngineConfig.model_validate({"kind": "openai", "base_url": "http://x/v1", "api_key_secret": "k"})


def test_a_stored_secret_is_the_engine_key_and_a_replaced_one_is_used_without_restart(
    tmp_path: Path, keyed_fake: FakeUpstreamProcess
) -> None:
    fernet_key = Fernet.generate_key().decode()
    wrong = "pk-wrong-" + secrets.token_urlsafe(16)
    store_secret(tmp_path, fernet_key, "provider", wrong)
    admin = new_key()
    env = {"SHIPYARD_SECRETS_KEY": fernet_key, "SHIPYARD_LOG_LEVEL": "debug"}
    server = start_auth_server(tmp_path, secret_config(keyed_fake), admin, env)
    seen: list[str] = []

    def call(method: str, path: str, **kwargs: Any) -> httpx.Response:
        response = httpx.request(method, server.url + path, headers=bearer(admin), timeout=30, **kwargs)
        seen.append(str(response.headers) + response.text)
        return response

    try:
        refused = chat(server, admin)  # the stored value is not the provider's key: the provider says 401
        seen.append(str(refused.headers) + refused.text)
        assert refused.status_code == 502 and refused.json()["error"]["code"] == "upstream_auth_failed"

        put = call("PUT", "/api/v1/secrets/provider", json={"value": PROVIDER_KEY})
        assert put.status_code == 200 and put.json() == {"name": "provider", "replaced": True}
        answered = chat(server, admin)  # same process, no restart: the engine now sends the right key
        seen.append(str(answered.headers) + answered.text)
        assert answered.status_code == 200, answered.text
        streamed = chat(server, admin, stream=True)
        seen.append(streamed.text)
        assert streamed.status_code == 200 and "data:" in streamed.text

        engines = call("GET", "/api/v1/engines")
        assert engines.status_code == 200 and "up" in engines.text
        call("GET", "/api/v1/engines/up")
        call("GET", "/api/v1/secrets")
        call("GET", "/api/v1/traces")
        call("GET", "/api/v1/audit")
    finally:
        server.stop()
    # A fresh start reads the replaced secret from the store.
    server = start_auth_server(tmp_path, secret_config(keyed_fake), admin, env)
    try:
        again = chat(server, admin)
        assert again.status_code == 200, again.text
    finally:
        server.stop()

    with sqlite3.connect(tmp_path / "shipyard.db") as conn:
        dump = "\n".join(conn.iterdump())
        engine_rows = "\n".join(str(row) for row in conn.execute("SELECT * FROM engines"))
    assert "provider" in engine_rows  # the engines table names the secret...
    pieces = fragments([PROVIDER_KEY, wrong, fernet_key])
    assert leaks(engine_rows, pieces) == []  # ...and holds no value
    assert leaks(server.log(), pieces) == [], "secret in the server log"
    assert leaks("\n".join(seen), pieces) == [], "secret in a response"
    assert leaks(dump, pieces) == [], "secret in the database in plain text"


def test_the_server_refuses_to_start_without_a_usable_secret(tmp_path: Path, keyed_fake: FakeUpstreamProcess) -> None:
    fernet_key = Fernet.generate_key().decode()
    env = {"SHIPYARD_SECRETS_KEY": fernet_key}
    missing = failed_start(tmp_path / "missing", secret_config(keyed_fake, "nowhere"), env)
    assert "'nowhere'" in missing and "not in the secret store" in missing

    store_secret(tmp_path / "nokey", fernet_key, "provider", PROVIDER_KEY)
    no_key = failed_start(tmp_path / "nokey", secret_config(keyed_fake), {"SHIPYARD_SECRETS_KEY": ""})
    assert "'provider'" in no_key and "SHIPYARD_SECRETS_KEY" in no_key

    other_key = Fernet.generate_key().decode()
    wrong_key = failed_start(tmp_path / "nokey", secret_config(keyed_fake), {"SHIPYARD_SECRETS_KEY": other_key})
    assert "'provider'" in wrong_key and "cannot be decrypted" in wrong_key
    pieces = fragments([PROVIDER_KEY, fernet_key, other_key])
    assert leaks(missing + no_key + wrong_key, pieces) == []


def test_a_secret_replaced_by_another_process_is_followed(tmp_path: Path, keyed_fake: FakeUpstreamProcess) -> None:
    fernet_key = Fernet.generate_key().decode()
    store_secret(tmp_path, fernet_key, "provider", "pk-old-" + secrets.token_urlsafe(16))
    config = {**secret_config(keyed_fake), "auth": {"secrets_refresh_seconds": 0.2}}
    server = ShipyardProcess(tmp_path, config, env={"SHIPYARD_SECRETS_KEY": fernet_key})
    server.start()
    try:
        server.wait_ready(60)
        assert chat(server, None).json()["error"]["code"] == "upstream_auth_failed"
        store_secret(tmp_path, fernet_key, "provider", PROVIDER_KEY)  # this test process writes the shared store
        wait_until(lambda: chat(server, None).status_code == 200, 20, 0.2, "the server to use the new secret")
    finally:
        server.stop()
    assert "now use the replaced secret 'provider'" in server.log()
    assert leaks(server.log(), fragments([PROVIDER_KEY, fernet_key])) == []
