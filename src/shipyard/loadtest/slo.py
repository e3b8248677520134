"""Service-level objectives: strict parsing of `ttft.p95<500ms`-style expressions and their evaluation.

Grammar (spaces allowed around the operator):

    latency:    (ttft|itl|tpot|e2e|lateness).(p50|p90|p95|p99|p99.9|mean|max) OP NUMBER (us|ms|s)
    error rate: error_rate OP NUMBER %            (or a fraction without `%`, e.g. 0.01)
    rates:      (goodput|throughput) OP NUMBER rps          requests per second (`req/s` also accepted)
                output_tps OP NUMBER tok/s                  output tokens per second
    OP:         <  <=  >  >=

A latency objective with an upper bound (`<`, `<=`) is also a per-request criterion for goodput: a request
counts as good when it succeeded and its own TTFT, TPOT, end-to-end latency (and largest inter-token gap,
for `itl`) are within every such bound.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from shipyard.errors import ConfigError

__all__ = ["LATENCY_METRICS", "Slo", "SloResult", "evaluate_slos", "parse_slo", "request_thresholds"]

LATENCY_METRICS = ("ttft", "itl", "tpot", "e2e", "lateness")
_STATS = ("p50", "p90", "p95", "p99", "p99.9", "mean", "max")
_OPS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le,
    ">=": operator.ge,
    "<": operator.lt,
    ">": operator.gt,
}
_EXPR = re.compile(r"^\s*([a-z_][a-z0-9_.]*)\s*(<=|>=|<|>)\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([a-z%/]*)\s*$", re.I)
_TIME_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}
_RATE_UNITS = ("rps", "req/s", "/s")


@dataclass(frozen=True)
class Slo:
    """One objective. `metric` is the key in a run summary (`ttft.p95`, `error_rate`, `goodput_rps`, ...);
    `threshold` is in the summary's unit (milliseconds, a fraction, per second)."""

    text: str
    metric: str
    op: str
    threshold: float

    def holds(self, value: float | None) -> bool:
        return value is not None and _OPS[self.op](value, self.threshold)


@dataclass(frozen=True)
class SloResult:
    slo: Slo
    value: float | None
    passed: bool

    def as_dict(self) -> dict[str, Any]:
        return {
            "slo": self.slo.text,
            "metric": self.slo.metric,
            "op": self.slo.op,
            "threshold": self.slo.threshold,
            "value": self.value,
            "passed": self.passed,
        }


def _fail(text: str, why: str) -> ConfigError:
    return ConfigError(f"bad SLO {text!r}: {why}")


def parse_slo(text: str) -> Slo:
    """Parse one expression; raise ConfigError saying exactly what is wrong."""
    match = _EXPR.match(text)
    if not match:
        raise _fail(text, "expected METRIC OP VALUE[UNIT], e.g. 'ttft.p95<500ms', 'error_rate<1%', 'goodput>=4rps'")
    name, op, number, unit = match.group(1).lower(), match.group(2), float(match.group(3)), match.group(4).lower()
    if "." in name and name.split(".", 1)[0] in LATENCY_METRICS:
        metric, stat = name.split(".", 1)
        if stat not in _STATS:
            raise _fail(text, f"unknown statistic {stat!r}; use one of {', '.join(_STATS)}")
        if unit not in _TIME_UNITS:
            raise _fail(text, f"a latency needs a unit: us, ms or s (got {unit or 'none'!r})")
        return Slo(text, f"{metric}.{stat}", op, number * _TIME_UNITS[unit])
    if name in LATENCY_METRICS:
        raise _fail(text, f"say which statistic of {name}: {', '.join(name + '.' + s for s in _STATS[:4])}, ...")
    if name == "error_rate":
        if unit == "%":
            number /= 100
        elif unit:
            raise _fail(text, f"an error rate is a percentage ('1%') or a fraction ('0.01'), not {unit!r}")
        if number > 1:
            raise _fail(text, "an error rate cannot exceed 100%")
        return Slo(text, "error_rate", op, number)
    if name in ("goodput", "throughput"):
        if unit not in _RATE_UNITS:
            raise _fail(text, f"{name} is in requests per second: write e.g. '{name}>=4rps' (got {unit or 'none'!r})")
        return Slo(text, f"{name}_rps", op, number)
    if name == "output_tps":
        if unit not in ("tok/s", "tps"):
            raise _fail(text, "output_tps is in tokens per second: write e.g. 'output_tps>=100tok/s'")
        return Slo(text, "output_tps", op, number)
    known = [m + ".STAT" for m in LATENCY_METRICS] + ["error_rate", "goodput", "throughput", "output_tps"]
    raise _fail(text, f"unknown metric {name!r}; use one of {', '.join(known)}")


def request_thresholds(slos: list[Slo]) -> dict[str, float]:
    """Per-request upper bounds in milliseconds (the tightest per metric) used to count goodput."""
    bounds: dict[str, float] = {}
    for slo in slos:
        metric = slo.metric.split(".", 1)[0]
        if metric in ("ttft", "tpot", "e2e", "itl") and slo.op in ("<", "<="):
            bounds[metric] = min(bounds.get(metric, float("inf")), slo.threshold)
    return bounds


def _lookup(summary: dict[str, Any], metric: str) -> float | None:
    if "." in metric:
        name, stat = metric.split(".", 1)
        return (summary.get("latency_ms", {}).get(name) or {}).get(stat)
    return summary.get(metric)


def evaluate_slos(slos: list[Slo], summary: dict[str, Any]) -> list[SloResult]:
    """Judge a run summary (see metrics.summarise). A metric the run could not measure fails."""
    results = []
    for slo in slos:
        value = _lookup(summary, slo.metric)
        results.append(SloResult(slo, value, slo.holds(value)))
    return results
