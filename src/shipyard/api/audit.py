"""/api/v1/audit: read the audit log and verify its hash chain (admin only; see shipyard.auth.scopes)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request

from shipyard.auth.audit import verify_chain

__all__ = ["router"]

router = APIRouter(tags=["audit"])


@router.get("/audit")
def list_audit(
    request: Request,
    after: int = Query(0, ge=0, description="Rows after this sequence number."),
    limit: int = Query(100, ge=1, le=1000),
    actor: str | None = Query(None, max_length=64, description="Only rows by this key id."),
) -> dict[str, Any]:
    rows = request.app.state.shipyard.store.auth.audit.list(limit=limit, after_seq=after, actor=actor)
    return {"data": rows}


@router.get("/audit/verify")
def verify_audit(request: Request) -> dict[str, Any]:
    repo = request.app.state.shipyard.store.auth.audit
    rows = repo.all()
    problems = verify_chain(rows)
    head = rows[-1] if rows else None
    return {
        "ok": not problems,
        "rows": len(rows),
        "head": {"seq": head["seq"], "hash": head["hash"]} if head else None,
        "problems": problems,
    }
