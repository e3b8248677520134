"""/api/v1/models: register model versions, move aliases, read lineage, record evaluation results.

`source` is a path on the server's machine (or a Hugging Face Hub id, downloaded when the server has network
access). Until API keys and scopes exist (the access-control issue), anyone who can reach the API can register
a folder the server can read: keep the API on loopback or behind an authenticating proxy.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from shipyard.errors import InvalidRequest
from shipyard.registry.models import ModelService, parse_model_ref, resolve_source
from shipyard.registry.prompts import check_label, check_name

__all__ = ["router"]

router = APIRouter(tags=["models"])


class NewModelVersion(BaseModel):
    model_config = ConfigDict(extra="forbid")
    source: str | None = Field(None, description="Folder or .gguf file on the server, or a Hugging Face Hub id.")
    hosted: str | None = Field(None, description="A hosted provider's model id (no weights).")
    copy_weights: bool = Field(True, description="Copy the weights into the artifact store (false: reference).")
    base: str | None = Field(None, description="Base model version of an adapter: NAME:VERSION or NAME@ALIAS.")
    dataset: str | None = Field(None, max_length=200, description="Dataset version it was trained on.")
    run: str | None = Field(None, max_length=200, description="The run that produced it.")
    metrics: dict[str, Any] = Field(default_factory=dict, description="Evaluation results.")
    message: str = ""
    author: str = Field("api", max_length=256)
    allow_custom_code: bool = Field(False, description="Accept a config.json with auto_map (code is never imported).")
    convert: bool = Field(False, description="Convert a .gguf file to a safetensors folder before registering.")


class AliasMove(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: int = Field(ge=1)


class Metrics(BaseModel):
    model_config = ConfigDict(extra="forbid")
    metrics: dict[str, Any]


def _models(request: Request) -> ModelService:
    return request.app.state.shipyard.registry.models


@router.get("/models")
def list_models(request: Request) -> dict[str, Any]:
    svc = _models(request)
    aliases: dict[str, dict[str, int]] = {}
    for row in svc.repo.aliases():
        aliases.setdefault(row["name"], {})[row["alias"]] = row["version"]
    latest: dict[str, dict[str, Any]] = {}
    for row in svc.repo.versions():
        latest[row["name"]] = row
    data = [{"name": n, "latest_version": v["version"], "kind": v["kind"], "aliases": aliases.get(n, {})}
            for n, v in sorted(latest.items())]  # fmt: skip
    return {"data": data}


@router.post("/models/{name}/versions", status_code=201)
async def register(name: str, body: NewModelVersion, request: Request) -> dict[str, Any]:
    check_name(name, "model")
    svc = _models(request)
    state = request.app.state.shipyard
    source = None
    if body.source is not None:
        source = await asyncio.to_thread(resolve_source, body.source, Path(state.settings.data_dir) / "hub")
    elif body.hosted is None:
        raise InvalidRequest("Give 'source' (local weights or a Hub id) or 'hosted' (a provider's model id).")
    fields = {"base": body.base, "dataset": body.dataset, "run": body.run, "metrics": body.metrics,
              "message": body.message, "author": body.author, "allow_custom_code": body.allow_custom_code}  # fmt: skip
    if body.convert:
        if source is None:
            raise InvalidRequest("'convert' needs a .gguf 'source'.", param="convert")
        work = Path(state.settings.data_dir) / "tmp"
        version, created = await asyncio.to_thread(svc.register_converted, name, source, work, **fields)
    else:
        version, created = await asyncio.to_thread(
            lambda: svc.register(name, source, hosted=body.hosted, copy=body.copy_weights, origin=body.source, **fields)
        )
    return {**version, "created": created}


@router.get("/models/{name}")
def get_model(name: str, request: Request) -> dict[str, Any]:
    svc = _models(request)
    versions = svc.repo.versions(name)
    if not versions:
        svc.get(name)  # raises the 404
    return {"name": name, "versions": versions, "aliases": svc.repo.aliases(name)}


@router.get("/models/{name}/resolve/{ref}")
def resolve(name: str, ref: str, request: Request) -> dict[str, Any]:
    """`ref` is a version number or an alias."""
    return _models(request).get(f"{name}:{ref}" if ref.isdigit() else f"{name}@{ref}")


@router.put("/models/{name}/aliases/{alias}")
def move_alias(name: str, alias: str, body: AliasMove, request: Request) -> dict[str, Any]:
    check_label(alias)
    if alias == "latest":
        raise InvalidRequest("'latest' always means the newest version; register a version to move it.")
    svc = _models(request)
    svc.get(f"{name}:{body.version}")  # 404 unless the version exists
    previous = svc.repo.set_alias(name, alias, body.version)
    registry = request.app.state.shipyard.registry
    registry.models_changed()  # targets on name@alias follow from the next request; registry: local engines swap
    return {"name": name, "alias": alias, "version": body.version, "previous": previous}


@router.get("/models/{name}/lineage/{ref}")
def lineage(name: str, ref: str, request: Request) -> dict[str, Any]:
    parse_model_ref(f"{name}:{ref}" if ref.isdigit() else f"{name}@{ref}")
    return _models(request).lineage(f"{name}:{ref}" if ref.isdigit() else f"{name}@{ref}")


@router.post("/models/{name}/versions/{version}/metrics")
def add_metrics(name: str, version: int, body: Metrics, request: Request) -> dict[str, Any]:
    svc = _models(request)
    svc.get(f"{name}:{version}")
    return {"name": name, "version": version, "metrics": svc.repo.add_metrics(name, version, body.metrics)}
