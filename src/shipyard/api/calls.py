"""GET /api/v1/calls: one flat record per gateway call, newest first, read from the calls' spans.

Kept for the operators and scripts that read it before tracing existed; the full record of a call, with its
attempts and the application spans around it, is its trace (/api/v1/traces/{trace_id}).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request

from shipyard.api.traces import get_trace

__all__ = ["router"]

router = APIRouter(tags=["calls"])


def call_record(span: dict[str, Any]) -> dict[str, Any]:
    """A gateway call's span as the flat call record."""
    attributes = span.get("attributes") or {}
    code, _, message = (span.get("error") or "").partition(": ")
    return {
        "id": span["trace_id"],
        "trace_id": span["trace_id"],
        "span_id": span["span_id"],
        "created_at": span["start_time"],
        "endpoint": span["name"],
        "deployment": span["deployment"],
        "served_by": attributes.get("served_by", span["deployment"]),
        "engine": span["engine"],
        "model": span["model"],
        "stream": span["stream"],
        "status": span["status_code"],
        "error_code": code or None,
        "error_message": message or None,
        "attempts": span["attempts"],
        "latency_ms": span["duration_ms"],
        "ttft_ms": span["ttft_ms"],
        "prompt_tokens": span["prompt_tokens"],
        "completion_tokens": span["completion_tokens"],
        "cost": span["cost"],
        "user": span["user"],
    }


@router.get("/calls")
def list_calls(
    request: Request,
    limit: int = Query(50, ge=1, le=1000),
    deployment: str | None = None,
    before: float | None = Query(None, description="Only calls started before this unix time (paging)."),
) -> dict[str, Any]:
    """Gateway calls, newest first; page with `before=<created_at of the last row>`."""
    spans = request.app.state.shipyard.store.traces.gateway_calls(deployment, limit=limit, before=before)
    rows = [call_record(span) for span in spans]
    return {"data": rows, "next_before": rows[-1]["created_at"] if len(rows) == limit else None}


@router.get("/calls/{call_id}")
def get_call(call_id: str, request: Request) -> dict[str, Any]:
    """One gateway call as its trace."""
    return get_trace(call_id, request)
