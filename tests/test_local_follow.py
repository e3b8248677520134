"""The local engine on a registry model, without worker processes: the `registry:` syntax at config load, what a
version resolves to (a real SQLite registry), the gateway target following the engine's current served name, and
the blue-green swap state machine. The workers here are fakes of `WorkerHandle` (what a ManagedProcess-backed
`WorkerProcess` does is tested with the real model in tests/test_local_follow_e2e.py)."""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
import yaml

from shipyard.config import ConfigError, EjectionConfig, LocalEngineConfig, load_settings
from shipyard.engines.base import LocalEngine
from shipyard.engines.local.follow import (
    Endpoint,
    Servable,
    SwapController,
    parse_registry_model,
    servable_version,
)
from shipyard.errors import EngineError, NotFound
from shipyard.gateway.routing import Router
from shipyard.registry.artifacts import ArtifactStore
from shipyard.registry.models import ModelRef, ModelService
from shipyard.store import Store


def _load(tmp_path: Path, engine: dict[str, object]) -> LocalEngineConfig:
    path = tmp_path / "shipyard.yaml"
    path.write_text(yaml.safe_dump({"engines": {"local": {"kind": "local", **engine}}}))
    config = load_settings(path, environ={}).engines["local"]
    assert isinstance(config, LocalEngineConfig)
    return config


def test_registry_model_syntax_is_checked_at_config_load(tmp_path: Path) -> None:
    assert parse_registry_model("registry:smollm2@champion") == ModelRef("smollm2", alias="champion")
    assert parse_registry_model("registry:smollm2:2") == ModelRef("smollm2", version=2)
    assert parse_registry_model("registry:smollm2") == ModelRef("smollm2", alias="latest")
    assert _load(tmp_path, {"model": "registry:smollm2@champion"}).drain_timeout == 30.0
    assert _load(tmp_path, {"model": "bundled:smollm2"}).model == "bundled:smollm2"  # unchanged
    for bad, fragment in [
        ("registry:smollm2:0", "positive integer"),
        ("registry:smoll m2@champion", "Invalid model name"),
        ("registry:smollm2@", "registry:NAME@ALIAS"),
        ("registry:", "registry:NAME:VERSION"),
    ]:
        with pytest.raises(ConfigError) as info:
            _load(tmp_path, {"model": bad})
        assert fragment in str(info.value) and "engines.local" in str(info.value), str(info.value)
    with pytest.raises(ConfigError, match="served_name cannot be set with a registry: model"):
        _load(tmp_path, {"model": "registry:smollm2@champion", "served_name": "x"})


def _hf_folder(path: Path, weights: bytes) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (path / "model.safetensors").write_bytes(weights)
    return path


