"""GET /api/v1/engines and /api/v1/deployments: what is configured and how it is doing."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from shipyard.errors import NotFound
from shipyard.gateway.routes import readiness

router = APIRouter(tags=["engines"])


def _state(request: Request) -> Any:
    return request.app.state.shipyard


@router.get("/engines")
def list_engines(request: Request) -> dict[str, Any]:
    state = _state(request)
    return {"data": [engine.describe() for engine in state.engines.values()]}


@router.get("/engines/{name}")
def get_engine(name: str, request: Request) -> dict[str, Any]:
    engine = _state(request).engines.get(name)
    if engine is None:
        raise NotFound(f"No engine named '{name}'.", code="engine_not_found")
    return engine.describe()


@router.get("/deployments")
def list_deployments(request: Request) -> dict[str, Any]:
    state = _state(request)
    report = readiness(state.router, state.routes.draining)["deployments"]
    data = []
    for name, dep in state.router.deployments.items():
        data.append({"name": name, "config": dep.config.model_dump(), **report[name]})
    return {"data": data}


@router.get("/deployments/{name}")
def get_deployment(name: str, request: Request) -> dict[str, Any]:
    state = _state(request)
    dep = state.router.get(name)
    if dep is None:
        raise NotFound(f"No deployment named '{name}'.", code="deployment_not_found")
    report = readiness(state.router, state.routes.draining)["deployments"][name]
    return {"name": name, "config": dep.config.model_dump(), **report}
