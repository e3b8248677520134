"""Gates over an experiment's summary, and the comparison of two experiments row by row."""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from shipyard.errors import ConfigError
from shipyard.evals.stats import paired_permutation_test
from shipyard.evals.suite import Gate, parse_gate

__all__ = ["GateResult", "compare", "compare_html", "evaluate_gates", "summary_figure"]


@dataclass(frozen=True)
class GateResult:
    gate: Gate
    actual: float | None
    threshold: float
    passed: bool

    def line(self) -> str:
        shown = "n/a" if self.actual is None else f"{self.actual:.4g}"
        return f"{'PASS' if self.passed else 'FAIL'}  {self.gate.text}  (actual {shown}, needed {self.gate.op} " \
               f"{self.threshold:.4g})"  # fmt: skip


def summary_figure(summary: Mapping[str, Any], metric: str, stat: str) -> float | None:
    """One number of a summary: `exact_match.mean`, `run.error_rate`, ..."""
    block = summary.get("run", {}) if metric == "run" else summary.get("scorers", {}).get(metric)
    if block is None:
        known = ", ".join(sorted(summary.get("scorers", {}))) or "none"
        raise ConfigError(f"the gate names '{metric}', which this experiment did not score (scorers: {known})")
    value = block.get(stat)
    return None if value is None else float(value)


def evaluate_gates(
    summary: Mapping[str, Any], gates: Sequence[str], baseline: Mapping[str, Any] | None = None
) -> list[GateResult]:
    results = []
    for text in gates:
        gate = parse_gate(text)
        base = summary_figure(baseline, gate.metric, gate.stat) if gate.relative and baseline else None
        threshold = gate.threshold(base)
        actual = summary_figure(summary, gate.metric, gate.stat)
        results.append(GateResult(gate, actual, threshold, actual is not None and gate.holds(actual, threshold)))
    return results


Rows = Sequence[Mapping[str, Any]]
_RUN_FIGURES = ("rows", "error_rate", "p50_latency_ms", "p95_latency_ms", "completion_tokens", "cost")


def compare(
    a: Mapping[str, Any], a_rows: Rows, b: Mapping[str, Any], b_rows: Rows, changed: int = 10
) -> dict[str, Any]:
    """B against A: per scorer the means, the delta, and a paired test over the rows both scored; the rows whose
    scores moved most (summed over scorers)."""
    b_by_index = {r["index"]: r for r in b_rows}
    pairs = {r["index"]: (r, b_by_index[r["index"]]) for r in a_rows if r["index"] in b_by_index}
    a_scorers, b_scorers = (x.get("summary", {}).get("scorers", {}) for x in (a, b))
    scorers = {}
    moves: dict[int, float] = {}
    for key in sorted(set(a_scorers) & set(b_scorers)):
        both = {i: (_value(x, key), _value(y, key)) for i, (x, y) in pairs.items()}
        both = {i: (x, y) for i, (x, y) in both.items() if x is not None and y is not None}
        mean_a, mean_b = a_scorers[key]["mean"], b_scorers[key]["mean"]
        scorers[key] = {
            "a": mean_a,
            "b": mean_b,
            "delta": None if mean_a is None or mean_b is None else mean_b - mean_a,
            "pairs": len(both),
            "p_value": paired_permutation_test([y for _, y in both.values()], [x for x, _ in both.values()])
            if both
            else None,
        }
        for i, (x, y) in both.items():
            moves[i] = moves.get(i, 0.0) + (y - x)
    rows = []
    for i, move in sorted(moves.items(), key=lambda item: -abs(item[1]))[:changed]:
        if move == 0:
            continue
        x, y = pairs[i]
        rows.append({"index": i, "move": move, "input": x.get("input"), "a_output": x.get("output"),
                     "b_output": y.get("output"), "a_scores": _values(x), "b_scores": _values(y)})  # fmt: skip
    a_run, b_run = (x.get("summary", {}).get("run", {}) for x in (a, b))
    run = {k: {"a": a_run.get(k), "b": b_run.get(k)} for k in _RUN_FIGURES}
    return {"a": a["id"], "b": b["id"], "scorers": scorers, "run": run, "changed_rows": rows}


def _value(row: Mapping[str, Any], key: str) -> float | None:
    score = (row.get("scores") or {}).get(key)
    return None if score is None or score.get("value") is None else float(score["value"])


def _values(row: Mapping[str, Any]) -> dict[str, float | None]:
    return {k: v.get("value") for k, v in (row.get("scores") or {}).items()}


def compare_html(result: Mapping[str, Any]) -> str:
    """A self-contained HTML page of a comparison."""
    esc = html.escape

    def num(value: Any) -> str:
        return "–" if value is None else f"{value:.4g}" if isinstance(value, float) else esc(str(value))

    scorer_rows = "".join(
        f"<tr><td>{esc(k)}</td><td>{num(v['a'])}</td><td>{num(v['b'])}</td><td>{num(v['delta'])}</td>"
        f"<td>{num(v['p_value'])}</td><td>{v['pairs']}</td></tr>"
        for k, v in result["scorers"].items()
    )
    run_rows = "".join(f"<tr><td>{esc(k)}</td><td>{num(v['a'])}</td><td>{num(v['b'])}</td></tr>"
                       for k, v in result["run"].items())  # fmt: skip
    changed = "".join(
        f"<tr><td>{r['index']}</td><td>{num(r['move'])}</td><td>{esc(str(r['input']))[:300]}</td>"
        f"<td>{esc(str(r['a_output']))[:300]}</td><td>{esc(str(r['b_output']))[:300]}</td></tr>"
        for r in result["changed_rows"]
    )
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>Shipyard: {esc(result["b"])} vs \
{esc(result["a"])}</title><style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse;\
margin-bottom:2em}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}}</style></head>
<body><h1>Experiment {esc(result["b"])} (B) against {esc(result["a"])} (A)</h1>
<h2>Scorers</h2><table><tr><th>scorer</th><th>A mean</th><th>B mean</th><th>B − A</th><th>p (paired)</th>
<th>pairs</th></tr>{scorer_rows}</table>
<h2>Run</h2><table><tr><th></th><th>A</th><th>B</th></tr>{run_rows}</table>
<h2>Rows that changed most</h2><table><tr><th>row</th><th>score change</th><th>input</th><th>A output</th>
<th>B output</th></tr>{changed}</table></body></html>
"""
