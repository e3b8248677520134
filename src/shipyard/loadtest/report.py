"""Reports of a run record: JSON, and one self-contained HTML page with plots drawn by matplotlib.

The HTML embeds every plot as inline SVG and its style in a <style> element: no script, font or image is
fetched, so the file opens offline and can be attached to a ticket as it is.
"""

from __future__ import annotations

import html
import io
import json
import time
from pathlib import Path
from typing import Any

from shipyard.loadtest.histogram import Histogram
from shipyard.loadtest.metrics import HIST_NAMES

__all__ = ["html_report", "json_report", "write_reports"]

_LABELS = {
    "ttft": "time to first token",
    "itl": "inter-token latency",
    "tpot": "time per output token",
    "e2e": "end-to-end latency",
    "lateness": "send lateness vs schedule",
}


def json_report(record: dict[str, Any]) -> str:
    return json.dumps(record, indent=2, sort_keys=False, default=str)


def _figure(width: float = 9.0, height: float = 3.2, cols: int = 1) -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    matplotlib.rcParams["svg.fonttype"] = "none"  # text stays text: smaller files
    from matplotlib import pyplot as plt

    fig, axes = plt.subplots(1, cols, figsize=(width, height), squeeze=False)
    return fig, list(axes[0])


def _svg(fig: Any) -> str:
    from matplotlib import pyplot as plt

    buffer = io.StringIO()
    fig.tight_layout()
    fig.savefig(buffer, format="svg")
    plt.close(fig)
    text = buffer.getvalue()
    return text[text.find("<svg") :]


def _latency_plot(aggregate: dict[str, Any]) -> str | None:
    hists = {n: Histogram.from_dict(aggregate["hists"][n]) for n in HIST_NAMES if n in aggregate.get("hists", {})}
    shown = [n for n in ("ttft", "itl", "tpot", "e2e") if n in hists and hists[n].count]
    if not shown:
        return None
    fig, axes = _figure(4.2 * len(shown) if len(shown) < 3 else 14, 3.2, len(shown))
    for ax, name in zip(axes, shown, strict=True):
        hist = hists[name]
        xs, ys, seen = [], [], 0
        for _low, high, n in hist.buckets():
            seen += n
            xs.append(high * 1000)
            ys.append(seen / hist.count)
        ax.step(xs, ys, where="post", color="#1f6feb")
        for q, style in ((50, ":"), (95, "--"), (99, "-.")):
            value = hist.percentile(q)
            if value is not None:
                ax.axvline(
                    value * 1000, color="#d1242f", linestyle=style, linewidth=1, label=f"p{q} {value * 1000:.1f} ms"
                )
        if xs and xs[-1] / max(xs[0], 1e-3) > 20:
            ax.set_xscale("log")
        ax.set_title(_LABELS[name], fontsize=10)
        ax.set_xlabel("ms")
        ax.set_ylabel("fraction of requests" if name != "itl" else "fraction of gaps")
        ax.legend(fontsize=7, loc="lower right")
        ax.grid(alpha=0.3)
    return _svg(fig)


def _timeline_plot(aggregate: dict[str, Any]) -> str | None:
    rows = aggregate.get("timeline") or []
    if not rows:
        return None
    fig, (ax, ax2) = _figure(12, 3.2, 2)
    seconds = [r[0] for r in rows]
    ax.plot(seconds, [r[2] for r in rows], label="succeeded/s", color="#1a7f37")
    ax.plot(seconds, [r[1] for r in rows], label="started/s", color="#8250df", linestyle="--")
    ax.plot(seconds, [r[3] for r in rows], label="failed/s", color="#d1242f")
    ax.set_title("requests per second over the run", fontsize=10)
    ax.set_xlabel("s since start")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    ax2.plot(seconds, [r[4] for r in rows], color="#bc4c00")
    ax2.set_title("output tokens per second", fontsize=10)
    ax2.set_xlabel("s since start")
    ax2.grid(alpha=0.3)
    return _svg(fig)


def _nan(value: float | None) -> float:
    return float("nan") if value is None else float(value)


