"""/api/v1/online-evals: the online evaluation rules, their score series, and the scores of one trace."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Query, Request

from shipyard.errors import NotFound

__all__ = ["router"]

router = APIRouter(tags=["online evaluation"])


def _rules(request: Request) -> dict[str, Any]:
    return {rule.name: rule for rule in request.app.state.shipyard.settings.online_evals}


@router.get("/online-evals")
def list_rules(request: Request) -> dict[str, Any]:
    return {"data": [rule.model_dump() for rule in _rules(request).values()]}


@router.get("/online-evals/scores")
def trace_scores(request: Request, trace_id: str = Query(pattern=r"^[0-9a-f]{32}$")) -> dict[str, Any]:
    return {"data": request.app.state.shipyard.store.online_scores.for_trace(trace_id)}


@router.get("/online-evals/{rule}/series")
def series(
    rule: str,
    request: Request,
    scorer: str,
    since: float | None = Query(None, description="Unix seconds; default: an hour ago."),
    until: float | None = Query(None, description="Unix seconds; default: now."),
    bucket: float = Query(60.0, gt=0, le=86_400, description="Seconds per point."),
) -> dict[str, Any]:
    if rule not in _rules(request):
        raise NotFound(f"No online evaluation rule named '{rule}'.", code="rule_not_found")
    now = time.time()
    repo = request.app.state.shipyard.store.online_scores
    points = repo.series(rule, scorer, since if since is not None else now - 3600, until or now, bucket)
    return {"rule": rule, "scorer": scorer, "bucket": bucket, "data": points}
