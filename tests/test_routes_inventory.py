"""Every registered route × every role's key, against an explicit allow-matrix.

The routes are enumerated from the real app (its Starlette routes and the mounted FastAPI app), so a route added
anywhere without an entry in ALLOW fails `test_every_route_has_an_entry`. Each request goes to a real server with
auth on; "allowed" means the access check let the request through (any status but 401/403), "refused" means 403
for a key without the scope and 401 for no key. The engine is the fake hosted provider (a third-party stand-in).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from starlette.routing import Mount

from shipyard.auth.keys import RESOURCES, new_key
from shipyard.config import Settings
from shipyard.server import create_app
from tests.helpers import FakeUpstreamProcess, ShipyardProcess
from tests.test_auth import auth_config, bearer, fake, start_auth_server  # noqa: F401 - fixture

ROLES = ("anonymous", "inference", "reader", "writer", "admin")
PUBLIC = frozenset(ROLES)
KEYED = frozenset(ROLES) - {"anonymous"}
READ = frozenset({"reader", "writer", "admin"})
WRITE = frozenset({"writer", "admin"})
ADMIN = frozenset({"admin"})

# (method, path template) -> roles the access check lets through.
ALLOW: dict[tuple[str, str], frozenset[str]] = {
    ("GET", "/healthz"): PUBLIC,
    ("GET", "/readyz"): PUBLIC,
    ("POST", "/v1/chat/completions"): KEYED,  # then the body's deployment is checked (test_auth.py)
    ("POST", "/v1/completions"): KEYED,
    ("GET", "/v1/models"): KEYED,
    ("GET", "/v1/models/{model:path}"): KEYED,
    ("*", "/v1/{rest:path}"): KEYED,  # the /v1 catch-all 404
    ("POST", "/v1/traces"): WRITE,  # OTLP ingest: traces:write
    ("GET", "/metrics"): READ,  # traces:read
    ("GET", "/api/openapi.json"): KEYED,
    ("GET", "/api/docs"): KEYED,
    ("GET", "/api/docs/oauth2-redirect"): KEYED,
    ("GET", "/api/redoc"): KEYED,
    # engines: admin only (their configs name hosts and headers); deployments: models:read
    ("GET", "/api/v1/engines"): ADMIN,
    ("GET", "/api/v1/engines/{name}"): ADMIN,
    ("GET", "/api/v1/deployments"): READ,
    ("GET", "/api/v1/deployments/{name}"): READ,
    ("GET", "/api/v1/calls"): READ,
    ("GET", "/api/v1/calls/{call_id}"): READ,
    ("GET", "/api/v1/traces"): READ,
    ("GET", "/api/v1/traces/export"): READ,
    ("GET", "/api/v1/traces/{trace_id}"): READ,
    ("POST", "/api/v1/spans"): WRITE,
    ("GET", "/api/v1/prompts"): READ,
    ("POST", "/api/v1/prompts/{name}/versions"): WRITE,
    ("GET", "/api/v1/prompts/{name}"): READ,
    ("GET", "/api/v1/prompts/{name}/versions/{version}"): READ,
    ("GET", "/api/v1/prompts/{name}/labels/{label}"): READ,
    ("GET", "/api/v1/prompts/{name}/labels/{label}/history"): READ,
    ("PUT", "/api/v1/prompts/{name}/labels/{label}"): WRITE,
    ("GET", "/api/v1/prompts/{name}/diff"): READ,
    ("POST", "/api/v1/prompts/{name}/render"): READ,  # renders, changes nothing
    ("GET", "/api/v1/datasets"): READ,
    ("POST", "/api/v1/datasets/{name}/versions"): WRITE,
    ("POST", "/api/v1/datasets/{name}/upload"): WRITE,
    ("GET", "/api/v1/datasets/{name}"): READ,
    ("GET", "/api/v1/datasets/{name}/rows"): READ,
    ("POST", "/api/v1/datasets/{name}/from-traces"): WRITE,  # datasets:write and traces:read
    ("GET", "/api/v1/online-evals"): READ,  # experiments:read
    ("GET", "/api/v1/online-evals/scores"): READ,
    ("GET", "/api/v1/online-evals/{rule}/series"): READ,
    ("GET", "/api/v1/models"): READ,
    ("POST", "/api/v1/models/{name}/versions"): WRITE,
    ("GET", "/api/v1/models/{name}"): READ,
    ("GET", "/api/v1/models/{name}/resolve/{ref}"): READ,
    ("PUT", "/api/v1/models/{name}/aliases/{alias}"): WRITE,
    ("GET", "/api/v1/models/{name}/lineage/{ref}"): READ,
    ("POST", "/api/v1/models/{name}/versions/{version}/metrics"): WRITE,
    ("GET", "/api/v1/experiments"): READ,
    ("POST", "/api/v1/experiments"): WRITE,
    ("POST", "/api/v1/experiments/run"): WRITE,  # experiments:write and datasets:read; calls use the caller's key
    ("GET", "/api/v1/experiments/compare"): READ,
    ("GET", "/api/v1/experiments/{experiment_id}"): READ,
    ("GET", "/api/v1/experiments/{experiment_id}/rows"): READ,
    ("POST", "/api/v1/experiments/{experiment_id}/rows"): WRITE,
    ("POST", "/api/v1/experiments/{experiment_id}/finish"): WRITE,
    # keys: any key reaches the routes, which then allow only keys:write holders to create/change keys
    ("POST", "/api/v1/keys"): WRITE,
    ("GET", "/api/v1/keys"): KEYED,
    ("GET", "/api/v1/keys/self"): KEYED,
    ("GET", "/api/v1/keys/{key_id}"): KEYED,
    ("PATCH", "/api/v1/keys/{key_id}"): KEYED,
    ("POST", "/api/v1/keys/{key_id}/revoke"): KEYED,
    ("GET", "/api/v1/secrets"): ADMIN,
    ("PUT", "/api/v1/secrets/{name}"): ADMIN,
    ("DELETE", "/api/v1/secrets/{name}"): ADMIN,
    ("GET", "/api/v1/audit"): ADMIN,
    ("GET", "/api/v1/audit/verify"): ADMIN,
}

# Bodies that get a request past validation where the route's own rights check needs one.
BODIES: dict[tuple[str, str], Any] = {("POST", "/api/v1/keys"): {"name": "inventory-probe"}}


def app_routes() -> list[tuple[str, str]]:
    """(method, path template) for every route of the real app; "*" where a route takes any method."""
    app = create_app(Settings.model_validate({"engines": {}, "deployments": {}}))
    found: list[tuple[str, str]] = []

    def walk(routes: list[Any], prefix: str) -> None:
        for route in routes:
            if isinstance(route, Mount):
                walk(list(route.routes), prefix + route.path)
                continue
            if hasattr(route, "original_router"):  # FastAPI's include_router entry: the router and its prefix
                walk(list(route.original_router.routes), prefix + route.include_context.prefix)
                continue
            methods = getattr(route, "methods", None) or getattr(route.endpoint, "methods", None)
            for method in sorted(set(methods or ["*"]) - {"HEAD"}):
                found.append((method, prefix + route.path))

    walk(list(app.routes), "")
    return found


def test_every_route_has_an_entry() -> None:
    routes = app_routes()
    assert len(routes) > 40
    missing = sorted(set(routes) - set(ALLOW))
    assert not missing, f"routes without an entry in the allow-matrix: {missing}"
    stale = sorted(set(ALLOW) - set(routes))
    assert not stale, f"allow-matrix entries for routes that no longer exist: {stale}"


@pytest.fixture(scope="module")
def role_server(
    tmp_path_factory: pytest.TempPathFactory,
    fake: FakeUpstreamProcess,  # noqa: F811
) -> Iterator[tuple[ShipyardProcess, dict[str, str | None]]]:
    admin = new_key()
    server = start_auth_server(tmp_path_factory.mktemp("inventory"), auth_config(fake), admin)
    keys: dict[str, str | None] = {"anonymous": None, "admin": admin}
    templates = {
        "inference": {"deployments": ["d1"]},
        "reader": {"scopes": [f"{r}:read" for r in RESOURCES]},
        "writer": {"scopes": [f"{r}:write" for r in RESOURCES] + ["keys:write"], "deployments": ["*"]},
    }
    for role, body in templates.items():
        response = httpx.post(server.url + "/api/v1/keys", headers=bearer(admin), json={"name": role, **body})
        assert response.status_code == 201, response.text
        keys[role] = response.json()["key"]
    try:
        yield server, keys
    finally:
        server.stop()


def _concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "x", path)


def test_every_route_against_every_role(role_server: tuple[ShipyardProcess, dict[str, str | None]]) -> None:
    server, keys = role_server
    wrong: list[str] = []
    checked = 0
    for method, template in app_routes():
        allowed = ALLOW.get((method, template))
        if allowed is None:
            continue  # reported by test_every_route_has_an_entry
        for role in ROLES:
            key = keys[role]
            verb = "POST" if method == "*" else method
            response = httpx.request(
                verb,
                server.url + _concrete(template),
                headers=bearer(key) if key else {},
                json=BODIES.get((method, template), {}),
                timeout=30,
            )
            checked += 1
            status = response.status_code
            refused = 401 if role == "anonymous" else 403
            ok = status not in (401, 403) if role in allowed else status == refused
            if not ok:
                wrong.append(f"{role:9} {verb} {template} -> {status} {response.text[:120]}")
    assert checked >= 200
    assert not wrong, "\n".join(wrong)
