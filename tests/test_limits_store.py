"""The limiter on a real store (SQLite and PostgreSQL): two limiters stand for two gateway processes sharing it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest

from shipyard.auth.keys import principal_of
from shipyard.auth.limits import Limiter, windows
from shipyard.config import PriceConfig
from shipyard.errors import RateLimited
from shipyard.store import Store

PRICES = {"m": PriceConfig(input=1_000_000.0, output=1_000_000.0)}  # $1 per token


@pytest.fixture()
def store(store_url: str) -> Iterator[Store]:
    opened = Store(store_url)
    try:
        yield opened
    finally:
        opened.close()


def _key(**limits: float) -> object:
    row = {"id": "k" * 32, "name": "n", "owner": "o", "scopes": [], "deployments": ["*"], "limits": limits}
    return principal_of({**row, "expires_at": None, "created_by": None})


def _wait_for_a_fresh_minute() -> None:
    if 60 - time.time() % 60 < 15:
        time.sleep(60 - time.time() % 60 + 0.2)


def test_two_limiters_admit_exactly_the_limit_and_return_unspent_leases(store: Store) -> None:
    key = _key(requests_per_minute=50)
    a = Limiter(store.auth.counters, {}, PRICES, lease_max=8)
    b = Limiter(store.auth.counters, {}, PRICES, lease_max=8)
    _wait_for_a_fresh_minute()

    async def attempt(limiter: Limiter) -> bool:
        try:
            await limiter.admit(key, "d")  # type: ignore[arg-type]
        except RateLimited:
            return False
        return True

    async def run() -> list[bool]:
        first = await asyncio.gather(*(attempt(a if i % 2 else b) for i in range(30)))
        await a.sync()  # unspent leases go back to the shared counter
        await b.sync()
        rest = await asyncio.gather(*(attempt(a if i % 3 else b) for i in range(60)))
        return [*first, *rest]

    results = asyncio.run(run())
    assert results.count(True) == 50
    asyncio.run(a.sync())
    asyncio.run(b.sync())
    shared = store.auth.counters.read([(f"key:{'k' * 32}", "requests", windows(time.time()).minute)])
    assert list(shared.values()) == [50.0]


def test_spend_is_shared_after_a_sync(store: Store) -> None:
    key = _key(budget_per_day=10.0)
    a = Limiter(store.auth.counters, {}, PRICES)
    b = Limiter(store.auth.counters, {}, PRICES)

    async def run() -> None:
        ticket = await a.admit(key, "d")  # type: ignore[arg-type]
        a.settle(ticket, "m", {"prompt_tokens": 6, "completion_tokens": 5})  # $11
        with pytest.raises(RateLimited):
            await a.admit(key, "d")  # type: ignore[arg-type]  # a knows at once
        await a.sync()
        with pytest.raises(RateLimited) as refused:
            await b.admit(key, "d")  # type: ignore[arg-type]  # b reads the shared total on first sight
        assert refused.value.code == "budget_per_day"

    asyncio.run(run())
