"""Traces under /api/v1: list with filters and cursor pages, one trace as a span tree, JSON Lines export,
and the span ingestion endpoint the SDK ships to."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Literal

import orjson
from fastapi import APIRouter, Query, Request
from fastapi.responses import Response, StreamingResponse

from shipyard.auth.access import AUDITED
from shipyard.errors import InvalidRequest, NotFound, ServiceUnavailable
from shipyard.store.traces import TraceFilter, decode_cursor
from shipyard.tracing.ingest import sdk_rows
from shipyard.tracing.tree import span_tree

__all__ = ["router"]

router = APIRouter(tags=["traces"])

_MAX_INGEST_BYTES = 32 * 1024 * 1024


def _filter(
    since: float | None,
    until: float | None,
    deployment: str | None,
    status: str | None,
    user: str | None,
    project: str | None,
    source: str | None,
    metadata: str | None,
    min_latency_ms: float | None,
    q: str | None,
) -> TraceFilter:
    key, value = (metadata.split("=", 1) + [None])[:2] if metadata else (None, None)
    return TraceFilter(
        since=since,
        until=until,
        deployment=deployment,
        status=status,
        user=user,
        project=project,
        source=source,
        meta_key=key or None,
        meta_value=value,
        min_latency_ms=min_latency_ms,
        text=q or None,
    )


@router.get("/traces")
def list_traces(
    request: Request,
    limit: int = Query(50, ge=1, le=1000),
    cursor: str | None = Query(None, description="`next_cursor` of the previous page."),
    since: float | None = None,
    until: float | None = None,
    deployment: str | None = None,
    status: Literal["ok", "error"] | None = None,
    user: str | None = None,
    project: str | None = None,
    source: Literal["gateway", "sdk", "otlp"] | None = None,
    metadata: str | None = Query(None, description="`key=value` (or `key`: present) in the caller's metadata."),
    min_latency_ms: float | None = Query(None, ge=0),
    q: str | None = Query(None, description="Text searched in every span's input and output."),
) -> dict[str, Any]:
    """Traces, newest first."""
    where = _filter(since, until, deployment, status, user, project, source, metadata, min_latency_ms, q)
    if cursor is not None:
        try:
            decode_cursor(cursor)
        except ValueError:
            raise InvalidRequest("'cursor' is not a cursor this server returned.", param="cursor") from None
    rows, next_cursor = request.app.state.shipyard.store.traces.list(where, limit=limit, cursor=cursor)
    return {"data": rows, "next_cursor": next_cursor}


@router.get("/traces/export")
def export_traces(
    request: Request,
    since: float | None = None,
    until: float | None = None,
    deployment: str | None = None,
    status: Literal["ok", "error"] | None = None,
    user: str | None = None,
    project: str | None = None,
    source: Literal["gateway", "sdk", "otlp"] | None = None,
    metadata: str | None = None,
    min_latency_ms: float | None = Query(None, ge=0),
    q: str | None = None,
) -> StreamingResponse:
    """JSON Lines: one trace per line with its spans, oldest first."""
    where = _filter(since, until, deployment, status, user, project, source, metadata, min_latency_ms, q)
    repo = request.app.state.shipyard.store.traces

    def lines() -> Iterator[bytes]:
        for trace in repo.export(where):
            yield orjson.dumps(trace, option=orjson.OPT_NON_STR_KEYS) + b"\n"  # column names are str subclasses

    return StreamingResponse(lines(), media_type="application/x-ndjson")


@router.get("/traces/{trace_id}")
def get_trace(trace_id: str, request: Request) -> dict[str, Any]:
    """One trace: its summary and its spans as a tree."""
    trace, spans = request.app.state.shipyard.store.traces.get(trace_id)
    if trace is None and not spans:
        raise NotFound(f"No trace with id '{trace_id}'.", code="trace_not_found")
    return {"trace": trace, "spans": span_tree(spans), "span_count": len(spans)}


@router.post("/spans", status_code=202)
async def ingest_spans(request: Request) -> Response:
    """Spans from the SDK (`{"spans": [...], "project": ...}`), queued for the trace writer."""
    tracing = request.app.state.shipyard.tracing
    if tracing is None:
        raise ServiceUnavailable("Tracing is starting.", code="not_ready")
    body = await request.body()
    if len(body) > _MAX_INGEST_BYTES:
        raise InvalidRequest("The body is too large.", status=413, code="body_too_large")
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise InvalidRequest("The body is not valid JSON.", code="invalid_json") from None
    rows = sdk_rows(payload, tracing.config.prices)
    tracing.ingest(rows)
    # Span batches are telemetry, not a change to the control plane: no audit row per batch (shipyard.auth).
    request.scope[AUDITED] = True
    return Response(orjson.dumps({"accepted": len(rows)}), status_code=202, media_type="application/json")
