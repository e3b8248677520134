"""SQL payloads as the bearer token on every route, and in every filter and path parameter of every GET route, on
SQLite and PostgreSQL: a fast 401 for the token, 200/400/404 for parameters, and no effect on the database
(LiteLLM CVE-2026-42208). `pg_sleep(8)` would outlast the 5-second client timeout if it ever ran.
The engine is the fake hosted provider (a third-party stand-in)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from starlette.routing import Mount

from shipyard.auth.keys import new_key
from shipyard.config import Settings
from shipyard.server import create_app
from tests.helpers import FakeUpstreamProcess, PostgresServer, ShipyardProcess
from tests.test_auth import SQL_PAYLOADS, auth_config, bearer, fake, start_auth_server  # noqa: F401 - fixture
from tests.test_routes_inventory import app_routes

pytestmark = pytest.mark.slow  # about 100 s: every route × every payload, on both backends

KNOWN_500: set[tuple[str, ...]] = set()  # routes known to answer 500 to a payload: none


def get_routes_with_params() -> list[tuple[str, list[str]]]:
    """(path template, query parameter names) of every GET route of the mounted API."""
    app = create_app(Settings.model_validate({"engines": {}, "deployments": {}}))
    found: list[tuple[str, list[str]]] = []

    def walk(routes: list[Any], prefix: str) -> None:
        for route in routes:
            if isinstance(route, Mount):
                walk(list(route.routes), prefix + route.path)
            elif hasattr(route, "original_router"):
                walk(list(route.original_router.routes), prefix + route.include_context.prefix)
            elif "GET" in (getattr(route, "methods", None) or ()) and hasattr(route, "dependant"):
                found.append((prefix + route.path, [q.alias or q.name for q in route.dependant.query_params]))

    walk(list(app.routes), "")
    return found


@pytest.fixture(params=["sqlite", "postgresql"])
def sql_server(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    fake: FakeUpstreamProcess,  # noqa: F811
) -> Iterator[tuple[ShipyardProcess, str]]:
    config = auth_config(fake)
    if request.param == "postgresql":
        config["database_url"] = PostgresServer.fresh_database(request.getfixturevalue("postgres_url"))
    admin = new_key()
    server = start_auth_server(tmp_path, config, admin)
    try:
        yield server, admin
    finally:
        server.stop()


def _state(server: ShipyardProcess, admin: str) -> tuple[int, bool]:
    keys = httpx.get(server.url + "/api/v1/keys", headers=bearer(admin), timeout=10).json()["data"]
    audit = httpx.get(server.url + "/api/v1/audit/verify", headers=bearer(admin), timeout=10).json()
    return len(keys), audit["ok"]


def test_sql_payloads_have_no_effect(sql_server: tuple[ShipyardProcess, str]) -> None:
    server, admin = sql_server
    httpx.post(server.url + "/api/v1/keys", headers=bearer(admin), json={"name": "victim"}, timeout=10)
    before = _state(server, admin)
    wrong: list[str] = []
    for method, template in app_routes():
        path = re.sub(r"\{[^}]+\}", "x", template)
        for payload in SQL_PAYLOADS:
            verb = "POST" if method == "*" else method
            response = httpx.request(verb, server.url + path, headers=bearer(payload), json={}, timeout=5)
            public = path in ("/healthz", "/readyz")
            if response.status_code != (200 if public else 401):
                wrong.append(f"token {verb} {path}: {response.status_code}")
    routes = get_routes_with_params()
    assert len(routes) > 15
    for template, params in routes:
        for payload in SQL_PAYLOADS:
            path = re.sub(r"\{[^}]+\}", quote(payload, safe=""), template)
            for query in [{}] + [{name: payload} for name in params]:
                response = httpx.get(server.url + path, headers=bearer(admin), params=query, timeout=5)
                known = response.status_code == 500 and (template, *query) in KNOWN_500
                if response.status_code not in (200, 400, 404) and not known:
                    wrong.append(f"param {template} {query}: {response.status_code} {response.text[:100]}")
    assert not wrong, "\n".join(wrong)
    assert _state(server, admin) == before
