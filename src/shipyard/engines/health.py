"""Active health checks of an engine Shipyard does not run: poll a URL, remember the verdict."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import aiohttp

__all__ = ["HealthPoller", "origin"]

log = logging.getLogger("shipyard.health")


def origin(url: str) -> str:
    """scheme://host[:port] of a URL."""
    scheme, rest = url.split("://", 1)
    return f"{scheme}://{rest.split('/', 1)[0]}"


class HealthPoller:
    """Polls `url` every `interval` seconds; healthy while it answers 200. Starts out healthy."""

    def __init__(self, name: str, url: str, interval: float, headers: dict[str, str] | None = None) -> None:
        self.name = name
        self.url = url
        self.interval = interval
        self.headers = headers or {}
        self.healthy = True
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"health-{self.name}")

    async def _check(self, session: aiohttp.ClientSession) -> bool:
        try:
            async with session.get(self.url, headers=self.headers) as response:
                return response.status == 200
        except (aiohttp.ClientError, TimeoutError, OSError):
            return False

    async def _run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=max(1.0, min(self.interval, 10.0)))
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while True:
                healthy = await self._check(session)
                if healthy != self.healthy:
                    log.warning("engine %s is now %s", self.name, "healthy" if healthy else "unhealthy")
                self.healthy = healthy
                await asyncio.sleep(self.interval)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
