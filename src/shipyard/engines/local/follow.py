"""A local engine that serves a registered model version and follows its alias with blue-green swaps.

`engines: {local: {kind: local, model: "registry:smollm2@champion"}}` resolves the reference through the
server's model registry. The worker answers to the version's served name (`smollm2:2`), so answers, traces and
/v1/models say which version served a call. When the alias moves (checked every `follow_interval` seconds, and
at once after a move through the API), `SwapController` swaps:

1. start a new worker on a new port with the new version's folder and wait until it is healthy;
2. switch the engine's `Endpoint` (base URL and served name together, one assignment of a frozen object);
3. let the old worker finish what it holds (its `/stats` `requests` reaches 0, or `drain_timeout`), then stop it.

If the new worker does not start, the old one keeps serving, the error is kept in `last_error` (and the engine's
`describe()`), and that version is not tried again until the reference resolves to another version. One swap at
a time; the controller re-resolves after each swap, so a move during a swap ends with the newest version served.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import aiohttp

from shipyard.engines.supervisor import ManagedProcess, free_port
from shipyard.errors import EngineError, ShipyardError

if TYPE_CHECKING:
    from shipyard.registry.models import ModelRef, ModelService

__all__ = [
    "REGISTRY_PREFIX",
    "Endpoint",
    "Servable",
    "SwapController",
    "WorkerHandle",
    "WorkerProcess",
    "parse_registry_model",
    "servable_version",
]

log = logging.getLogger("shipyard.engine.follow")
REGISTRY_PREFIX = "registry:"


def parse_registry_model(value: str) -> ModelRef:
    """`registry:NAME@ALIAS`, `registry:NAME:VERSION` or `registry:NAME` → a model reference (ValueError if bad)."""
    from shipyard.registry.models import parse_model_ref

    forms = "expected registry:NAME@ALIAS, registry:NAME:VERSION or registry:NAME"
    if not value.startswith(REGISTRY_PREFIX):
        raise ValueError(f"{value!r} is not a registry model ({forms})")
    rest = value[len(REGISTRY_PREFIX) :]
    try:
        return parse_model_ref(rest)
    except ShipyardError as exc:
        raise ValueError(f"bad registry model {value!r}: {exc.message} ({forms})") from None


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where an engine is reached and the model name it answers to: replaced as a whole, never changed."""

    base_url: str
    served_name: str


@dataclass(frozen=True, slots=True)
class Servable:
    """What a registry reference resolves to: a folder the worker can load, or the reason it cannot."""

    served_name: str
    folder: Path | None
    problem: str | None = None


def servable_version(models: ModelService, ref: ModelRef) -> Servable:
    """Resolve `ref` in the registry (NotFound if it does not resolve) and say whether a local worker can serve it."""
    from shipyard.registry.runtime import served_name

    version = models.get(ref)
    name = served_name(version)
    kind = version["kind"]
    if kind == "hosted":
        return Servable(name, None, f"{ref} is the hosted model {version['uri']!r}; route to an openai engine")
    if kind == "lora":
        return Servable(
            name, None, f"{ref} ({name}) is a LoRA adapter; the local engine serves full Hugging Face folders only"
        )
    if kind == "gguf":
        return Servable(name, None, f"{ref} ({name}) is a GGUF file; register it with --convert to serve it locally")
    folder = models.local_path(version)
    if folder is None:
        return Servable(name, None, f"{name}'s weights are not on this machine ({version['uri']})")
    if not (folder / "config.json").is_file():
        return Servable(name, None, f"{name}'s folder {folder} has no config.json")
    return Servable(name, folder)


class WorkerHandle(Protocol):
    """One worker process as the controller sees it (`WorkerProcess`, or a fake in unit tests)."""

    endpoint: Endpoint

    @property
    def pid(self) -> int | None: ...

    @property
    def last_error(self) -> str | None: ...

    def start(self) -> None: ...

    async def wait_started(self, timeout: float) -> bool: ...

    async def inflight(self) -> int: ...

    async def stop(self) -> None: ...


class WorkerProcess:
    """A supervised `shipyard.engines.local.worker` on its own port, serving one folder under one name."""

    def __init__(
        self,
        engine: str,
        servable: Servable,
        command: Callable[[Path, str, int], list[str]],
        startup_timeout: float,
    ) -> None:
        assert servable.folder is not None
        folder, name = servable.folder, servable.served_name
        self.port = free_port()
        self.endpoint = Endpoint(f"http://127.0.0.1:{self.port}/v1", name)
        self.process = ManagedProcess(
            engine,
            lambda: command(folder, name, self.port),
            lambda: f"http://127.0.0.1:{self.port}/health",
            startup_timeout=startup_timeout,
        )

    @property
    def pid(self) -> int | None:
        return self.process.pid

    @property
    def last_error(self) -> str | None:
        error = self.process.last_error
        if error and self.process.output:
            error = f"{error}: {self.process.output[-1]}"
        return error

    def start(self) -> None:
        self.process.start()

    async def wait_started(self, timeout: float) -> bool:
        """True once healthy; False if the first start failed (the supervisor would retry it) or took too long."""
        deadline = time.monotonic() + timeout
        while not await self.process.wait_ready(0.25):
            if self.process.restarts > 0 or time.monotonic() > deadline:
                return False
        return True

    async def inflight(self) -> int:
        url = f"http://127.0.0.1:{self.port}/stats"
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session,
                session.get(url) as response,
            ):
                return int((await response.json()).get("requests", 0))
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError):
            return 0  # gone or not answering: nothing left to wait for

    async def stop(self) -> None:
        await self.process.stop()


