"""An experiment's numbers: per scorer, the mean with a bootstrap interval; run-wide latency, tokens, errors."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from shipyard.evals.stats import bootstrap_mean

__all__ = ["summarise"]


def summarise(rows: Sequence[Mapping[str, Any]], scorer_keys: Sequence[str]) -> dict[str, Any]:
    scorers: dict[str, Any] = {}
    for key in scorer_keys:
        values = [r["scores"][key]["value"] for r in rows if key in (r.get("scores") or {})]
        scored = [float(v) for v in values if v is not None]
        interval = bootstrap_mean(scored)
        scorers[key] = {
            **(interval.as_dict() if interval else {"mean": None, "low": None, "high": None, "n": 0}),
            "pass_rate": float(np.mean([v >= 0.5 for v in scored])) if scored else None,
            "unscored": len(rows) - len(scored),
        }
    ok = [r for r in rows if r["status"] == "ok"]
    latencies = [r["latency_ms"] for r in ok if r.get("latency_ms") is not None]
    costs = [r["cost"] for r in ok if r.get("cost") is not None]
    run = {
        "rows": len(rows),
        "errors": len(rows) - len(ok),
        "error_rate": (len(rows) - len(ok)) / len(rows) if rows else 0.0,
        "p50_latency_ms": float(np.percentile(latencies, 50)) if latencies else None,
        "p95_latency_ms": float(np.percentile(latencies, 95)) if latencies else None,
        "prompt_tokens": sum(r.get("prompt_tokens") or 0 for r in ok),
        "completion_tokens": sum(r.get("completion_tokens") or 0 for r in ok),
        "cost": sum(costs) if costs and len(costs) == len(ok) else None,  # unknown prices: no total, not zero
    }
    return {"scorers": scorers, "run": run}
