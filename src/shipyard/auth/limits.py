"""Rate limits and spend budgets per key and per deployment, shared by every process on one store.

Requests per minute: each process leases a few requests at a time from a shared counter row with one atomic
conditional UPDATE (never past the limit), then spends the lease locally; near the limit leases shrink to one, so
the limit is exact across processes. Unspent leases are given back at every sync; one claimed in the last sync
interval of a minute and not spent is lost (at most `lease_max` requests per process refused too early).

Tokens per minute and spend per day/month are known only after a call: they are added to local pending totals,
written with additive upserts every `limits_sync_seconds`, and the shared totals read back. A call is admitted
while the total it sees is under the limit, so a limit can be overshot by the calls in flight plus one sync
interval of other processes' usage (a process reads the shared total the first time it meets a counter in a
window, then relies on the sync). Spend is priced from the same `tracing.prices` table that the traces' `cost`
column comes from (shipyard.tracing.ingest.price_of), counted when the call ends.
"""

from __future__ import annotations

import asyncio
import calendar
import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from shipyard.auth.keys import Principal
from shipyard.auth.settings import RateLimitConfig
from shipyard.errors import RateLimited
from shipyard.store.auth import CounterRepo
from shipyard.tracing.ingest import price_of

__all__ = ["Limiter", "Ticket", "windows"]

log = logging.getLogger("shipyard.auth")
CounterKey = tuple[str, str, int]


@dataclass(frozen=True, slots=True)
class Windows:
    minute: int
    day: int
    month: int
    minute_left: float
    day_left: float
    month_left: float


