"""/api/v1/prompts: push versions, move labels, show, diff and render prompts.

Writing needs `prompts:write` (checked for every route by shipyard.auth). A protected label moves (or loses its
protection) only with `force: true`, and `force` needs an admin key.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from shipyard.auth.access import PRINCIPAL
from shipyard.errors import InvalidRequest, NotFound, PermissionDenied
from shipyard.registry.prompts import check_label, check_name, diff_versions, parse_ref, parse_spec, render_version
from shipyard.registry.resolver import lookup
from shipyard.store.registry import LabelProtected, PromptRepo

__all__ = ["router"]

router = APIRouter(tags=["prompts"])


class LabelMove(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: int = Field(ge=1, description="The version the label should point at.")
    protected: bool | None = Field(None, description="Set or clear the label's protection.")
    force: bool = Field(False, description="Move (or unprotect) a protected label; needs an admin key.")
    actor: str = Field("api", max_length=256, description="Who moved it, when auth is off (else: the key's id).")


class RenderRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ref: str | None = Field(None, description="'@label' or ':3' after the name; default the latest version.")
    variables: dict[str, Any] = Field(default_factory=dict)


def _repo(request: Request) -> PromptRepo:
    return request.app.state.shipyard.store.registry.prompts


def _invalidate(request: Request, name: str) -> None:
    prompts = getattr(request.app.state.shipyard.gateway, "prompts", None)
    if prompts is not None:
        prompts.invalidate(name)


def _public(version: dict[str, Any]) -> dict[str, Any]:
    return {**version, "ref": f"{version['name']}:{version['version']}"}


@router.get("/prompts")
def list_prompts(request: Request) -> dict[str, Any]:
    return {"data": _repo(request).list()}


@router.post("/prompts/{name}/versions", status_code=201)
async def push_version(name: str, request: Request) -> dict[str, Any]:
    """Body: the prompt file's fields as JSON (messages or template, variables, params, message, author, labels)."""
    check_name(name)
    try:
        payload = await request.json()
    except ValueError:
        raise InvalidRequest("The body must be a JSON object.", code="invalid_json") from None
    if not isinstance(payload, dict):
        raise InvalidRequest("The body must be a JSON object.", code="invalid_json")
    labels = payload.get("labels") or []
    if not isinstance(labels, list):
        raise InvalidRequest("'labels' must be a list.", param="labels")
    labels = [check_label(label) for label in labels]
    spec = parse_spec(payload)
    actor = spec["author"] or "api"
    try:
        row = await asyncio.to_thread(_repo(request).create_version, name, spec, labels, actor)
    except LabelProtected as exc:
        raise PermissionDenied(
            f"Label '{exc}' of prompt '{name}' is protected; move it with `label --force`.", code="label_protected"
        ) from None
    _invalidate(request, name)
    return _public(row)


@router.get("/prompts/{name}")
def get_prompt(name: str, request: Request) -> dict[str, Any]:
    repo = _repo(request)
    versions = repo.versions(name)
    if not versions:
        raise NotFound(f"No prompt named '{name}'.", code="prompt_not_found")
    return {"name": name, "versions": [_public(v) for v in versions], "labels": repo.labels(name)}


@router.get("/prompts/{name}/versions/{version}")
def get_version(name: str, version: int, request: Request) -> dict[str, Any]:
    found = _repo(request).get_version(name, version)
    if found is None:
        raise NotFound(f"Prompt '{name}' has no version {version}.", code="prompt_not_found")
    return _public(found)


@router.get("/prompts/{name}/labels/{label}")
def get_label(name: str, label: str, request: Request) -> dict[str, Any]:
    return _public(lookup(_repo(request), parse_ref(f"{name}@{label}")))


@router.get("/prompts/{name}/labels/{label}/history")
def label_history(name: str, label: str, request: Request) -> dict[str, Any]:
    return {"data": _repo(request).label_history(name, label)}


@router.put("/prompts/{name}/labels/{label}")
def move_label(name: str, label: str, move: LabelMove, request: Request) -> dict[str, Any]:
    check_label(label)
    repo = _repo(request)
    if label == "latest":
        raise InvalidRequest("'latest' always points at the newest version; push a version to move it.")
    principal = request.scope.get(PRINCIPAL)
    if move.force and principal is not None and not principal.admin:
        raise PermissionDenied("Forcing a protected label needs an admin key.", code="missing_scope")
    if repo.get_version(name, move.version) is None:
        raise NotFound(f"Prompt '{name}' has no version {move.version}.", code="prompt_not_found")
    actor = principal.id if principal is not None and principal.id else move.actor
    try:
        result = repo.move_label(name, label, move.version, actor, force=move.force, protect=move.protected)
    except LabelProtected:
        raise PermissionDenied(
            f"Label '{label}' of prompt '{name}' is protected; moving or unprotecting it needs force "
            "(`shipyard prompts label --force`).",
            code="label_protected",
        ) from None
    _invalidate(request, name)
    return {"name": name, **result}


@router.get("/prompts/{name}/diff")
def diff(name: str, a: str, b: str, request: Request) -> dict[str, Any]:
    """`a` and `b` are versions (`3`) or labels (`production`)."""
    repo = _repo(request)
    left = lookup(repo, _side(name, a))
    right = lookup(repo, _side(name, b))
    return {"a": left["version"], "b": right["version"], "diff": diff_versions(left, right)}


def _side(name: str, side: str) -> Any:
    return parse_ref(f"{name}:{side}" if side.isdigit() else f"{name}@{side}")


@router.post("/prompts/{name}/render")
def render(name: str, body: RenderRequest, request: Request) -> dict[str, Any]:
    version = lookup(_repo(request), parse_ref(name + (body.ref or "")))
    rendered = render_version(version, body.variables)
    key = "messages" if isinstance(rendered, list) else "text"
    return {"ref": f"{name}:{version['version']}", key: rendered, "params": version["params"]}
