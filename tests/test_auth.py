"""API keys through the real server with auth on: no key, bad, revoked, expired and out-of-scope keys; the first
start's admin key; SQL payloads as tokens and filters; the CLI. The engine is the fake hosted provider (a stand-in
for a third-party service). Helpers here are shared by the other access-control test files.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from shipyard.auth.keys import new_key
from tests.helpers import PYTHON, FakeUpstreamProcess, ShipyardProcess, start_fake_upstream, wait_until

MSG = [{"role": "user", "content": "hi"}]
SQL_PAYLOADS = [
    "' OR '1'='1",
    "' OR (SELECT pg_sleep(8)) IS NOT NULL --",
    "sy-' OR 1=1; DROP TABLE api_keys; --",
    "x'; DELETE FROM api_keys; --",
]


def auth_config(fake: FakeUpstreamProcess, **deployments: dict[str, Any]) -> dict[str, Any]:
    """Engines `up` (the fake provider); deployments `d1`, `d2` and any given."""
    target = {"targets": [{"engine": "up", "model": "fake-model"}], "retries": 0}
    return {
        "engines": {"up": {"kind": "openai", "base_url": fake.base_url}},
        "deployments": {"d1": target, "d2": target, **deployments},
    }


def start_auth_server(
    data_dir: Path, config: dict[str, Any], admin_key: str | None, env: dict[str, str] | None = None
) -> ShipyardProcess:
    extra = {"SHIPYARD_AUTH": "on", **(env or {})}
    if admin_key:
        extra["SHIPYARD_ADMIN_KEY"] = admin_key
    server = ShipyardProcess(data_dir, config, env=extra)
    server.start()
    server.wait_ready(60)
    return server


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def make_key(server: ShipyardProcess, creator: str, **body: Any) -> tuple[str, dict[str, Any]]:
    response = httpx.post(server.url + "/api/v1/keys", headers=bearer(creator), json={"name": "k", **body}, timeout=10)
    assert response.status_code == 201, response.text
    row = response.json()
    return row.pop("key"), row


def chat(server: ShipyardProcess, key: str | None, model: str = "d1", **extra: Any) -> httpx.Response:
    headers = bearer(key) if key else {}
    body = {"model": model, "messages": MSG, "max_tokens": 4, **extra}
    return httpx.post(server.url + "/v1/chat/completions", headers=headers, json=body, timeout=30)


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeUpstreamProcess]:
    upstream = start_fake_upstream()
    try:
        yield upstream
    finally:
        upstream.stop()


@pytest.fixture(scope="module")
def admin_key() -> str:
    return new_key()


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, fake: FakeUpstreamProcess, admin_key: str
) -> Iterator[ShipyardProcess]:
    proc = start_auth_server(tmp_path_factory.mktemp("auth"), auth_config(fake), admin_key)
    try:
        yield proc
    finally:
        proc.stop()


def test_no_key_is_refused_everywhere_but_health(server: ShipyardProcess) -> None:
    for method, path in [
        ("POST", "/v1/chat/completions"),
        ("POST", "/v1/completions"),
        ("GET", "/v1/models"),
        ("GET", "/api/v1/prompts"),
        ("GET", "/api/v1/keys"),
        ("GET", "/api/v1/audit"),
        ("GET", "/metrics"),
        ("GET", "/api/openapi.json"),
    ]:
        response = httpx.request(method, server.url + path, json={}, timeout=10)
        assert response.status_code == 401, (method, path, response.text)
        assert response.json()["error"]["type"] == "authentication_error"
    assert httpx.get(server.url + "/healthz").status_code == 200
    assert httpx.get(server.url + "/readyz").status_code == 200


def test_admin_key_from_the_environment_works(server: ShipyardProcess, admin_key: str) -> None:
    response = chat(server, admin_key)
    assert response.status_code == 200, response.text
    assert httpx.get(server.url + "/api/v1/keys/self", headers=bearer(admin_key)).json()["scopes"] == ["admin"]
    assert "sy-" not in server.log()  # the environment's key is never printed


def test_wrong_scheme_malformed_and_unknown_keys(server: ShipyardProcess, admin_key: str) -> None:
    for value in [f"Basic {admin_key}", admin_key, "Bearer", "Bearer " + admin_key[:-1], "Bearer " + new_key()]:
        response = httpx.get(server.url + "/v1/models", headers={"authorization": value})
        assert response.status_code == 401, value
        assert response.json()["error"]["code"] == "invalid_api_key"


def test_a_key_sharing_a_prefix_with_a_valid_key_is_refused(server: ShipyardProcess, admin_key: str) -> None:
    """The verified-key cache is keyed by the whole credential (LiteLLM CVE-2026-35030)."""
    assert httpx.get(server.url + "/v1/models", headers=bearer(admin_key)).status_code == 200  # now cached
    forged = admin_key[:-4] + ("AAAA" if not admin_key.endswith("AAAA") else "BBBB")
    response = httpx.get(server.url + "/v1/models", headers=bearer(forged))
    assert response.status_code == 401


def test_revoked_key_is_refused_at_once(server: ShipyardProcess, admin_key: str) -> None:
    key, row = make_key(server, admin_key, deployments=["d1"])
    assert chat(server, key).status_code == 200
    revoked = httpx.post(server.url + f"/api/v1/keys/{row['id']}/revoke", headers=bearer(admin_key))
    assert revoked.status_code == 200 and revoked.json()["active"] is False
    response = chat(server, key)
    assert response.status_code == 401
    assert "revoked" in response.json()["error"]["message"]


def test_expired_key_is_refused(server: ShipyardProcess, admin_key: str) -> None:
    key, _ = make_key(server, admin_key, deployments=["d1"], expires_at=time.time() + 1.5)
    assert chat(server, key).status_code == 200
    wait_until(lambda: chat(server, key).status_code == 401, 15, 0.3, "the key to expire")
    assert chat(server, key).json()["error"]["code"] == "expired_api_key"


def test_out_of_scope_deployment_and_resource(server: ShipyardProcess, admin_key: str) -> None:
    key, _ = make_key(server, admin_key, deployments=["d1"], scopes=["prompts:read"])
    assert chat(server, key, "d1").status_code == 200
    refused = chat(server, key, "d2")
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "deployment_not_allowed"
    stream = chat(server, key, "d2", stream=True)
    assert stream.status_code == 403
    assert httpx.get(server.url + "/api/v1/prompts", headers=bearer(key)).status_code == 200
    for method, path in [("GET", "/api/v1/traces"), ("GET", "/api/v1/audit"), ("GET", "/api/v1/engines")]:
        response = httpx.request(method, server.url + path, headers=bearer(key))
        assert response.status_code == 403, path
        assert response.json()["error"]["type"] == "permission_error"


def test_api_key_id_is_set_on_the_call(server: ShipyardProcess, admin_key: str) -> None:
    key, row = make_key(server, admin_key, deployments=["d1"], scopes=["traces:read"])
    assert chat(server, key, user="who-am-i").status_code == 200

    def recorded() -> bool:
        found = httpx.get(server.url + "/api/v1/traces", headers=bearer(admin_key), params={"limit": 50}).json()
        return any(t.get("api_key_id") == row["id"] for t in found.get("data", []))

    wait_until(recorded, 15, 0.3, "the trace to carry the key's id")


@pytest.mark.parametrize("payload", SQL_PAYLOADS)
def test_sql_payloads_as_the_bearer_token_are_refused_fast(
    server: ShipyardProcess, admin_key: str, payload: str
) -> None:
    before = httpx.get(server.url + "/api/v1/keys", headers=bearer(admin_key)).json()["data"]
    for method, path in [("POST", "/v1/chat/completions"), ("GET", "/v1/models"), ("GET", "/api/v1/keys")]:
        # pg_sleep(8) would blow this 5 s timeout if the payload ever reached SQL.
        response = httpx.request(method, server.url + path, headers=bearer(payload), json={}, timeout=5)
        assert response.status_code == 401
    after = httpx.get(server.url + "/api/v1/keys", headers=bearer(admin_key)).json()["data"]
    assert after == before


def test_first_start_prints_an_admin_key_once(tmp_path: Path, fake: FakeUpstreamProcess) -> None:
    first = start_auth_server(tmp_path, auth_config(fake), None)
    try:
        printed = [line.strip() for line in first.log().splitlines() if line.strip().startswith("sy-")]
        assert len(printed) == 1
        key = printed[0]
        assert httpx.get(first.url + "/api/v1/keys/self", headers=bearer(key)).json()["scopes"] == ["admin"]
    finally:
        first.stop()
    second = start_auth_server(tmp_path, auth_config(fake), None)
    try:
        assert not [line for line in second.log().splitlines() if line.strip().startswith("sy-")]  # not again
        assert chat(second, key).status_code == 200
    finally:
        second.stop()


def test_auth_off_keeps_every_route_open(tmp_path: Path, fake: FakeUpstreamProcess) -> None:
    server = ShipyardProcess(tmp_path, auth_config(fake), env={"SHIPYARD_AUTH": "off"})
    server.start()
    try:
        server.wait_ready(60)
        assert chat(server, None).status_code == 200
        assert "auth is OFF" in server.log()
    finally:
        server.stop()


def _cli(*args: str, env: dict[str, str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, "-m", "shipyard.cli.main", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        input=stdin,
        timeout=60,
    )


def test_cli_keys_create_list_revoke_and_chat(server: ShipyardProcess, admin_key: str) -> None:
    env = {"SHIPYARD_URL": server.url, "SHIPYARD_API_KEY": admin_key}
    created = _cli("keys", "create", "cli-bot", "-d", "d1", "-s", "prompts:read", "--rpm", "100", env=env)
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    assert key.startswith("sy-") and len(key) == 46
    listed = _cli("keys", "list", "--json", env=env)
    assert listed.returncode == 0 and "cli-bot" in listed.stdout and key not in listed.stdout
    chatted = _cli("chat", "d1", env={**env, "SHIPYARD_API_KEY": key}, stdin="hello\n")
    assert chatted.returncode == 0, chatted.stderr
    assert "tok" in chatted.stdout  # the fake provider streams "tok" chunks
    key_id = next(row["id"] for row in json.loads(listed.stdout) if row["name"] == "cli-bot")
    refused = _cli("keys", "create", "x", "-s", "admin", env={**env, "SHIPYARD_API_KEY": key})
    assert refused.returncode == 1 and "keys:write" in refused.stderr
    no_key = _cli("keys", "list", env={"SHIPYARD_URL": server.url, "SHIPYARD_API_KEY": ""})
    assert no_key.returncode == 1 and "SHIPYARD_API_KEY" in no_key.stderr
    assert _cli("keys", "revoke", key_id, env=env).returncode == 0
    assert chat(server, key).status_code == 401


def test_a_malformed_admin_key_in_the_environment_stops_the_start(tmp_path: Path, fake: FakeUpstreamProcess) -> None:
    server = ShipyardProcess(tmp_path, auth_config(fake), env={"SHIPYARD_AUTH": "on", "SHIPYARD_ADMIN_KEY": "hunter2"})
    server.start()
    try:
        assert server.process is not None
        assert server.process.wait(60) != 0
        assert "SHIPYARD_ADMIN_KEY must be a Shipyard key" in server.log()
        assert "hunter2" not in server.log()
    finally:
        server.stop()


def test_path_tricks_do_not_open_admin_routes(server: ShipyardProcess, admin_key: str) -> None:
    reader, _ = make_key(server, admin_key, scopes=["prompts:read"])
    for path in ("/api/v1/%61udit", "/api/v1/audit/", "/api/v1/./audit", "/api/v1/prompts/../audit", "//api/v1/audit"):
        response = httpx.get(server.url + path, headers=bearer(reader))
        assert response.status_code in (403, 404), (path, response.status_code, response.text[:200])
        assert "prev_hash" not in response.text
