"""Every gateway call is recorded off the request path, on SQLite and on PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import httpx
import openai
import pytest

from tests.helpers import FakeUpstreamProcess, ShipyardProcess, wait_until


def _config(fake: FakeUpstreamProcess) -> dict:
    return {
        "engines": {"fake": {"kind": "openai", "base_url": fake.base_url}},
        "deployments": {"chat": {"targets": [{"engine": "fake", "model": "fake-model"}]}},
    }


def _calls(server: ShipyardProcess, **params: object) -> list[dict]:
    return httpx.get(server.url + "/api/v1/calls", params=params, timeout=10).json()["data"]


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_calls_are_recorded_in_the_store(
    backend: str, tmp_path: Path, fake_upstream: FakeUpstreamProcess, request: pytest.FixtureRequest
) -> None:
    """/api/v1/calls: one flat record per gateway call, read from its span (full traces: tests/test_tracing_*.py)."""
    env = {}
    url = f"sqlite:///{tmp_path / 'data' / 'shipyard.db'}"
    if backend == "postgresql":
        from tests.helpers import PostgresServer

        url = env["SHIPYARD_DATABASE_URL"] = PostgresServer.fresh_database(request.getfixturevalue("postgres_url"))
    server = ShipyardProcess(tmp_path / "data", config=_config(fake_upstream), env=env)
    server.start()
    try:
        server.wait_ready(60)
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
        for _ in range(5):
            client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "hi"}], user="bob")
        list(client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "hi"}], stream=True))
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "hi"}])
        wait_until(lambda: len(_calls(server)) >= 6, 10, what="six call records")
        rows = _calls(server)
        assert len(rows) == 6  # the 404 for an unknown deployment is not a call of any deployment
        for row in rows:
            assert row["status"] == 200 and row["deployment"] == "chat" and row["served_by"] == "chat"
            assert row["latency_ms"] > 0 and row["attempts"] == 1 and row["error_code"] is None
            assert (row["engine"], row["model"], row["prompt_tokens"]) == ("fake", "fake-model", 5)
        assert [r["stream"] for r in rows].count(True) == 1
        assert sum(1 for r in rows if r["user"] == "bob") == 5
        one = httpx.get(f"{server.url}/api/v1/calls/{rows[0]['id']}", timeout=5).json()
        assert one["trace"]["id"] == rows[0]["id"] and one["spans"][0]["engine"] == "fake"
        missing = httpx.get(f"{server.url}/api/v1/calls/nope", timeout=5)
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "trace_not_found"
        page = httpx.get(server.url + "/api/v1/calls", params={"limit": 4}, timeout=10).json()
        rest = _calls(server, limit=4, before=page["next_before"])
        assert {r["id"] for r in page["data"]} | {r["id"] for r in rest} == {r["id"] for r in rows}
    finally:
        assert server.stop() == 0
    from shipyard.store import Store

    store = Store(url)
    assert store.traces.count("chat") == 6  # everything flushed at shutdown
    store.close()


def test_api_validation_errors_are_openai_shaped(tmp_path: Path, fake_upstream: FakeUpstreamProcess) -> None:
    server = ShipyardProcess(tmp_path / "data", config=_config(fake_upstream))
    server.start()
    try:
        server.wait_ready(60)
        bad = httpx.get(server.url + "/api/v1/calls", params={"limit": 0}, timeout=5)
        assert bad.status_code == 400
        assert bad.json()["error"]["param"] == "limit"
        engines = httpx.get(server.url + "/api/v1/engines", timeout=5).json()["data"]
        assert [e["name"] for e in engines] == ["fake"]
        deployments = httpx.get(server.url + "/api/v1/deployments", timeout=5).json()["data"]
        assert deployments[0]["name"] == "chat" and deployments[0]["ready"] is True
    finally:
        server.stop()
