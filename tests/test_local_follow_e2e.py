"""A real server whose local engine serves `registry:smollm2@champion` (the real bundled model): moving the alias
swaps the worker blue-green under a steady stream of requests (none lost, the served version goes from smollm2:1
to smollm2:2 and never back, the old worker process gone), and an alias moved to weights that cannot load leaves
the old version serving with the error visible on the engine. Three worker starts in all."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import make_data_dir
from tests.helpers import ShipyardProcess, wait_until

pytestmark = [pytest.mark.model, pytest.mark.slow]

CLIENTS = 2


def _variant(source: Path, target: Path, replace: dict[str, bytes]) -> Path:
    """A version folder: the bundled model's files linked (no 540 MB copy), some replaced by other bytes."""
    target.mkdir()
    for item in source.iterdir():
        if item.name in replace:
            (target / item.name).write_bytes(replace[item.name])
        else:
            (target / item.name).symlink_to(item.resolve())
    return target


class Stream:
    """CLIENTS threads, each sending one small chat request after another until stopped."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.results: dict[str, list[tuple[int, int, str | None]]] = {f"c{i}": [] for i in range(CLIENTS)}
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._client, args=(name,)) for name in self.results]

    def _client(self, name: str) -> None:
        with httpx.Client(base_url=self.url, timeout=120) as client:
            seq = 0
            while not self.stop.is_set():
                body = {
                    "model": "chat",
                    "messages": [{"role": "user", "content": "Say hi."}],
                    "max_tokens": 2,
                    "temperature": 0,
                    "user": f"{name}-{seq:05d}",
                }
                response = client.post("/v1/chat/completions", json=body)
                model = response.json().get("model") if response.status_code == 200 else response.text
                self.results[name].append((seq, response.status_code, model))
                seq += 1

    def models(self) -> list[str | None]:
        return [m for rows in self.results.values() for _, _, m in rows]

    def __enter__(self) -> Stream:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=180)


def _monotone(models: list[Any], first: str, second: str) -> bool:
    """first…first second…second: the switch happens once and never goes back."""
    if not models or models[0] != first:
        return False
    switched = models.index(second) if second in models else len(models)
    return set(models[:switched]) == {first} and set(models[switched:]) <= {second}


def test_alias_move_swaps_the_local_engine_without_losing_a_request(tmp_path: Path, bundled_model_dir: Path) -> None:
    config = {
        "engines": {"local": {"kind": "local", "model": "registry:smollm2@champion", "max_batch_tokens": 256}},
        "deployments": {"chat": {"targets": [{"engine": "local"}]}},
    }
    server = ShipyardProcess(make_data_dir(tmp_path / "data", bundled_model_dir), config=config)
    server.start()
    api = httpx.Client(base_url=server.url, timeout=60)
    try:
        server.wait_ready(timeout=180)
        engine = api.get("/api/v1/engines/local").json()
        # registered on this fresh data dir before the engine resolved the alias
        assert engine["serving"] == "smollm2:1" and engine["served_model"] == "smollm2:1", engine
        old_pid = engine["pid"]
        assert api.get("/api/v1/models/smollm2").json()["aliases"][0]["version"] == 1

        generation = json.loads((bundled_model_dir / "generation_config.json").read_text())
        changed = json.dumps({**generation, "shipyard_test_variant": 2}).encode()
        v2 = _variant(bundled_model_dir, tmp_path / "v2", {"generation_config.json": changed})
        registered = api.post("/api/v1/models/smollm2/versions", json={"source": str(v2), "copy_weights": False})
        assert registered.status_code == 201 and registered.json()["version"] == 2, registered.text

        with Stream(server.url) as stream:
            wait_until(lambda: all(len(rows) >= 2 for rows in stream.results.values()), 120, 0.1, "requests")
            moved = api.put("/api/v1/models/smollm2/aliases/champion", json={"version": 2})
            assert moved.status_code == 200 and moved.json()["previous"] == 1

            def swapped() -> bool:
                info = api.get("/api/v1/engines/local").json()
                return info["serving"] == "smollm2:2" and info["pid"] != old_pid

            wait_until(swapped, 180, 0.2, "the engine to serve smollm2:2")
            wait_until(lambda: not _alive(old_pid), 60, 0.2, "the old worker to stop")
            answered_by_2 = len([m for m in stream.models() if m == "smollm2:2"])
            wait_until(lambda: stream.models().count("smollm2:2") >= answered_by_2 + 2 * CLIENTS, 120, 0.1, "more")
        for name, rows in stream.results.items():
            assert [status for _, status, _ in rows] == [200] * len(rows), rows  # none lost during the swap
            assert _monotone([model for _, _, model in rows], "smollm2:1", "smollm2:2"), (name, rows)
        engine = api.get("/api/v1/engines/local").json()
        assert engine["swaps"] == 1 and engine["last_error"] is None and engine["pending"] is None
        assert api.get("/v1/models").status_code == 200

        sent = sum(len(rows) for rows in stream.results.values())

        def recorded() -> list[dict[str, Any]]:
            return api.get("/api/v1/calls", params={"deployment": "chat", "limit": 1000}).json()["data"]

        wait_until(lambda: len([c for c in recorded() if c["user"]]) >= sent, 60, 0.2, "the calls to be traced")
        traced = {call["user"]: call["model"] for call in recorded() if call["user"]}
        for name, rows in stream.results.items():
            # each trace names the version that answered it, also for calls the old worker finished while draining
            assert [traced[f"{name}-{seq:05d}"] for seq, _, _ in rows] == [model for _, _, model in rows], name

        _alias_to_broken_weights_keeps_the_old_version(api, server, bundled_model_dir, tmp_path)
    finally:
        api.close()
        server.stop()


def _alias_to_broken_weights_keeps_the_old_version(
    api: httpx.Client, server: ShipyardProcess, bundled_model_dir: Path, tmp_path: Path
) -> None:
    serving_pid = api.get("/api/v1/engines/local").json()["pid"]
    broken = _variant(bundled_model_dir, tmp_path / "v3", {"model.safetensors": b"\x08\0\0\0\0\0\0\0{}  not weights"})
    registered = api.post("/api/v1/models/smollm2/versions", json={"source": str(broken), "copy_weights": False})
    assert registered.status_code == 201 and registered.json()["version"] == 3, registered.text
    assert api.put("/api/v1/models/smollm2/aliases/champion", json={"version": 3}).status_code == 200

    def failed() -> bool:
        return "smollm2:3" in (api.get("/api/v1/engines/local").json()["last_error"] or "")

    wait_until(failed, 120, 0.2, "the failed swap to be reported")
    engine = api.get("/api/v1/engines/local").json()
    assert engine["serving"] == "smollm2:2" and engine["pending"] is None and engine["pid"] == serving_pid, engine
    assert "did not start" in engine["last_error"]
    answer = api.post(
        "/v1/chat/completions", json={"model": "chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    )
    assert answer.status_code == 200 and answer.json()["model"] == "smollm2:2"
    assert engine["swaps"] == 1 and server.process is not None and server.process.poll() is None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
