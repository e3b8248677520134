"""A load test from start to finish: run the plan, summarise, judge the SLOs; and the rate sweep.

The result of `run_test` and `run_sweep` is a plain dict (a "run record"): what the JSON report holds,
what the store keeps and what the HTML report and `compare` read.
"""

from __future__ import annotations

import dataclasses
import secrets
import time
from collections.abc import Callable
from typing import Any

from shipyard.errors import ConfigError
from shipyard.loadtest.metrics import Aggregate, summarise
from shipyard.loadtest.runner import RunPlan, run_in_process
from shipyard.loadtest.shapes import LoadShape
from shipyard.loadtest.slo import Slo, evaluate_slos, request_thresholds
from shipyard.loadtest.sources import RequestSource, resolve_source
from shipyard.loadtest.workers import run_load

__all__ = ["new_run_id", "run_sweep", "run_test", "sweep_rates"]

Tick = Callable[[list[float], float], None]


def new_run_id() -> str:
    """Sortable by time, short enough to type: 20261123-031605-3fa2c1."""
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3)


def _plan_dict(plan: RunPlan) -> dict[str, Any]:
    data = dataclasses.asdict(dataclasses.replace(plan, source=plan.source.stored()))
    data["headers"] = sorted(plan.headers)  # names only: never store a key
    return data


def _resolve(plan: RunPlan) -> tuple[RunPlan, RequestSource]:
    """The plan with its source read once (a server's dataset or traces become an in-memory snapshot)."""
    spec, source = resolve_source(plan.source)
    return (plan if spec is plan.source else dataclasses.replace(plan, source=spec)), source


def _measure(plan: RunPlan, workers: int, on_tick: Tick | None, in_process: bool) -> tuple[Aggregate, bool]:
    """The merged aggregate, and whether Ctrl-C cut the run short."""
    if in_process and workers == 1:
        return run_in_process(plan), False
    return run_load(plan, workers, on_tick)


def _judge(slos: list[Slo], summary: dict[str, Any]) -> tuple[list[dict[str, Any]], bool | None]:
    results = evaluate_slos(slos, summary)
    return [r.as_dict() for r in results], (all(r.passed for r in results) if results else None)


def run_test(
    plan: RunPlan,
    slos: list[Slo],
    workers: int = 1,
    label: str | None = None,
    on_tick: Tick | None = None,
    in_process: bool = False,
) -> dict[str, Any]:
    """One run; `in_process` runs a single generator in this process (no child process)."""
    plan = _with_thresholds(plan, slos)
    plan, source = _resolve(plan)  # fail early, in this process, on a bad source
    started = time.time()
    aggregate, interrupted = _measure(plan, workers, on_tick, in_process)
    summary = summarise(aggregate, plan.warmup, _offered(plan.shape))
    slo_results, passed = _judge(slos, summary)
    return {
        "id": new_run_id(),
        "kind": "run",
        "created_at": started,
        "label": label,
        "target": plan.url,
        "model": plan.model,
        "shape": plan.shape.describe(),
        "source": source.description,
        "workers": workers,
        "config": _plan_dict(plan),
        "summary": summary,
        "slos": slo_results,
        "passed": passed,
        "interrupted": interrupted,
        "aggregate": aggregate.to_dict(),
    }


def _with_thresholds(plan: RunPlan, slos: list[Slo]) -> RunPlan:
    """Goodput needs the per-request bounds of the SLOs; derive them unless the plan already carries some."""
    if plan.thresholds or not slos:
        return plan
    return dataclasses.replace(plan, thresholds=request_thresholds(slos))


def _offered(shape: LoadShape) -> float | None:
    return shape.rate if shape.kind in ("constant", "poisson") else None


def sweep_rates(passed_at: Callable[[float], bool], start: float, limit: float, refine: int) -> float | None:
    """Double from `start` until a rate fails (or `limit` is reached), then bisect `refine` times between
    the highest passing and the lowest failing rate. Returns the highest rate that passed."""
    best: float | None = None
    failed: float | None = None
    rate = start
    while True:
        if passed_at(rate):
            best = rate
            if rate >= limit:
                return best
            rate = min(rate * 2, limit)
        else:
            failed = rate
            break
    low = best if best is not None else 0.0
    for _ in range(refine):
        mid = round((low + failed) / 2, 3)
        if mid <= 0 or mid in (low, failed):
            break
        if passed_at(mid):
            best = low = mid
        else:
            failed = mid
    return best


def run_sweep(
    plan: RunPlan,
    slos: list[Slo],
    workers: int = 1,
    rates: list[float] | None = None,
    limit: float = 1000.0,
    refine: int = 3,
    label: str | None = None,
    on_step: Callable[[float, dict[str, Any]], None] | None = None,
    on_tick: Tick | None = None,
    in_process: bool = False,
) -> dict[str, Any]:
    """Find the highest open-loop rate meeting every SLO: the given `rates` in order, or doubling from the
    plan's rate and bisecting (see sweep_rates)."""
    if not slos:
        raise ConfigError("a sweep needs at least one --slo to judge each rate by")
    if not plan.shape.open_loop or plan.shape.kind == "ramp":
        raise ConfigError("a sweep varies the rate of constant or Poisson arrivals: give --rate, not --concurrency")
    plan = _with_thresholds(plan, slos)
    plan, source = _resolve(plan)
    started = time.time()
    steps: list[dict[str, Any]] = []
    stopped: list[float] = []  # rates cut short by Ctrl-C: the sweep ends there

    def passed_at(rate: float) -> bool:
        if stopped:
            return False
        step_plan = dataclasses.replace(plan, shape=dataclasses.replace(plan.shape, rate=rate))
        aggregate, interrupted = _measure(step_plan, workers, on_tick, in_process)
        summary = summarise(aggregate, step_plan.warmup, rate)
        slo_results, passed = _judge(slos, summary)
        step = {"rate": rate, "summary": summary, "slos": slo_results, "passed": bool(passed)}
        if interrupted:
            stopped.append(rate)
            step["interrupted"] = True
        step["aggregate"] = aggregate.to_dict()
        steps.append(step)
        if on_step is not None:
            on_step(rate, step)
        return bool(passed) and not interrupted

    if rates:
        best = None
        for rate in sorted(rates):
            if passed_at(rate):
                best = rate
    else:
        best = sweep_rates(passed_at, float(plan.shape.rate or 1.0), limit, refine)
    steps.sort(key=lambda s: s["rate"])
    best_step = next((s for s in steps if s["rate"] == best), None)
    return {
        "id": new_run_id(),
        "kind": "sweep",
        "created_at": started,
        "label": label,
        "target": plan.url,
        "model": plan.model,
        "shape": f"sweep of {plan.shape.kind} rates",
        "source": source.description,
        "workers": workers,
        "config": _plan_dict(plan),
        "best_rate": best,
        "interrupted": bool(stopped),
        "steps": [{k: v for k, v in s.items()} for s in steps],
        "summary": best_step["summary"] if best_step else (steps[0]["summary"] if steps else {}),
        "slos": best_step["slos"] if best_step else (steps[0]["slos"] if steps else []),
        "passed": best is not None,
        "aggregate": best_step["aggregate"] if best_step else None,
    }
