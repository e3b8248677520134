"""GET /api/v1/calls: the minimal record of recent gateway calls, newest first."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request

from shipyard.errors import NotFound

router = APIRouter(tags=["calls"])


@router.get("/calls")
def list_calls(
    request: Request,
    limit: int = Query(50, ge=1, le=1000),
    deployment: str | None = None,
    before: float | None = Query(None, description="Only calls created before this unix time (paging)."),
) -> dict[str, Any]:
    store = request.app.state.shipyard.store
    rows = store.calls.list(limit=limit, deployment=deployment, before=before)
    return {"data": rows, "next_before": rows[-1]["created_at"] if len(rows) == limit else None}


@router.get("/calls/{call_id}")
def get_call(call_id: str, request: Request) -> dict[str, Any]:
    row = request.app.state.shipyard.store.calls.get(call_id)
    if row is None:
        raise NotFound(f"No call with id '{call_id}'.", code="call_not_found")
    return row
