"""/api/v1/datasets: create versions (rows as JSON, or a JSONL/CSV upload), list, show, read rows."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from shipyard.errors import InvalidRequest, PayloadTooLarge
from shipyard.registry.datasets import FORMATS, DatasetService, check_rows, parse_rows, rows_from_traces
from shipyard.registry.prompts import check_name
from shipyard.store.traces import TraceFilter

__all__ = ["router"]

router = APIRouter(tags=["datasets"])
MAX_UPLOAD_BYTES = 512 * 1024 * 1024


class NewVersion(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rows: list[Any] = Field(description="Row objects: input, optional expected, optional metadata.")
    append: bool = Field(False, description="Add these rows to the newest version's rows.")
    message: str = ""
    author: str = Field("api", max_length=256)


def service(request: Request) -> DatasetService:
    return request.app.state.shipyard.registry.datasets


@router.get("/datasets")
def list_datasets(request: Request) -> dict[str, Any]:
    return {"data": service(request).repo.list()}


@router.post("/datasets/{name}/versions", status_code=201)
def create_version(name: str, body: NewVersion, request: Request) -> dict[str, Any]:
    check_name(name, "dataset")
    rows = check_rows(body.rows)
    return service(request).create(
        name, rows, append=body.append, message=body.message, source="api", author=body.author
    )


@router.post("/datasets/{name}/upload", status_code=201)
async def upload(
    name: str,
    request: Request,
    format: str = Query("jsonl", description=f"One of {', '.join(FORMATS)}."),
    append: bool = False,
    message: str = "",
    source: str = "upload",
    author: str = "api",
) -> dict[str, Any]:
    """The request body is the file itself (JSON Lines or CSV with input/expected/metadata columns)."""
    check_name(name, "dataset")
    if format not in FORMATS:
        raise InvalidRequest(f"Unsupported format {format!r}; use one of {', '.join(FORMATS)}.", param="format")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_UPLOAD_BYTES:
            raise PayloadTooLarge(f"Uploads are limited to {MAX_UPLOAD_BYTES} bytes.", code="body_too_large")
        chunks.append(chunk)
    rows = await asyncio.to_thread(parse_rows, b"".join(chunks), format)
    svc = service(request)
    return await asyncio.to_thread(svc.create, name, rows, append=append, message=message, source=source, author=author)


class FromTraces(BaseModel):
    """The traces filter of GET /api/v1/traces, and how many traces to take (oldest first)."""

    model_config = ConfigDict(extra="forbid")
    since: float | None = None
    until: float | None = None
    deployment: str | None = None
    status: str | None = Field(None, pattern="^(ok|error)$")
    user: str | None = None
    project: str | None = None
    source: str | None = Field(None, pattern="^(gateway|sdk|otlp)$")
    metadata: str | None = Field(None, description="`key=value` (or `key`) in the caller's metadata.")
    min_latency_ms: float | None = Field(None, ge=0)
    q: str | None = Field(None, description="Text searched in every span's input and output.")
    limit: int = Field(1000, ge=1, le=100_000)
    append: bool = False
    message: str = ""
    author: str = Field("api", max_length=256)


@router.post("/datasets/{name}/from-traces", status_code=201)
def from_traces(name: str, body: FromTraces, request: Request) -> dict[str, Any]:
    """A version made of the selected traces: input = the call's messages (or prompt), expected = its answer."""
    check_name(name, "dataset")
    key, _, value = (body.metadata or "").partition("=")
    where = TraceFilter(since=body.since, until=body.until, deployment=body.deployment, status=body.status,
                        user=body.user, project=body.project, source=body.source, meta_key=key or None,
                        meta_value=value or None, min_latency_ms=body.min_latency_ms, text=body.q)  # fmt: skip
    rows = rows_from_traces(request.app.state.shipyard.store.traces.export(where), body.limit)
    source = "traces:" + ",".join(f"{k}={v}" for k, v in body.model_dump(exclude={"limit", "append", "message",
                                  "author"}, exclude_none=True).items())  # fmt: skip
    return service(request).create(name, rows, append=body.append, message=body.message, source=source,
                                   author=body.author)  # fmt: skip


@router.get("/datasets/{name}")
def get_dataset(name: str, request: Request) -> dict[str, Any]:
    svc = service(request)
    versions = svc.repo.versions(name)
    if not versions:
        svc.version(name)  # raises the 404
    return {"name": name, "versions": versions}


@router.get("/datasets/{name}/rows")
def get_rows(
    name: str,
    request: Request,
    version: int | None = Query(None, ge=1, description="Default: the newest version."),
    offset: int = Query(0, ge=0),
    limit: int = Query(1000, ge=1, le=100_000),
) -> dict[str, Any]:
    found, rows = service(request).rows(name, version)
    return {"name": name, "version": found["version"], "sha256": found["sha256"], "total": len(rows),
            "data": rows[offset : offset + limit]}  # fmt: skip