def test_what_a_version_resolves_to(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    svc = ModelService(store.registry.models, ArtifactStore(tmp_path / "artifacts"))
    try:
        svc.register("m", _hf_folder(tmp_path / "a", b"one"))
        svc.register("m", _hf_folder(tmp_path / "b", b"two"), copy=False)
        svc.register("m", hosted="provider-model")
        adapter = tmp_path / "adapter"
        adapter.mkdir()
        (adapter / "adapter_config.json").write_text("{}")
        (adapter / "adapter_model.safetensors").write_bytes(b"lora")
        svc.register("tuned", adapter, base="m:1")
        gguf = tmp_path / "w.gguf"
        gguf.write_bytes(b"GGUF" + b"\0" * 16)
        svc.register("g", gguf)
        store.registry.models.set_alias("m", "champion", 2)

        copied = servable_version(svc, ModelRef("m", version=1))
        assert copied.served_name == "m:1" and copied.problem is None and copied.folder is not None
        assert (copied.folder / "model.safetensors").read_bytes() == b"one"
        referenced = servable_version(svc, parse_registry_model("registry:m@champion"))
        assert referenced == Servable("m:2", (tmp_path / "b").resolve())
        for ref, fragment in [
            (ModelRef("m", version=3), "hosted model 'provider-model'"),
            (ModelRef("tuned", version=1), "LoRA adapter"),
            (ModelRef("g", version=1), "--convert"),
        ]:
            found = servable_version(svc, ref)
            assert found.folder is None and found.problem is not None and fragment in found.problem
        with pytest.raises(NotFound):
            servable_version(svc, ModelRef("m", alias="nope"))
    finally:
        store.close()


def test_a_target_without_model_follows_the_engines_current_served_name(tmp_path: Path) -> None:
    config = LocalEngineConfig(kind="local", model="registry:smollm2@champion")
    engine = LocalEngine("local", config, tmp_path)
    from shipyard.config import DeploymentConfig

    deployments = {
        "follows": DeploymentConfig.model_validate({"targets": [{"engine": "local"}]}),
        "pinned": DeploymentConfig.model_validate({"targets": [{"engine": "local", "model": "fixed"}]}),
    }
    router = Router({"local": engine}, deployments, EjectionConfig())
    [follows] = router.deployments["follows"].targets
    [pinned] = router.deployments["pinned"].targets
    assert follows.model == "local" and pinned.model == "fixed"
    engine.endpoint = Endpoint("http://127.0.0.1:9/v1", "smollm2:2")
    assert follows.model == "smollm2:2" and engine.base_url == "http://127.0.0.1:9/v1"
    assert follows.label == "local/smollm2:2" and pinned.model == "fixed"


# -- the swap state machine ---------------------------------------------------------------------------------


def run_async(case: Callable[[], Coroutine[Any, Any, None]]) -> Callable[[], None]:
    @functools.wraps(case)
    def run() -> None:
        asyncio.run(asyncio.wait_for(case(), 60))

    return run


class FakeWorker:
    """Stands in for a worker process: starts or fails as told, reports in-flight requests from a script."""

    def __init__(self, servable: Servable, log: list[str], *, ok: bool, inflight: list[int], gate: asyncio.Event):
        self.endpoint = Endpoint(f"http://fake/{servable.served_name}", servable.served_name)
        self.pid: int | None = None
        self.last_error: str | None = None
        self._log = log
        self._ok = ok
        self._inflight = list(inflight)
        self._gate = gate
        self.stopped = False

    def start(self) -> None:
        self._log.append(f"start {self.endpoint.served_name}")

    async def wait_started(self, timeout: float) -> bool:
        await self._gate.wait()
        if not self._ok:
            self.last_error = "exited with code 1 while starting: SafetensorError"
        return self._ok

    async def inflight(self) -> int:
        left = self._inflight.pop(0) if self._inflight else 0
        self._log.append(f"inflight {self.endpoint.served_name}={left}")
        return left

    async def stop(self) -> None:
        self.stopped = True
        self._log.append(f"stop {self.endpoint.served_name}")


class Harness:
    def __init__(self) -> None:
        self.target = Servable("m:1", Path("/m1"))
        self.log: list[str] = []
        self.broken: set[str] = set()
        self.inflight: dict[str, list[int]] = {}
        self.gate = asyncio.Event()
        self.gate.set()
        self.workers: list[FakeWorker] = []
        self.switched: list[str] = []
        self.controller = SwapController(
            "local", self.resolve, self.spawn, self.switch, drain_timeout=5, interval=3600, drain_grace=0,
            drain_poll=0,
        )  # fmt: skip

    def resolve(self) -> Servable:
        return self.target

    def spawn(self, servable: Servable) -> FakeWorker:
        worker = FakeWorker(
            servable,
            self.log,
            ok=servable.served_name not in self.broken,
            inflight=self.inflight.get(servable.served_name, []),
            gate=self.gate,
        )
        self.workers.append(worker)
        return worker

    def switch(self, worker: object) -> None:
        assert isinstance(worker, FakeWorker)
        self.switched.append(worker.endpoint.served_name)
        self.log.append(f"switch {worker.endpoint.served_name}")


@run_async
async def test_swap_starts_new_switches_then_drains_and_stops_old() -> None:
    h = Harness()
    h.inflight["m:1"] = [2, 1, 0]
    await h.controller.start()
    assert h.switched == ["m:1"] and h.controller.describe()["serving"] == "m:1"
    assert not await h.controller.check()  # nothing moved
    h.target = Servable("m:2", Path("/m2"))
    assert await h.controller.check()
    # the new worker was healthy before the switch; the old one stopped only once it held no request
    assert h.log == ["start m:1", "switch m:1", "start m:2", "switch m:2",
                     "inflight m:1=2", "inflight m:1=1", "inflight m:1=0", "stop m:1"]  # fmt: skip
    assert h.controller.describe() == {"serving": "m:2", "pending": None, "last_error": None, "swaps": 1}
    await h.controller.stop()
    assert all(w.stopped for w in h.workers)


@run_async
async def test_a_failed_start_keeps_the_old_worker_and_is_not_retried_until_the_alias_moves() -> None:
    h = Harness()
    await h.controller.start()
    h.broken.add("m:3")
    h.target = Servable("m:3", Path("/m3"))
    assert not await h.controller.check()
    state = h.controller.describe()
    assert state["serving"] == "m:1" and state["pending"] is None
    assert "m:3 did not start" in state["last_error"] and "SafetensorError" in state["last_error"]
    assert h.workers[1].stopped and not h.workers[0].stopped and h.switched == ["m:1"]
    for _ in range(3):  # the poll sees the same version: no retry loop
        assert not await h.controller.check()
    assert len(h.workers) == 2
    h.target = Servable("m:1", Path("/m1"))  # moved back, then to m:3 again: that is a new attempt
    assert not await h.controller.check()
    h.broken.clear()
    h.target = Servable("m:3", Path("/m3"))
    assert await h.controller.check()
    assert h.controller.describe() == {"serving": "m:3", "pending": None, "last_error": None, "swaps": 1}
    await h.controller.stop()


@run_async
async def test_an_unservable_version_is_an_error_without_a_start() -> None:
    h = Harness()
    await h.controller.start()
    h.target = Servable("m:4", None, "m@champion is the hosted model 'x'; route to an openai engine")
    assert not await h.controller.check()
    assert len(h.workers) == 1 and "hosted model" in h.controller.describe()["last_error"]
    await h.controller.stop()
    unservable = SwapController("local", h.resolve, h.spawn, h.switch)
    with pytest.raises(EngineError, match="hosted model"):  # at start, the engine cannot serve it at all
        await unservable.start()


@run_async
async def test_an_alias_moved_during_a_swap_ends_with_the_newest_version() -> None:
    h = Harness()
    await h.controller.start()
    h.gate.clear()  # the next worker "loads" until the gate opens
    h.target = Servable("m:2", Path("/m2"))
    h.controller.poke()
    while h.controller.describe()["pending"] != "m:2":
        await asyncio.sleep(0.01)
    h.target = Servable("m:3", Path("/m3"))  # moved again while m:2 is starting
    h.controller.poke()
    h.gate.set()
    while h.controller.describe()["serving"] != "m:3":
        await asyncio.sleep(0.01)
    assert h.switched == ["m:1", "m:2", "m:3"]
    starts = [line for line in h.log if line.startswith("start")]
    assert starts == ["start m:1", "start m:2", "start m:3"]  # one swap at a time, none repeated
    await h.controller.stop()
    assert [w.stopped for w in h.workers] == [True, True, True]


@run_async
async def test_stop_during_a_swap_stops_every_worker() -> None:
    h = Harness()
    await h.controller.start()
    h.gate.clear()
    h.target = Servable("m:2", Path("/m2"))
    h.controller.poke()
    while h.controller.describe()["pending"] != "m:2":
        await asyncio.sleep(0.01)
    await h.controller.stop()
    assert [w.stopped for w in h.workers] == [True, True]


@run_async
async def test_drain_timeout_stops_the_old_worker_anyway() -> None:
    h = Harness()
    h.controller.drain_timeout = 0.05
    h.inflight["m:1"] = [1] * 10_000
    await h.controller.start()
    h.target = Servable("m:2", Path("/m2"))
    assert await h.controller.check()
    assert h.workers[0].stopped and h.controller.describe()["serving"] == "m:2"
    await h.controller.stop()


@run_async
async def test_a_worker_that_cannot_even_be_spawned_is_a_failed_swap() -> None:
    h = Harness()
    await h.controller.start()
    spawn = h.controller._spawn

    def no_ports(servable: Servable) -> FakeWorker:
        raise OSError("no free port")

    h.controller._spawn = no_ports
    h.target = Servable("m:2", Path("/m2"))
    assert not await h.controller.check()
    state = h.controller.describe()
    assert state["serving"] == "m:1" and state["pending"] is None and "no free port" in state["last_error"]
    h.controller._spawn = spawn
    h.target = Servable("m:3", Path("/m3"))
    assert await h.controller.check() and h.controller.describe()["serving"] == "m:3"
    await h.controller.stop()
