"""The supervisor owns every engine process: start, health checks, restart with backoff, clean stop.

Each child runs in its own process group (so a launched server's own children are stopped with it)
and, on Linux, is told to die if the gateway dies first (PR_SET_PDEATHSIG): no orphans after
Ctrl-C, SIGTERM or a crash.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import socket
import sys
import time
from collections import deque
from collections.abc import Callable

import aiohttp

__all__ = ["ManagedProcess", "free_port"]

log = logging.getLogger("shipyard.supervisor")

_PR_SET_PDEATHSIG = 1


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> None:
    """Runs in the child between fork and exec."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class ManagedProcess:
    """One supervised process that serves HTTP and answers `health_url` with 200 when ready."""

    def __init__(
        self,
        name: str,
        command: Callable[[], list[str]],
        health_url: Callable[[], str],
        *,
        env: dict[str, str] | None = None,
        startup_timeout: float = 600.0,
        backoff: float = 1.0,
        backoff_max: float = 60.0,
        health_interval: float = 2.0,
        unhealthy_restart_after: int = 5,
        stop_grace: float = 10.0,
    ) -> None:
        self.name = name
        self._command = command
        self._health_url = health_url
        self._env = env or {}
        self.startup_timeout = startup_timeout
        self.backoff = backoff
        self.backoff_max = backoff_max
        self.health_interval = health_interval
        self.unhealthy_restart_after = unhealthy_restart_after
        self.stop_grace = stop_grace
        self.healthy = False
        self.restarts = 0
        self.last_error: str | None = None
        self.output: deque[str] = deque(maxlen=200)
        self.process: asyncio.subprocess.Process | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._ready = asyncio.Event()
        self._session: aiohttp.ClientSession | None = None
        self._log = logging.getLogger(f"shipyard.engine.{name}")

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def start(self) -> None:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))
        self._task = asyncio.create_task(self._run(), name=f"supervise-{self.name}")

    async def wait_ready(self, timeout: float | None = None) -> bool:
        try:
            await asyncio.wait_for(self._ready.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def _spawn(self) -> asyncio.subprocess.Process:
        command = self._command()
        log.info("starting engine %s: %s", self.name, " ".join(command))
        env = {**os.environ, **self._env, "PYTHONUNBUFFERED": "1"}
        process = await asyncio.create_subprocess_exec(
            *command,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=env,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        asyncio.create_task(self._pump(process), name=f"output-{self.name}")
        return process

    async def _pump(self, process: asyncio.subprocess.Process) -> None:
        assert process.stdout is not None
        async for raw in process.stdout:
            line = raw.decode(errors="replace").rstrip()
            if line:
                self.output.append(line)
                self._log.info("%s", line)

    async def _probe(self) -> bool:
        assert self._session is not None
        try:
            async with self._session.get(self._health_url()) as response:
                return response.status == 200
        except (aiohttp.ClientError, TimeoutError, OSError):
            return False

    async def _wait_healthy(self, process: asyncio.subprocess.Process) -> bool:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline and not self._stopping:
            if process.returncode is not None:
                self.last_error = f"exited with code {process.returncode} while starting"
                return False
            if await self._probe():
                return True
            await asyncio.sleep(0.25)
        self.last_error = f"not healthy within {self.startup_timeout:.0f}s"
        return False

    async def _watch(self, process: asyncio.subprocess.Process) -> None:
        """Return when the process died or stayed unhealthy too long."""
        failures = 0
        while not self._stopping:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(process.wait(), self.health_interval)
            if process.returncode is not None:
                self.last_error = f"exited with code {process.returncode}"
                return
            if await self._probe():
                failures = 0
                self.healthy = True
                continue
            failures += 1
            if failures >= 2:  # one slow answer under load is not an outage
                self.healthy = False
            if failures >= self.unhealthy_restart_after:
                self.last_error = f"failed {failures} health checks in a row"
                return

    async def _run(self) -> None:
        delay = self.backoff
        while not self._stopping:
            started = time.monotonic()
            try:
                self.process = await self._spawn()
            except OSError as exc:
                self.last_error = f"cannot start: {exc}"
                log.error("engine %s %s", self.name, self.last_error)
            else:
                if await self._wait_healthy(self.process):
                    self.healthy = True
                    self._ready.set()
                    log.info("engine %s is healthy (pid %s)", self.name, self.process.pid)
                    await self._watch(self.process)
                self.healthy = False
                await self._terminate(self.process)
            if self._stopping:
                return
            if time.monotonic() - started > 60:
                delay = self.backoff
            log.warning("engine %s %s; restarting in %.1fs", self.name, self.last_error, delay)
            self.restarts += 1
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.backoff_max)

    async def _terminate(self, process: asyncio.subprocess.Process) -> None:
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), self.stop_grace)
            except TimeoutError:
                log.warning("engine %s did not stop in %.0fs; killing it", self.name, self.stop_grace)
        # Whatever the leader did, nothing of its group may outlive it.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        if process.returncode is None:
            await process.wait()

    async def stop(self) -> None:
        self._stopping = True
        self.healthy = False
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.process is not None:
            await self._terminate(self.process)
        if self._session is not None:
            await self._session.close()
