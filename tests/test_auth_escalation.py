"""No key can create a key holding more than its creator, and no one raises their own scopes, limits or budget
(LiteLLM CVE-2026-47101, CVE-2026-47102). Real server, auth on, the fake hosted provider as the engine."""

from __future__ import annotations

import time

import httpx

from tests.helpers import ShipyardProcess
from tests.test_auth import admin_key, bearer, chat, fake, make_key, server  # noqa: F401 - fixtures

LIMITS = {"requests_per_minute": 100, "tokens_per_minute": 10_000, "budget_per_day": 1.0, "budget_per_month": 10.0}


def _manager(server: ShipyardProcess, admin_key: str) -> tuple[str, dict]:  # noqa: F811
    """A team lead: may manage keys, read prompts, write datasets, call d1; limited and expiring."""
    return make_key(
        server,
        admin_key,
        name="lead",
        scopes=["keys:write", "prompts:read", "datasets:write"],
        deployments=["d1"],
        limits=LIMITS,
        expires_at=time.time() + 3600,
    )


def _create(server: ShipyardProcess, key: str, **body: object) -> httpx.Response:  # noqa: F811
    return httpx.post(server.url + "/api/v1/keys", headers=bearer(key), json={"name": "child", **body}, timeout=10)


def test_creator_can_grant_a_subset(server: ShipyardProcess, admin_key: str) -> None:  # noqa: F811
    lead, _ = _manager(server, admin_key)
    ok = _create(
        server,
        lead,
        scopes=["prompts:read", "datasets:read"],  # datasets:write implies read
        deployments=["d1"],
        limits={**LIMITS, "requests_per_minute": 10},
        expires_in_days=0.01,
    )
    assert ok.status_code == 201, ok.text
    child = ok.json()
    assert child["created_by"] and child["scopes"] == ["datasets:read", "prompts:read"]
    assert chat(server, child["key"]).status_code == 200


def test_escalations_are_refused(server: ShipyardProcess, admin_key: str) -> None:  # noqa: F811
    lead, _ = _manager(server, admin_key)
    base = {"deployments": ["d1"], "limits": LIMITS, "expires_in_days": 0.01}
    attempts = {
        "admin": {**base, "scopes": ["admin"]},
        "a scope it lacks": {**base, "scopes": ["traces:read"]},
        "write where it reads": {**base, "scopes": ["prompts:write"]},
        "another deployment": {**base, "deployments": ["d2"]},
        "every deployment": {**base, "deployments": ["*"]},
        "higher rpm": {**base, "limits": {**LIMITS, "requests_per_minute": 101}},
        "higher budget": {**base, "limits": {**LIMITS, "budget_per_month": 11.0}},
        "no limits at all": {"deployments": ["d1"], "expires_in_days": 0.01},
        "no expiry": {"deployments": ["d1"], "limits": LIMITS},
        "later expiry": {**base, "expires_in_days": 30},
    }
    before = len(httpx.get(server.url + "/api/v1/keys", headers=bearer(admin_key)).json()["data"])
    for what, body in attempts.items():
        response = _create(server, lead, **body)
        assert response.status_code == 403, (what, response.text)
        assert response.json()["error"]["code"].endswith("_escalation"), what
    after = len(httpx.get(server.url + "/api/v1/keys", headers=bearer(admin_key)).json()["data"])
    assert after == before


def test_unknown_scope_is_a_400(server: ShipyardProcess, admin_key: str) -> None:  # noqa: F811
    response = _create(server, admin_key, scopes=["superuser"])
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_scope"


def test_without_keys_write_no_key_can_be_created(server: ShipyardProcess, admin_key: str) -> None:  # noqa: F811
    reader, _ = make_key(server, admin_key, scopes=["prompts:read"])
    response = _create(server, reader, scopes=[])
    assert response.status_code == 403


def test_no_one_edits_their_own_key(server: ShipyardProcess, admin_key: str) -> None:  # noqa: F811
    lead, row = _manager(server, admin_key)
    for change in (
        {"scopes": ["admin"]},
        {"limits": {**LIMITS, "budget_per_day": 1000.0}},
        {"deployments": ["*"]},
        {"expires_at": None},
    ):
        response = httpx.patch(server.url + f"/api/v1/keys/{row['id']}", headers=bearer(lead), json=change)
        assert response.status_code == 403, (change, response.text)
        assert response.json()["error"]["code"] == "self_update_refused"
    mine = httpx.get(server.url + "/api/v1/keys/self", headers=bearer(lead)).json()
    assert mine["scopes"] == ["datasets:write", "keys:write", "prompts:read"] and mine["limits"] == LIMITS


def test_updates_of_children_stay_within_the_editor(server: ShipyardProcess, admin_key: str) -> None:  # noqa: F811
    lead, _ = _manager(server, admin_key)
    child = _create(server, lead, scopes=["prompts:read"], deployments=["d1"], limits=LIMITS, expires_in_days=0.01)
    child_id = child.json()["id"]
    raise_it = httpx.patch(server.url + f"/api/v1/keys/{child_id}", headers=bearer(lead), json={"scopes": ["admin"]})
    assert raise_it.status_code == 403
    budget = {"limits": {**LIMITS, "budget_per_day": 5.0}}
    assert httpx.patch(server.url + f"/api/v1/keys/{child_id}", headers=bearer(lead), json=budget).status_code == 403
    lower = httpx.patch(
        server.url + f"/api/v1/keys/{child_id}",
        headers=bearer(lead),
        json={"limits": {**LIMITS, "budget_per_day": 0.5}},
    )
    assert lower.status_code == 200 and lower.json()["limits"]["budget_per_day"] == 0.5
    # An admin may widen it.
    widened = httpx.patch(
        server.url + f"/api/v1/keys/{child_id}", headers=bearer(admin_key), json={"scopes": ["traces:read"]}
    )
    assert widened.status_code == 200 and widened.json()["scopes"] == ["traces:read"]


def test_keys_of_others_are_invisible_to_non_admins(server: ShipyardProcess, admin_key: str) -> None:  # noqa: F811
    lead_a, _ = _manager(server, admin_key)
    lead_b, _ = _manager(server, admin_key)
    child = _create(server, lead_a, scopes=[], deployments=["d1"], limits=LIMITS, expires_in_days=0.01).json()
    seen_by_b = httpx.get(server.url + "/api/v1/keys", headers=bearer(lead_b)).json()["data"]
    assert child["id"] not in {row["id"] for row in seen_by_b}
    assert httpx.get(server.url + f"/api/v1/keys/{child['id']}", headers=bearer(lead_b)).status_code == 404
    assert httpx.post(server.url + f"/api/v1/keys/{child['id']}/revoke", headers=bearer(lead_b)).status_code == 404
    assert chat(server, child["key"]).status_code == 200
    for row in seen_by_b:
        assert not {"lookup", "salt", "digest", "key"} & set(row)


def test_copying_traces_into_a_dataset_needs_traces_read(server: ShipyardProcess, admin_key: str) -> None:  # noqa: F811
    writer, _ = make_key(server, admin_key, scopes=["datasets:write"])
    response = httpx.post(server.url + "/api/v1/datasets/leak/from-traces", headers=bearer(writer), json={})
    assert response.status_code == 403
    assert "traces:read" in response.json()["error"]["message"]
    both, _ = make_key(server, admin_key, scopes=["datasets:write", "traces:read"])
    allowed = httpx.post(server.url + "/api/v1/datasets/leak/from-traces", headers=bearer(both), json={})
    assert allowed.status_code not in (401, 403)
