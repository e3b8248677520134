"""No secret leaks, whole or in part, or as a hash (LiteLLM CVE-2024-9606, CVE-2025-0330, its 2026 trace leak).

A real server runs (auth on, debug logging) with known API keys, a provider key in the environment, a stored
encrypted secret and the secrets-encryption key. The test drives successes, streams, 401s, 403s, 429s, bad bodies,
key and secret management and every read route, then scans the server log, every response (headers and bodies;
only the `key` field of a key's creation answer may hold that key) and a dump of the whole database for any
8-character piece of any secret. Hashes of the keys (the stored lookup digest, salt and HMAC, and plain SHA-256
of every secret) must not appear in the log or any response either; for those 16-character pieces are scanned,
because 8 hex characters turn up by chance among the many hex ids (traces, audit hashes) that responses hold.
The engine is the fake hosted provider (a third-party stand-in).
"""

from __future__ import annotations

import hashlib
import secrets
import sqlite3
from collections.abc import Iterable
from pathlib import Path

import httpx
from cryptography.fernet import Fernet

from shipyard.auth.keys import new_key
from tests.helpers import FakeUpstreamProcess
from tests.test_auth import auth_config, bearer, chat, fake, start_auth_server  # noqa: F401 - fixture


def fragments(values: Iterable[str], size: int = 8) -> set[str]:
    return {v[i : i + size] for v in values for i in range(len(v) - size + 1)}


def leaks(text: str, pieces: set[str]) -> list[str]:
    return sorted(p for p in pieces if p in text)


def test_no_secret_appears_anywhere(tmp_path: Path, fake: FakeUpstreamProcess) -> None:  # noqa: F811
    admin = new_key()
    provider_key = "pk-" + secrets.token_urlsafe(24)
    stored_value = "sv-" + secrets.token_urlsafe(24)
    secrets_key = Fernet.generate_key().decode()
    config = auth_config(fake)
    config["engines"]["up"]["api_key_env"] = "LEAK_TEST_PROVIDER_KEY"
    config["tracing"] = {"prices": {"fake-model": {"input": 1.0, "output": 1.0}}}
    env = {
        "LEAK_TEST_PROVIDER_KEY": provider_key,
        "SHIPYARD_SECRETS_KEY": secrets_key,
        "SHIPYARD_LOG_LEVEL": "debug",
    }
    server = start_auth_server(tmp_path, config, admin, env)
    seen: list[str] = []  # every response, headers and body
    keys: list[str] = [admin]

    def call(method: str, path: str, key: str | None = admin, **kwargs: object) -> httpx.Response:
        headers = bearer(key) if key else {}
        response = httpx.request(method, server.url + path, headers=headers, timeout=30, **kwargs)  # type: ignore[arg-type]
        body = response.text
        if method == "POST" and path == "/api/v1/keys" and response.status_code == 201:
            created = response.json()
            keys.append(created.pop("key"))
            body = str(created)
        seen.append(str(dict(response.headers)) + "\n" + body)
        return response

    try:
        limited_id = call(
            "POST",
            "/api/v1/keys",
            json={"name": "limited", "deployments": ["d1"], "limits": {"requests_per_minute": 1}},
        ).json()["id"]
        call("POST", "/api/v1/keys", json={"name": "reader", "scopes": ["traces:read", "prompts:read"]})
        limited, reader = keys[1], keys[2]
        assert call("PUT", "/api/v1/secrets/openai", json={"value": stored_value}).status_code == 200
        assert call("PUT", "/api/v1/secrets/openai", json={"value": stored_value}).json()["replaced"] is True
        body = {"model": "d1", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
        for key in (admin, limited, limited, reader, None, admin[:-1] + "x", provider_key, "Bearer " + admin):
            call("POST", "/v1/chat/completions", key, json=body)
            call("POST", "/v1/chat/completions", key, json={**body, "stream": True})
        assert any("rate_limit_error" in s for s in seen)
        call("POST", "/v1/chat/completions", admin, content=b"{not json")
        call("POST", "/v1/chat/completions", admin, json={**body, "model": "nope"})
        call("POST", "/v1/completions", admin, json={"model": "d1", "prompt": "x", "max_tokens": 2})
        call("POST", "/api/v1/keys", reader, json={"name": "x", "scopes": ["admin"]})
        call("PATCH", f"/api/v1/keys/{limited_id}", admin, json={"scopes": ["nope"]})
        call("POST", f"/api/v1/keys/{limited_id}/revoke")
        call("POST", "/v1/chat/completions", limited, json=body)  # revoked
        for path in ("/api/v1/keys", "/api/v1/keys/self", "/api/v1/secrets", "/api/v1/audit", "/api/v1/engines",
                     "/api/v1/deployments", "/api/v1/traces?limit=100", "/api/v1/calls", "/metrics", "/v1/models",
                     "/api/openapi.json", "/api/v1/audit/verify", "/readyz"):  # fmt: skip
            call("GET", path)
        traces = call("GET", "/api/v1/traces", reader, params={"limit": 100}).json().get("data", [])
        for trace in traces[:5]:
            call("GET", f"/api/v1/traces/{trace['id']}", reader)
        call("GET", "/api/v1/traces/export", reader)
    finally:
        server.stop()

    plain = keys + [provider_key, stored_value, secrets_key]
    log = server.log()
    db = tmp_path / "shipyard.db"
    with sqlite3.connect(db) as conn:
        dump = "\n".join(conn.iterdump())
    journal = "".join(p.read_text(errors="replace") for p in (tmp_path / "journal").rglob("*") if p.is_file())
    assert "api_keys" in dump and "audit_log" in dump and len(seen) > 40

    pieces = fragments(plain)
    assert leaks(log, pieces) == [], "secret in the server log"
    assert leaks("\n".join(seen), pieces) == [], "secret in a response"
    assert leaks(dump + journal, pieces) == [], "secret in the database"

    with sqlite3.connect(db) as conn:
        stored = [v for row in conn.execute("SELECT lookup, digest, salt FROM api_keys") for v in row]
    hashes = stored + [hashlib.sha256(v.encode()).hexdigest() for v in plain]
    hash_pieces = fragments(hashes, 16)
    assert leaks(log, hash_pieces) == [], "a key's hash in the server log"
    assert leaks("\n".join(seen), hash_pieces) == [], "a key's hash in a response"
