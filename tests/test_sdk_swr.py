"""The SDK's prompt cache is stale-while-revalidate, against a real server process: after the TTL a cached prompt
comes back at once while one background thread refreshes it (proved by ordering: the call returns while the
refresh's request is still held by an unresponsive listener), refresh failures keep the cached copy, a label moved
while the server was away is seen after the next background refresh, and past `max_stale` the error surfaces."""

from __future__ import annotations

import socket
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

from shipyard import Client
from shipyard.errors import ServiceUnavailable
from tests.helpers import FakeUpstreamProcess, ShipyardProcess, wait_until

REF = {"label": "production"}


def _server(data: Path, fake: FakeUpstreamProcess, port: int | None = None) -> ShipyardProcess:
    config = {
        "engines": {"fake": {"kind": "openai", "base_url": fake.base_url}},
        "deployments": {"chat": {"targets": [{"engine": "fake", "model": "fake-model"}]}},
    }
    server = ShipyardProcess(data, config=config, port=port)
    server.start()
    server.wait_ready(60)
    return server


def _push(server: ShipyardProcess, text: str) -> dict[str, Any]:
    body = {"messages": [{"role": "system", "content": text}], "labels": ["production"]}
    response = httpx.post(server.url + "/api/v1/prompts/bot/versions", json=body, timeout=10)
    assert response.status_code in (200, 201), response.text
    return response.json()


def _refresh_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("shipyard-prompt-refresh-")]


def test_stale_while_revalidate_across_a_server_outage(tmp_path: Path, fake_upstream: FakeUpstreamProcess) -> None:
    server = _server(tmp_path / "data", fake_upstream)
    port = server.port
    _push(server, "version one")
    sdk = Client(server.url, cache_ttl=0.0, max_stale=3600, timeout=60)
    hole: socket.socket | None = None
    try:
        first = sdk.prompts.get("bot", **REF)  # nothing cached: this one waits for the server
        assert first.version == 1 and not first.stale and not sdk.prompts.refreshing("bot", **REF)
        server.stop()

        # The port now accepts connections that are never answered: a refresh would hang for the whole timeout.
        hole = socket.create_server(("127.0.0.1", port), backlog=16)
        cached = sdk.prompts.get("bot", **REF)
        assert cached.version == 1 and cached.stale
        # Returned while its refresh is still waiting on the silent port: the caller did not wait for it.
        assert sdk.prompts.refreshing("bot", **REF)
        for _ in range(5):  # more calls meanwhile: still served from the cache, still one refresh thread
            assert sdk.prompts.get("bot", **REF).version == 1
        assert len(_refresh_threads()) == 1
        hole.close()  # the held connection is reset: the refresh fails, the cached copy stays
        hole = None
        wait_until(lambda: not sdk.prompts.refreshing("bot", **REF), 30, 0.05, "the refresh to give up")
        assert sdk.prompts.get("bot", **REF).version == 1

        with (
            Client(f"http://127.0.0.1:{port}", cache_ttl=0.0, max_stale=0.0) as strict,
            pytest.raises(ServiceUnavailable),
        ):
            strict.prompts.get("bot", **REF)  # never fetched: nothing to serve

        server = _server(tmp_path / "data", fake_upstream, port=port)  # back, and the label moves to version 2
        assert _push(server, "version two")["version"] == 2

        def sees_version_two() -> bool:
            return sdk.prompts.get("bot", **REF).version == 2  # each call may start one background refresh

        wait_until(sees_version_two, 30, 0.05, "the SDK to see the moved label")
    finally:
        if hole is not None:
            hole.close()
        sdk.close()
        server.stop()


def test_past_max_stale_the_error_surfaces(tmp_path: Path, fake_upstream: FakeUpstreamProcess) -> None:
    server = _server(tmp_path / "data", fake_upstream)
    _push(server, "version one")
    fresh = Client(server.url, cache_ttl=3600, max_stale=0.0)
    expired = Client(server.url, cache_ttl=0.0, max_stale=0.0)
    try:
        assert fresh.prompts.get("bot", **REF).version == 1
        assert expired.prompts.get("bot", **REF).version == 1
        server.stop()
        within_ttl = fresh.prompts.get("bot", **REF)
        assert within_ttl.version == 1 and not within_ttl.stale and not fresh.prompts.refreshing("bot", **REF)
        with pytest.raises(ServiceUnavailable):  # too old to serve: fetched on the calling thread, which fails
            expired.prompts.get("bot", **REF)
        assert not expired.prompts.refreshing("bot", **REF)
    finally:
        fresh.close()
        expired.close()
        server.stop()
