"""Builds the FastAPI app for /api; errors come out in the same OpenAI shape as the gateway's."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException

from shipyard.api import audit as audit_api
from shipyard.api import calls, datasets, engines, experiments, online_evals, prompts, traces
from shipyard.api import keys as keys_api
from shipyard.api import models as model_registry
from shipyard.errors import ApiError, error_body

if TYPE_CHECKING:
    from shipyard.server import AppState

__all__ = ["create_api"]


def create_api(state: AppState) -> FastAPI:
    api = FastAPI(title="Shipyard control plane", version="1", docs_url="/docs", openapi_url="/openapi.json")
    api.state.shipyard = state
    api.include_router(engines.router, prefix="/v1")
    api.include_router(calls.router, prefix="/v1")
    api.include_router(traces.router, prefix="/v1")  # issue 3: tracing
    api.include_router(prompts.router, prefix="/v1")  # issue 4: registry
    api.include_router(datasets.router, prefix="/v1")  # issue 4: registry
    api.include_router(model_registry.router, prefix="/v1")  # issue 4: registry
    api.include_router(experiments.router, prefix="/v1")  # issue 5: evaluation
    api.include_router(online_evals.router, prefix="/v1")  # issue 5: online evaluation
    api.include_router(keys_api.router, prefix="/v1")  # issue 6: access control
    api.include_router(keys_api.secrets_router, prefix="/v1")  # issue 6
    api.include_router(audit_api.router, prefix="/v1")  # issue 6

    @api.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> Response:
        return Response(exc.body(), status_code=exc.status, media_type="application/json", headers=exc.headers)

    @api.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException) -> Response:
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return Response(error_body(str(exc.detail), kind), status_code=exc.status_code, media_type="application/json")

    @api.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        param = ".".join(str(p) for p in first["loc"][1:]) or None
        message = f"Invalid '{param}': {first['msg']}" if param else str(first["msg"])
        return Response(
            error_body(message, "invalid_request_error", param=param, code="invalid_value"),
            status_code=400,
            media_type="application/json",
        )

    return api
