"""Differences between two run records (pure: the CLI draws them as a Rich table)."""

from __future__ import annotations

from typing import Any

__all__ = ["COMPARED", "compare_rows", "metric_value"]

# (label, path in the summary, True when higher is better)
COMPARED: list[tuple[str, tuple[str, ...], bool]] = [
    ("throughput req/s", ("throughput_rps",), True),
    ("goodput req/s", ("goodput_rps",), True),
    ("output tokens/s", ("output_tps",), True),
    ("error rate", ("error_rate",), False),
    ("requests", ("requests",), True),
]
for _metric in ("ttft", "itl", "tpot", "e2e"):
    for _stat in ("p50", "p95", "p99"):
        COMPARED.append((f"{_metric} {_stat} ms", ("latency_ms", _metric, _stat), False))


def metric_value(summary: dict[str, Any], path: tuple[str, ...]) -> float | None:
    node: Any = summary
    for key in path:
        if not isinstance(node, dict):
            return None
        node = node.get(key)
    return node if isinstance(node, int | float) else None


def _num(value: float | None) -> str:
    return "–" if value is None else f"{value:,.3f}".rstrip("0").rstrip(".")


def compare_rows(a: dict[str, Any], b: dict[str, Any]) -> list[list[str]]:
    """[metric, A, B, delta, delta %] rows; the delta is coloured green when B is better, red when worse."""
    rows = []
    sa, sb = a.get("summary") or {}, b.get("summary") or {}
    for label, path, higher_better in COMPARED:
        va, vb = metric_value(sa, path), metric_value(sb, path)
        if va is None and vb is None:
            continue
        delta = pct = "–"
        if va is not None and vb is not None:
            diff = vb - va
            better = diff > 0 if higher_better else diff < 0
            colour = "green" if better else "red" if diff else "dim"
            delta = f"[{colour}]{'+' if diff > 0 else ''}{_num(diff)}[/{colour}]"
            pct = f"[{colour}]{diff / va * 100:+.1f}%[/{colour}]" if va else "–"
        rows.append([label, _num(va), _num(vb), delta, pct])
    return rows
