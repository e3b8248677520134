"""/api/v1/experiments: evaluation runs and their rows, written by the runner (CLI or SDK), read and compared."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shipyard.errors import ConfigError, InvalidRequest, NotFound
from shipyard.evals.base import build_scorer
from shipyard.evals.report import compare, compare_html
from shipyard.evals.runner import StoreSink, run_experiment
from shipyard.evals.suite import Suite
from shipyard.gateway.pipeline import new_id
from shipyard.store.experiments import ExperimentRepo

__all__ = ["router"]

router = APIRouter(tags=["experiments"])
log = logging.getLogger("shipyard.evals")
_ID = r"^[0-9a-f]{32}$"


class NewExperiment(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(pattern=_ID)
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
    dataset: str | None = Field(None, max_length=128)
    dataset_version: int | None = None
    target: dict[str, Any]
    suite: dict[str, Any]
    rows_total: int = Field(ge=0)


class RowIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    index: int = Field(ge=0)
    input: Any = None
    expected: Any = None
    metadata: Any = None
    status: Literal["ok", "error"]
    output: str | None = None
    error: str | None = None
    latency_ms: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cost: float | None = None
    scores: dict[str, dict[str, Any]] = Field(default_factory=dict)
    trace_id: str | None = Field(None, max_length=64)


class Rows(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rows: list[RowIn] = Field(max_length=10_000)


class Finish(BaseModel):
    model_config = ConfigDict(extra="forbid")
    status: Literal["finished", "interrupted", "failed"]
    summary: dict[str, Any]


def _repo(request: Request) -> ExperimentRepo:
    return request.app.state.shipyard.store.experiments


def _get(repo: ExperimentRepo, experiment_id: str) -> dict[str, Any]:
    found = repo.get(experiment_id)
    if found is None:
        raise NotFound(f"No experiment with id '{experiment_id}'.", code="experiment_not_found")
    return found


@router.post("/experiments", status_code=201)
def create_experiment(body: NewExperiment, request: Request) -> dict[str, Any]:
    repo = _repo(request)
    if repo.get(body.id) is not None:
        raise InvalidRequest(f"An experiment with id '{body.id}' exists.", code="experiment_exists", status=409)
    repo.create(body.model_dump())
    return _get(repo, body.id)


class RunRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    suite: dict[str, Any] = Field(description="A suite, as in a suite file (registered scorers only).")


@router.post("/experiments/run", status_code=202)
async def run_suite(body: RunRequest, request: Request) -> dict[str, Any]:
    """Run a suite on the server, in the background; poll GET /experiments/{id} for its status and summary.

    Each row goes through this server's own gateway with the caller's key, so the key's deployment scopes and
    limits apply exactly as if the caller sent the requests. Scorers must be registered ones: a module path
    would make the server import code named by a request.
    """
    state = request.app.state.shipyard
    try:
        suite = Suite.model_validate(body.suite)
        for spec in suite.scorers:
            build_scorer(spec.name, spec.options)  # allow_module_path stays off
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(map(str, first["loc"])) or "suite"
        raise InvalidRequest(f"Invalid suite: {where}: {first['msg']}", param="suite", code="invalid_suite") from None
    except ConfigError as exc:
        raise InvalidRequest(f"Invalid suite: {exc}", param="suite", code="invalid_suite") from None
    name, version = suite.dataset_ref()
    found, rows = await asyncio.to_thread(state.registry.datasets.rows, name, version)
    experiment_id = new_id()
    host, port = request.scope["server"][:2]
    task = asyncio.create_task(
        run_experiment(suite, rows, StoreSink(state.store), gateway_url=f"http://{host}:{port}",
                       api_key=_bearer(request), dataset_version=found["version"], experiment_id=experiment_id)
    )  # fmt: skip
    state.tasks.append(task)  # cancelled at shutdown: the run is then saved as interrupted
    task.add_done_callback(_forget(state.tasks))
    return {"id": experiment_id, "status": "running", "rows_total": len(rows[: suite.limit] if suite.limit else rows)}


def _bearer(request: Request) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def _forget(tasks: list[Any]) -> Any:
    def done(task: asyncio.Task[Any]) -> None:
        if task in tasks:
            tasks.remove(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("server-side experiment failed: %s", task.exception())

    return done


@router.get("/experiments")
def list_experiments(
    request: Request, name: str | None = None, limit: int = Query(50, ge=1, le=1000)
) -> dict[str, Any]:
    return {"data": _repo(request).list(limit=limit, name=name)}


@router.get("/experiments/compare", response_model=None)
def compare_experiments(
    request: Request, a: str = Query(pattern=_ID), b: str = Query(pattern=_ID), format: Literal["json", "html"] = "json"
) -> dict[str, Any] | HTMLResponse:
    repo = _repo(request)
    first, second = _get(repo, a), _get(repo, b)
    for experiment in (first, second):
        if experiment["summary"] is None or "scorers" not in experiment["summary"]:
            raise InvalidRequest(f"Experiment '{experiment['id']}' has not finished.", code="experiment_unfinished")
    result = compare(first, repo.rows(a), second, repo.rows(b))
    return HTMLResponse(compare_html(result)) if format == "html" else result


@router.get("/experiments/{experiment_id}")
def get_experiment(experiment_id: str, request: Request) -> dict[str, Any]:
    return _get(_repo(request), experiment_id)


@router.get("/experiments/{experiment_id}/rows")
def experiment_rows(experiment_id: str, request: Request) -> dict[str, Any]:
    repo = _repo(request)
    _get(repo, experiment_id)
    return {"data": repo.rows(experiment_id)}


@router.post("/experiments/{experiment_id}/rows")
def save_rows(experiment_id: str, body: Rows, request: Request) -> dict[str, Any]:
    repo = _repo(request)
    _get(repo, experiment_id)  # a resumed run writes into an interrupted experiment, so any status is fine
    return {"saved": repo.save_rows(experiment_id, [r.model_dump() for r in body.rows])}


@router.post("/experiments/{experiment_id}/finish")
def finish(experiment_id: str, body: Finish, request: Request) -> dict[str, Any]:
    repo = _repo(request)
    _get(repo, experiment_id)
    repo.finish(experiment_id, body.status, body.summary)
    return _get(repo, experiment_id)
