"""Rate limits and budgets through the real server: requests, tokens and spend per key and per deployment, 429
with Retry-After and an OpenAI-shaped error naming the limit; then two gateway processes sharing one PostgreSQL.

The engine is the fake hosted provider (a third-party stand-in): every answer reports 9 tokens (5 + 4), priced
here at $0.9 per call. Counters are per minute: a test that needs several calls in one minute first waits for a
minute with enough of it left (a fixed-window limit resets at the minute's start).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from shipyard.auth.keys import new_key
from tests.helpers import FakeUpstreamProcess, PostgresServer, ShipyardProcess, wait_until
from tests.test_auth import auth_config, bearer, chat, fake, make_key, start_auth_server  # noqa: F401 - fixture

PRICE = {"fake-model": {"input": 100_000.0, "output": 100_000.0}}  # 9 tokens -> $0.90


def fresh_minute(needed: float = 20.0) -> None:
    """Wait until the current minute has at least `needed` seconds left."""
    left = 60 - time.time() % 60
    if left < needed:
        time.sleep(left + 0.2)


def limited_config(fake: FakeUpstreamProcess) -> dict[str, Any]:  # noqa: F811
    target = {"targets": [{"engine": "up", "model": "fake-model"}], "retries": 0}
    config = auth_config(fake, dl={**target, "rate_limits": {"requests_per_minute": 3}})
    config["tracing"] = {"prices": PRICE}
    config["auth"] = {"limits_sync_seconds": 0.2}
    return config


@pytest.fixture(scope="module")
def admin_key() -> str:
    return new_key()


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory,
    fake: FakeUpstreamProcess,  # noqa: F811
    admin_key: str,
) -> Iterator[ShipyardProcess]:
    proc = start_auth_server(tmp_path_factory.mktemp("limits"), limited_config(fake), admin_key)
    try:
        yield proc
    finally:
        proc.stop()


def assert_429(response: httpx.Response, code: str) -> None:
    assert response.status_code == 429, response.text
    error = response.json()["error"]
    assert error["type"] == "rate_limit_error" and error["code"] == code
    assert code in error["message"]
    retry_after = int(response.headers["retry-after"])
    assert 1 <= retry_after <= 31 * 86400


def test_requests_per_minute_per_key(server: ShipyardProcess, admin_key: str) -> None:
    key, _ = make_key(server, admin_key, deployments=["d1"], limits={"requests_per_minute": 3})
    fresh_minute()
    statuses = [chat(server, key, stream=i == 1).status_code for i in range(3)]
    assert statuses == [200, 200, 200]
    assert_429(chat(server, key), "requests_per_minute")
    assert_429(chat(server, key, stream=True), "requests_per_minute")  # streaming calls count the same
    assert int(chat(server, key).headers["retry-after"]) <= 60
    other, _ = make_key(server, admin_key, deployments=["d1"])
    assert chat(server, other).status_code == 200  # another key is not affected


def test_tokens_per_minute_per_key(server: ShipyardProcess, admin_key: str) -> None:
    key, _ = make_key(server, admin_key, deployments=["d1"], limits={"tokens_per_minute": 10})
    fresh_minute()
    assert chat(server, key).status_code == 200  # 9 tokens
    assert chat(server, key).status_code == 200  # 9 < 10 when it started: admitted, 18 now
    assert_429(chat(server, key), "tokens_per_minute")


def test_daily_and_monthly_budgets(server: ShipyardProcess, admin_key: str) -> None:
    daily, _ = make_key(server, admin_key, deployments=["d1"], limits={"budget_per_day": 1.0})
    assert chat(server, daily).status_code == 200  # $0.90
    assert chat(server, daily).status_code == 200  # $1.80
    response = chat(server, daily)
    assert_429(response, "budget_per_day")
    assert int(response.headers["retry-after"]) <= 86400
    monthly, _ = make_key(server, admin_key, deployments=["d1"], limits={"budget_per_month": 0.5})
    assert chat(server, monthly).status_code == 200
    assert_429(chat(server, monthly), "budget_per_month")


def test_deployment_limit_holds_for_all_callers(server: ShipyardProcess, admin_key: str) -> None:
    first, _ = make_key(server, admin_key, deployments=["dl"])
    second, _ = make_key(server, admin_key, deployments=["dl", "d1"])
    fresh_minute()
    assert [chat(server, first, "dl").status_code for _ in range(2)] == [200, 200]
    assert chat(server, second, "dl").status_code == 200
    response = chat(server, second, "dl")
    assert_429(response, "requests_per_minute")
    assert "deployment 'dl'" in response.json()["error"]["message"]
    assert chat(server, second, "d1").status_code == 200  # other deployments unaffected


@pytest.fixture()
def two_gateways(
    tmp_path: Path,
    postgres_url: str,
    fake: FakeUpstreamProcess,  # noqa: F811
) -> Iterator[tuple[ShipyardProcess, ShipyardProcess, str, str]]:
    url = PostgresServer.fresh_database(postgres_url)
    admin = new_key()
    config = {**limited_config(fake), "database_url": url}
    a = start_auth_server(tmp_path / "a", config, admin)
    b = start_auth_server(tmp_path / "b", config, admin)
    try:
        yield a, b, admin, url
    finally:
        a.stop()
        b.stop()


def test_limits_hold_across_two_gateways_on_one_postgresql(
    two_gateways: tuple[ShipyardProcess, ShipyardProcess, str, str],
) -> None:
    a, b, admin, url = two_gateways
    key, row = make_key(a, admin, deployments=["d1"], limits={"requests_per_minute": 5})
    fresh_minute(30)
    statuses = [chat(a if i % 2 == 0 else b, key).status_code for i in range(10)]
    assert statuses.count(200) == 5, statuses
    assert statuses[:5] == [200] * 5 and set(statuses[5:]) == {429}
    assert_429(chat(a, key), "requests_per_minute")
    assert_429(chat(b, key), "requests_per_minute")

    tokens_key, tokens_row = make_key(a, admin, deployments=["d1"], limits={"tokens_per_minute": 10})
    assert chat(a, tokens_key).status_code == 200
    assert chat(a, tokens_key).status_code == 200  # 18 tokens used, all through gateway a
    engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
    try:

        def written() -> bool:
            with engine.connect() as conn:
                value = conn.execute(
                    sa.text("SELECT value FROM limit_counters WHERE subject = :s AND metric = 'tokens'"),
                    {"s": f"key:{tokens_row['id']}"},
                ).scalar_one_or_none()
            return value is not None and value >= 18

        wait_until(written, 15, 0.1, "gateway a to write its token counter")
    finally:
        engine.dispose()
    assert_429(chat(b, tokens_key), "tokens_per_minute")  # b never served this key, yet knows its usage