class SwapController:
    """Keeps one worker serving what a registry reference resolves to; swaps blue-green when that changes."""

    def __init__(
        self,
        name: str,
        resolve: Callable[[], Servable],
        spawn: Callable[[Servable], WorkerHandle],
        switch: Callable[[WorkerHandle], None],
        *,
        startup_timeout: float = 600.0,
        drain_timeout: float = 30.0,
        interval: float = 1.0,
        drain_grace: float = 0.5,
        drain_poll: float = 0.1,
    ) -> None:
        self.name = name
        self._resolve = resolve
        self._spawn = spawn
        self._switch = switch
        self.startup_timeout = startup_timeout
        self.drain_timeout = drain_timeout
        self.interval = interval
        self.drain_grace = drain_grace
        self.drain_poll = drain_poll
        self.current: WorkerHandle | None = None
        self.pending: str | None = None  # the served name being started
        self.failed: str | None = None  # not tried again until the reference resolves elsewhere
        self.last_error: str | None = None
        self.swaps = 0
        self._starting: WorkerHandle | None = None
        self._draining: list[WorkerHandle] = []
        self._resolve_error: str | None = None
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None

    def describe(self) -> dict[str, Any]:
        return {
            "serving": self.current_name,
            "pending": self.pending,
            "last_error": self.last_error,
            "swaps": self.swaps,
        }

    async def start(self) -> None:
        """Resolve, start the first worker (readiness is awaited elsewhere) and begin following."""
        servable = await asyncio.to_thread(self._resolve)
        if servable.problem is not None:
            raise EngineError(f"engine {self.name!r}: {servable.problem}")
        worker = self._spawn(servable)
        worker.start()
        self.current = worker
        self._switch(worker)
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._task = asyncio.create_task(self._follow(), name=f"follow-{self.name}")

    def poke(self) -> None:
        """Check the reference now (callable from any thread, e.g. the API after an alias move)."""
        if self._loop is not None and self._wake is not None:
            self._loop.call_soon_threadsafe(self._wake.set)

    async def _follow(self) -> None:
        assert self._wake is not None
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval)
            self._wake.clear()
            try:
                while await self.check():  # after a swap, look again at once: the alias may have moved meanwhile
                    pass
            except Exception as exc:  # a bug or an OS error must not end the following: log it, show it, go on
                log.exception("engine %s: following the registry reference failed", self.name)
                self.last_error = f"{type(exc).__name__}: {exc}"

    async def check(self) -> bool:
        """Resolve once and swap if the reference now names another servable version; True if a swap happened."""
        assert self.current is not None
        try:
            target = await asyncio.to_thread(self._resolve)
        except (ShipyardError, OSError) as exc:
            self._resolve_failed(str(exc))
            return False
        except Exception as exc:  # the store may be briefly unreachable (driver errors): keep serving, look again
            self._resolve_failed(f"{type(exc).__name__}: {exc}")
            return False
        self._resolve_error = None
        if target.served_name == self.current.endpoint.served_name:
            self.failed = None  # moved back: a later move to the failed version is a new attempt
            return False
        if target.served_name == self.failed:
            return False
        if target.problem is not None:
            self._fail(target.served_name, target.problem)
            return False
        return await self._swap(target)

    def _resolve_failed(self, message: str) -> None:
        if message != self._resolve_error:
            log.warning("engine %s: the model reference does not resolve (%s); keeping the current worker", self.name,
                        message)  # fmt: skip
            self._resolve_error = message

    def _fail(self, served: str, message: str) -> None:
        self.failed = served
        self.last_error = message
        log.error("engine %s: cannot swap to %s: %s; still serving %s", self.name, served, message,
                  self.current_name)  # fmt: skip

    async def _swap(self, target: Servable) -> bool:
        self.pending = target.served_name
        log.info("engine %s: starting %s next to %s", self.name, target.served_name, self.current_name)
        try:
            worker = self._spawn(target)
        except (OSError, ShipyardError) as exc:
            self.pending = None
            self._fail(target.served_name, f"the worker for {target.served_name} could not be started: {exc}")
            return False
        self._starting = worker
        try:
            try:
                worker.start()
                started = await worker.wait_started(self.startup_timeout)
                error = f"the worker for {target.served_name} did not start: {worker.last_error}"
            except (OSError, ShipyardError) as exc:
                started, error = False, f"the worker for {target.served_name} could not be started: {exc}"
            if not started:
                self._fail(target.served_name, error)
                await worker.stop()
                return False
        finally:
            self._starting = None
            self.pending = None
        old, self.current = self.current, worker
        self._switch(worker)
        self.swaps += 1
        self.failed = None
        self.last_error = None
        log.info("engine %s: now serving %s (pid %s)", self.name, target.served_name, worker.pid)
        if old is not None:
            self._draining.append(old)
            try:
                await self._drain(old)
                await old.stop()
            finally:
                self._draining.remove(old)
        return True

    @property
    def current_name(self) -> str | None:
        return self.current.endpoint.served_name if self.current else None

    async def _drain(self, old: WorkerHandle) -> None:
        """Wait until the old worker holds no request (or `drain_timeout`). A short grace first: a request that
        read the old endpoint just before the switch may still be connecting."""
        deadline = time.monotonic() + self.drain_timeout
        await asyncio.sleep(min(self.drain_grace, self.drain_timeout))
        while time.monotonic() < deadline:
            left = await old.inflight()
            if left == 0:
                return
            await asyncio.sleep(self.drain_poll)
        log.warning("engine %s: drain timeout (%.0fs) over; stopping %s with requests still open", self.name,
                    self.drain_timeout, old.endpoint.served_name)  # fmt: skip

    async def stop(self) -> None:
        # Listed before the cancel: a swap's cleanup on cancellation forgets the workers it was handling.
        workers = [w for w in (self.current, self._starting, *self._draining) if w is not None]
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await asyncio.gather(*(w.stop() for w in workers), return_exceptions=True)
