"""/api/v1/keys (API keys) and /api/v1/secrets (encrypted provider secrets).

Keys: a caller with `keys:write` (or admin) creates keys holding at most its own scopes, deployments, limits and
expiry; it sees and manages the keys it created; nobody edits their own key (that is how one would raise one's
own role or budget). Every change is audited with before/after. The key itself is in the creation answer only.
Secrets: admin only; values go in and never come out.
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from shipyard.auth.access import AUDITED, PRINCIPAL, Access, actor_of
from shipyard.auth.keys import ANONYMOUS, KeySpec, Principal, check_grant, issue_key, key_summary, public_key_row
from shipyard.auth.settings import RateLimitConfig
from shipyard.errors import InvalidRequest, NotFound, PermissionDenied
from shipyard.store.auth import KeyRepo

__all__ = ["router", "secrets_router"]

router = APIRouter(tags=["keys"])
secrets_router = APIRouter(tags=["secrets"])


class KeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=128, description="What the key is for.")
    owner: str | None = Field(None, max_length=128, description="Who holds it; default: the creator's owner.")
    scopes: list[str] = Field(default_factory=list, description="e.g. prompts:read, traces:write, keys:write, admin.")
    deployments: list[str] = Field(default_factory=list, description='Deployments it may call; ["*"] for all.')
    limits: RateLimitConfig | None = None
    expires_at: float | None = Field(None, description="Unix time after which the key is refused.")
    expires_in_days: float | None = Field(None, gt=0, description="Alternative to expires_at.")


class KeyUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(None, min_length=1, max_length=128)
    scopes: list[str] | None = None
    deployments: list[str] | None = None
    limits: RateLimitConfig | None = None
    expires_at: float | None = None


class SecretPut(BaseModel):
    model_config = ConfigDict(extra="forbid")
    value: str = Field(min_length=1, max_length=16384)


def _access(request: Request) -> Access:
    return request.app.state.shipyard.access


def _repo(request: Request) -> KeyRepo:
    return request.app.state.shipyard.store.auth.keys


def _caller(request: Request) -> Principal:
    return request.scope.get(PRINCIPAL) or ANONYMOUS


def _audit(request: Request, action: str, target: str, before: Any, after: Any) -> None:
    audit = _access(request).audit
    if audit is not None:
        audit.record(actor_of(request.scope), action, target, before, after)
        request.scope[AUDITED] = True


def _manageable(request: Request, key_id: str) -> dict[str, Any]:
    """The key, if the caller may see and manage it: admin, its creator, or the key itself."""
    row = _repo(request).get(key_id)
    caller = _caller(request)
    if row is None or not (caller.admin or row["created_by"] == caller.id or row["id"] == caller.id):
        raise NotFound(f"No API key '{key_id}'.", code="key_not_found")
    return row


@router.post("/keys", status_code=201)
def create_key(body: KeyCreate, request: Request) -> dict[str, Any]:
    """Create a key; the answer holds the key itself, shown this once."""
    caller = _caller(request)
    if not caller.has("keys:write"):
        raise PermissionDenied("Creating keys needs the 'keys:write' scope.", code="missing_scope")
    if body.expires_at is not None and body.expires_in_days is not None:
        raise InvalidRequest("Give expires_at or expires_in_days, not both.", param="expires_at")
    expires = body.expires_at if body.expires_in_days is None else time.time() + body.expires_in_days * 86400
    spec = KeySpec(
        name=body.name,
        owner=body.owner or caller.owner,
        scopes=frozenset(body.scopes),
        deployments=tuple(body.deployments),
        limits=body.limits,
        expires_at=expires,
    )
    token, row = issue_key(_repo(request), spec, caller)
    _audit(request, "key.create", f"key:{row['id']}", None, key_summary(row))
    return {**public_key_row(row), "key": token}


@router.get("/keys")
def list_keys(request: Request) -> dict[str, Any]:
    """Admin: every key. Others: the keys they created, and their own."""
    caller = _caller(request)
    repo = _repo(request)
    if caller.admin:
        rows = repo.list()
    else:
        own = repo.get(caller.id) if caller.id else None
        rows = ([own] if own else []) + repo.list(created_by=caller.id)
    return {"data": [public_key_row(r) for r in rows]}


@router.get("/keys/self")
def show_self(request: Request) -> dict[str, Any]:
    caller = _caller(request)
    row = _repo(request).get(caller.id) if caller.id else None
    if row is None:
        return {"id": None, "name": caller.name, "scopes": sorted(caller.scopes), "deployments": ["*"]}
    return public_key_row(row)


@router.get("/keys/{key_id}")
def show_key(key_id: str, request: Request) -> dict[str, Any]:
    return public_key_row(_manageable(request, key_id))


@router.patch("/keys/{key_id}")
def update_key(key_id: str, body: KeyUpdate, request: Request) -> dict[str, Any]:
    """Change a key you manage, within your own rights. Your own key cannot be edited (revoke it instead)."""
    caller = _caller(request)
    row = _manageable(request, key_id)
    if row["id"] == caller.id:
        raise PermissionDenied(
            "A key cannot change itself (no one raises their own scopes, limits or budget).", code="self_update_refused"
        )
    if not caller.has("keys:write"):
        raise PermissionDenied("Changing keys needs the 'keys:write' scope.", code="missing_scope")
    changes = body.model_dump(exclude_unset=True)
    merged = {**row, **changes}
    limits = changes["limits"] if "limits" in changes else row["limits"]
    spec = KeySpec(
        name=merged["name"],
        owner=row["owner"],
        scopes=frozenset(merged["scopes"]),
        deployments=tuple(merged["deployments"]),
        limits=RateLimitConfig(**limits) if limits else None,
        expires_at=merged["expires_at"],
    )
    check_grant(caller, spec)
    values: dict[str, Any] = {"name": spec.name, "scopes": sorted(spec.scopes), "deployments": list(spec.deployments)}
    values["limits"] = spec.limits.model_dump(exclude_none=True) if spec.limits and not spec.limits.empty() else None
    values["expires_at"] = spec.expires_at
    _repo(request).update(key_id, values)
    after = {**row, **values}
    keys = _access(request).keys
    if keys is not None:
        keys.forget(key_id)
    _audit(request, "key.update", f"key:{key_id}", key_summary(row), key_summary(after))
    return public_key_row(after)


@router.post("/keys/{key_id}/revoke")
def revoke_key(key_id: str, request: Request) -> dict[str, Any]:
    """Revoke a key you manage (or your own). Other processes notice within `auth.cache_seconds`."""
    row = _manageable(request, key_id)
    if row["revoked_at"] is None:
        now = time.time()
        _repo(request).update(key_id, {"revoked_at": now})
        after = {**row, "revoked_at": now}
        keys = _access(request).keys
        if keys is not None:
            keys.forget(key_id)
        _audit(request, "key.revoke", f"key:{key_id}", key_summary(row), key_summary(after))
        row = after
    return public_key_row(row)


@secrets_router.get("/secrets")
def list_secrets(request: Request) -> dict[str, Any]:
    """Names and dates only: values never leave the server."""
    return {"data": request.app.state.shipyard.store.auth.secrets.names()}


@secrets_router.put("/secrets/{name}")
def put_secret(name: str, body: SecretPut, request: Request) -> dict[str, Any]:
    box = _access(request).secrets
    assert box is not None
    replaced = box.put(name, body.value)
    engine_secrets = request.app.state.shipyard.engine_secrets
    if engine_secrets is not None:  # engines using this secret take the new value now (this process)
        engine_secrets.refresh(name)
    _audit(request, "secret.put", f"secret:{name}", {"exists": replaced}, {"exists": True})
    return {"name": name, "replaced": replaced}


@secrets_router.delete("/secrets/{name}")
def delete_secret(name: str, request: Request) -> dict[str, Any]:
    if not request.app.state.shipyard.store.auth.secrets.delete(name):
        raise NotFound(f"No secret '{name}'.", code="secret_not_found")
    _audit(request, "secret.delete", f"secret:{name}", {"exists": True}, {"exists": False})
    return {"name": name, "deleted": True}