def _sweep_plot(steps: list[dict[str, Any]], best: float | None) -> str | None:
    if not steps:
        return None
    fig, (ax, ax2) = _figure(12, 3.4, 2)
    rates = [s["rate"] for s in steps]
    ax.plot(rates, [_nan(s["summary"]["throughput_rps"]) for s in steps], marker="o", label="throughput (req/s)")
    ax.plot(rates, [_nan(s["summary"]["goodput_rps"]) for s in steps], marker="s", label="goodput (req/s)")
    ax.plot(rates, rates, color="#888", linestyle=":", label="offered")
    if best is not None:
        ax.axvline(best, color="#1a7f37", linestyle="--", label=f"best {best:g} req/s")
    ax.set_title("throughput vs offered rate", fontsize=10)
    ax.set_xlabel("offered rate (req/s)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    for name, stat, style in (("ttft", "p50", "-"), ("ttft", "p99", "--"), ("e2e", "p50", "-"), ("e2e", "p99", "--")):
        values = [_nan(s["summary"]["latency_ms"][name][stat]) for s in steps]
        ax2.plot(rates, values, marker="o", linestyle=style, label=f"{name} {stat}")
    ax2.set_title("latency vs offered rate", fontsize=10)
    ax2.set_xlabel("offered rate (req/s)")
    ax2.set_ylabel("ms")
    ax2.legend(fontsize=7)
    ax2.grid(alpha=0.3)
    return _svg(fig)


_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2em;color:#1f2328;max-width:1400px}
h1{font-size:1.5em}h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #d0d7de}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #d0d7de;padding:3px 9px;text-align:right}
th{background:#f6f8fa}td:first-child,th:first-child{text-align:left}.pass{color:#1a7f37;font-weight:600}
.fail{color:#d1242f;font-weight:600}pre{background:#f6f8fa;padding:1em;overflow:auto;font-size:.85em}
figure{margin:1em 0}svg{max-width:100%;height:auto}
"""


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:,.3f}".rstrip("0").rstrip(".")
    return html.escape(str(value))


def _summary_tables(summary: dict[str, Any]) -> str:
    keys = ("requests", "succeeded", "failed", "warmup_requests", "window_s", "offered_rps", "throughput_rps")
    keys += ("goodput_rps", "output_tps", "total_tps", "input_tokens", "output_tokens", "error_rate")
    overview = _table(["metric", "value"], [[k, _fmt(summary.get(k))] for k in keys])
    stats = ["p50", "p90", "p95", "p99", "p99.9", "mean", "max", "count"]
    rows = [
        [_LABELS[name] + f" ({name})"] + [_fmt(values.get(s)) for s in stats]
        for name, values in summary.get("latency_ms", {}).items()
        if values.get("count")
    ]
    latency = _table(["latency (ms)", *stats], rows)
    errors = summary.get("errors") or {}
    error_table = _table(["error kind", "requests"], [[html.escape(k), v] for k, v in errors.items()]) if errors else ""
    return overview + latency + error_table


def _slo_table(slos: list[dict[str, Any]]) -> str:
    if not slos:
        return "<p>No SLOs were given.</p>"
    rows = [
        [
            html.escape(s["slo"]),
            _fmt(s["value"]),
            '<span class="pass">pass</span>' if s["passed"] else '<span class="fail">FAIL</span>',
        ]
        for s in slos
    ]
    return _table(["SLO", "measured", "result"], rows)


def html_report(record: dict[str, Any]) -> str:
    """A self-contained HTML page for a run or a sweep."""
    title = f"Load test {record['id']}" + (f" · {record['label']}" if record.get("label") else "")
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(record.get("created_at", 0)))
    verdict = {True: '<span class="pass">PASSED</span>', False: '<span class="fail">FAILED</span>', None: "no SLOs"}
    parts = [
        f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
        f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>",
        f"<p>{html.escape(record.get('shape', ''))} against "
        f"<code>{html.escape(record.get('target', ''))}</code>, model "
        f"<code>{html.escape(str(record.get('model')))}</code>, {record.get('workers', 1)} generator process(es), "
        f"{html.escape(when)}. Requests: {html.escape(record.get('source', ''))}. "
        f"SLOs: {verdict[record.get('passed')]}</p>",
    ]
    if record.get("kind") == "sweep":
        best = record.get("best_rate")
        parts.append(f"<h2>Sweep</h2><p>Highest rate meeting every SLO: <b>{_fmt(best)} req/s</b></p>")
        rows = [
            [
                _fmt(s["rate"]),
                _fmt(s["summary"]["throughput_rps"]),
                _fmt(s["summary"]["goodput_rps"]),
                _fmt(s["summary"]["latency_ms"]["ttft"]["p99"]),
                _fmt(s["summary"]["latency_ms"]["e2e"]["p99"]),
                _fmt(s["summary"]["error_rate"]),
                "pass" if s["passed"] else "FAIL",
            ]
            for s in record.get("steps", [])
        ]
        parts.append(
            _table(["offered req/s", "throughput", "goodput", "ttft p99 ms", "e2e p99 ms", "error rate", "SLOs"], rows)
        )
        plot = _sweep_plot(record.get("steps", []), best)
        if plot:
            parts.append(f"<figure class='plot' id='sweep'>{plot}</figure>")
    parts.append("<h2>SLOs</h2>" + _slo_table(record.get("slos", [])))
    if record.get("summary"):
        heading = "Results" if record.get("kind") != "sweep" else "Results at the best rate"
        parts.append(f"<h2>{heading}</h2>" + _summary_tables(record["summary"]))
    aggregate = record.get("aggregate")
    if aggregate:
        for plot_id, plot in (("latency", _latency_plot(aggregate)), ("timeline", _timeline_plot(aggregate))):
            if plot:
                parts.append(f"<figure class='plot' id='{plot_id}'>{plot}</figure>")
    parts.append("<h2>Configuration</h2><pre>" + html.escape(json.dumps(record.get("config", {}), indent=2)) + "</pre>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_reports(record: dict[str, Any], json_path: Path | None, html_path: Path | None) -> None:
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json_report(record))
    if html_path is not None:
        html_path.parent.mkdir(parents=True, exist_ok=True)
        html_path.write_text(html_report(record))