def windows(now: float) -> Windows:
    moment = datetime.fromtimestamp(now, UTC)
    days = calendar.monthrange(moment.year, moment.month)[1]
    month_end = datetime(moment.year, moment.month, days, tzinfo=UTC).timestamp() + 86400
    return Windows(
        minute=int(now // 60),
        day=int(now // 86400),
        month=moment.year * 12 + moment.month - 1,
        minute_left=60 - now % 60,
        day_left=86400 - now % 86400,
        month_left=month_end - now,
    )


@dataclass(frozen=True, slots=True)
class Ticket:
    """What an admitted call counts against, settled when the call ends."""

    subjects: tuple[tuple[str, RateLimitConfig], ...]
    windows: Windows


class Limiter:
    def __init__(
        self,
        counters: CounterRepo,
        deployment_limits: Mapping[str, RateLimitConfig],
        prices: Mapping[str, Any],
        sync_seconds: float = 0.5,
        lease_max: int = 256,
    ) -> None:
        self.counters = counters
        self.deployment_limits = {k: v for k, v in deployment_limits.items() if not v.empty()}
        self.prices = prices
        self.sync_seconds = sync_seconds
        self.lease_max = lease_max
        self._leases: dict[tuple[str, int], int] = {}
        self._claiming: dict[tuple[str, int], asyncio.Lock] = {}
        self._claiming_now: set[tuple[str, int]] = set()
        # One database operation of this limiter at a time: on SQLite, a claim and a sync writing at once would
        # make one of them sleep in SQLite's busy handler (tens of milliseconds).
        self._io_lock = threading.Lock()
        self._windows: tuple[int, Windows] | None = None
        self._pending: dict[CounterKey, float] = {}
        self._in_flight: dict[CounterKey, float] = {}  # pending usage being written right now
        self._totals: dict[CounterKey, float] = {}
        self._watched: set[CounterKey] = set()
        self._pruned_minute = 0

    def needed(self, principal: Principal | None, deployment: str) -> bool:
        return (principal is not None and principal.limits is not None) or deployment in self.deployment_limits

    async def admit(self, principal: Principal | None, deployment: str) -> Ticket:
        """Count the call against every limit that applies, or raise RateLimited naming the one exceeded."""
        subjects: list[tuple[str, RateLimitConfig]] = []
        if principal is not None and principal.limits is not None:
            subjects.append((f"key:{principal.id}", principal.limits))
        if deployment in self.deployment_limits:
            subjects.append((f"deployment:{deployment}", self.deployment_limits[deployment]))
        win = self._now()
        unseen = [k for subject, limits in subjects for k in _usage_keys(subject, limits, win) if k not in self._totals]
        if unseen:  # first call on a counter in this window: read the shared total instead of assuming zero
            self._totals.update(await asyncio.to_thread(self.counters.read, unseen))
        for subject, limits in subjects:
            self._check_usage(subject, limits, win)
        for subject, limits in subjects:
            if limits.requests_per_minute is not None:
                await self._take_request(subject, limits.requests_per_minute, win)
        return Ticket(tuple(subjects), win)

    def _now(self) -> Windows:
        """The windows of this second (recomputed once a second: Retry-After is in whole seconds anyway)."""
        now = time.time()
        second = int(now)
        cached = self._windows
        if cached is None or cached[0] != second:
            cached = self._windows = (second, windows(now))
        return cached[1]

    def settle(self, ticket: Ticket, model: str | None, usage: Mapping[str, Any] | None) -> None:
        """Add a finished call's tokens and cost to the pending totals (written by the sync task)."""
        if not usage:
            return
        tokens = usage.get("total_tokens") or (usage.get("prompt_tokens") or 0) + (usage.get("completion_tokens") or 0)
        cost = price_of(self.prices, model, usage) or 0.0
        win = ticket.windows
        for subject, limits in ticket.subjects:
            if limits.tokens_per_minute is not None and tokens:
                self._add((subject, "tokens", win.minute), float(tokens))
            if cost:
                if limits.budget_per_day is not None:
                    self._add((subject, "spend_day", win.day), cost)
                if limits.budget_per_month is not None:
                    self._add((subject, "spend_month", win.month), cost)

    def _add(self, key: CounterKey, amount: float) -> None:
        self._pending[key] = self._pending.get(key, 0.0) + amount

    def _used(self, key: CounterKey) -> float:
        self._watched.add(key)
        return self._totals.get(key, 0.0) + self._pending.get(key, 0.0) + self._in_flight.get(key, 0.0)

    def _check_usage(self, subject: str, limits: RateLimitConfig, win: Windows) -> None:
        checks = (
            ("tokens", win.minute, limits.tokens_per_minute, win.minute_left, "tokens_per_minute", "tokens per minute"),
            ("spend_day", win.day, limits.budget_per_day, win.day_left, "budget_per_day", "dollars per day"),
            (
                "spend_month",
                win.month,
                limits.budget_per_month,
                win.month_left,
                "budget_per_month",
                "dollars per month",
            ),
        )
        for metric, window, limit, left, code, unit in checks:
            if limit is not None and self._used((subject, metric, window)) >= limit:
                raise RateLimited(_message(subject, code, limit, unit), retry_after=left, code=code)

    async def _take_request(self, subject: str, limit: int, win: Windows) -> None:
        lease = (subject, win.minute)
        while True:
            left = self._leases.get(lease, 0)
            if left > 0:
                self._leases[lease] = left - 1
                return
            # One claim per counter at a time: the others wait for it instead of all hitting the database.
            lock = self._claiming.setdefault(lease, asyncio.Lock())
            async with lock:
                if self._leases.get(lease, 0) > 0:
                    continue  # another request's claim refilled the lease meanwhile
                self._claiming_now.add(lease)
                known = self._totals.get((subject, "requests", win.minute), 0.0)
                want = max(1, min(self.lease_max, int((limit - known) // 4)))
                try:
                    granted, total = await asyncio.to_thread(self._claim, subject, win.minute, want, limit)
                finally:
                    self._claiming_now.discard(lease)
                self._totals[(subject, "requests", win.minute)] = total
                if granted == 0:
                    code = "requests_per_minute"
                    message = _message(subject, code, limit, "requests per minute")
                    raise RateLimited(message, retry_after=win.minute_left, code=code)
                self._leases[lease] = self._leases.get(lease, 0) + granted

    async def run(self) -> None:
        """The sync task: write pending usage, read back shared totals, forget past windows."""
        while True:
            await asyncio.sleep(self.sync_seconds)
            await self.sync()

    async def sync(self) -> None:
        """One sync. The dictionaries change only on the event loop; the thread does the database work."""
        pending, self._pending = self._pending, {}
        self._in_flight = pending
        # Unspent leases go back each sync, so a lease strands at most one interval's worth at a window's end.
        unspent = {k: v for k, v in self._leases.items() if v > 0 and k not in self._claiming_now}
        for key in unspent:
            del self._leases[key]
        fresh = [k for k in self._watched if k not in pending]
        win = windows(time.time())
        prune = win.minute - self._pruned_minute >= 10
        try:
            added, read = await asyncio.to_thread(self._io, pending, fresh, unspent, win if prune else None)
        except Exception:  # the store may be briefly unavailable: keep the usage and retry next time
            for key, value in pending.items():
                self._add(key, value)
            for key, value in unspent.items():
                self._leases[key] = self._leases.get(key, 0) + value
            log.warning("limit counters could not be synced; retrying", exc_info=True)
            return
        finally:
            self._in_flight = {}
        self._totals.update(read)
        self._totals.update(added)
        if prune:
            self._pruned_minute = win.minute
        self._forget_old(win)

    def _claim(self, subject: str, window: int, want: int, limit: int) -> tuple[int, float]:
        with self._io_lock:
            return self.counters.claim(subject, "requests", window, want, limit)

    def _io(
        self,
        pending: dict[CounterKey, float],
        fresh: list[CounterKey],
        unspent: dict[tuple[str, int], int],
        prune: Windows | None,
    ) -> tuple[dict[CounterKey, float], dict[CounterKey, float]]:
        with self._io_lock:
            for (subject, window), amount in unspent.items():
                self.counters.release(subject, "requests", window, amount)
            added = self.counters.add((s, m, w, v) for (s, m, w), v in pending.items()) if pending else {}
            read = self.counters.read(fresh) if fresh else {}
            if prune is not None:  # old rows in the store, now and then
                self.counters.prune("requests", prune.minute - 2)
                self.counters.prune("tokens", prune.minute - 2)
                self.counters.prune("spend_day", prune.day - 2)
                self.counters.prune("spend_month", prune.month - 2)
        return added, read

    def _forget_old(self, win: Windows) -> None:
        current = {"requests": win.minute, "tokens": win.minute, "spend_day": win.day, "spend_month": win.month}
        for store in (self._totals, self._pending):
            for key in [k for k in store if k[2] < current[k[1]]]:
                del store[key]
        self._watched = {k for k in self._watched if k[2] >= current[k[1]]}
        self._leases = {k: v for k, v in self._leases.items() if k[1] >= win.minute}
        self._claiming = {k: v for k, v in self._claiming.items() if k[1] >= win.minute}


def _usage_keys(subject: str, limits: RateLimitConfig, win: Windows) -> list[CounterKey]:
    keys = []
    if limits.tokens_per_minute is not None:
        keys.append((subject, "tokens", win.minute))
    if limits.budget_per_day is not None:
        keys.append((subject, "spend_day", win.day))
    if limits.budget_per_month is not None:
        keys.append((subject, "spend_month", win.month))
    return keys


def _message(subject: str, code: str, limit: float, unit: str) -> str:
    kind, _, name = subject.partition(":")
    who = f"this API key ({name})" if kind == "key" else f"deployment '{name}'"
    return f"Limit '{code}' exceeded: {who} allows {limit:g} {unit}."
