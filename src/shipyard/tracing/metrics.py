"""Prometheus metrics in the text exposition format, written by hand.

Hand-written rather than prometheus_client: the updates happen in the trace writer's process, in plain dicts
under one uncontended lock, and rendering is a string join (see docs/tracing.md for the measured cost).
`CallMetrics` (per deployment and target, `engine/model`) lives in the writer's process, which sends its text to
the server with each report; the server's `MetricsPage` adds its gauges to that text.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Callable

__all__ = ["CallMetrics", "Histogram", "MetricsPage"]

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
TOKEN_GAP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28)

Labels = tuple[tuple[str, str], ...]
_INF = 'le="+Inf"'


def _labels(labels: Labels, extra: str = "") -> str:
    parts = [f'{k}="{_escape(v)}"' for k, v in labels]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    return repr(float(value)) if value != int(value) or abs(value) >= 1e15 else str(int(value))


class Histogram:
    """Cumulative buckets per label set."""

    def __init__(self, name: str, help_text: str, buckets: tuple[float, ...]) -> None:
        self.name = name
        self.help = help_text
        self.buckets = buckets
        self._series: dict[Labels, list[float]] = {}  # bucket counts..., +Inf count, sum

    def observe(self, labels: Labels, value: float) -> None:
        series = self._series.get(labels)
        if series is None:
            series = self._series[labels] = [0.0] * (len(self.buckets) + 2)
        series[bisect.bisect_left(self.buckets, value)] += 1
        series[-1] += value

    def render(self, out: list[str]) -> None:
        out.append(f"# HELP {self.name} {self.help}\n# TYPE {self.name} histogram\n")
        for labels, series in self._series.items():
            running = 0.0
            for bound, count in zip(self.buckets, series, strict=False):
                running += count
                le = 'le="' + str(bound) + '"'
                out.append(f"{self.name}_bucket{_labels(labels, le)} {_number(running)}\n")
            running += series[len(self.buckets)]
            out.append(f"{self.name}_bucket{_labels(labels, _INF)} {_number(running)}\n")
            out.append(f"{self.name}_sum{_labels(labels)} {_number(series[-1])}\n")
            out.append(f"{self.name}_count{_labels(labels)} {_number(running)}\n")


class CallMetrics:
    """The counters and histograms of gateway calls. `lock` guards updates (the writer's thread) against
    rendering (the writer's reporting thread)."""

    COUNTERS = {
        "shipyard_requests_total": "Gateway calls answered, by HTTP status.",
        "shipyard_tokens_total": "Tokens by direction (input: prompt, output: completion).",
        "shipyard_cost_dollars_total": "Cost of calls to models with a configured price, in US dollars.",
        "shipyard_retries_total": "Attempts retried on the same deployment.",
        "shipyard_fallbacks_total": "Attempts sent to a fallback deployment.",
    }

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self._counters: dict[str, dict[Labels, float]] = {name: {} for name in self.COUNTERS}
        self.latency = Histogram("shipyard_request_latency_seconds", "Total latency of a call.", LATENCY_BUCKETS)
        self.ttft = Histogram("shipyard_ttft_seconds", "Time to the first token of a stream.", LATENCY_BUCKETS)
        self.itl = Histogram("shipyard_itl_seconds", "Time between consecutive chunks of a stream.", TOKEN_GAP_BUCKETS)

    def inc(self, name: str, labels: Labels, value: float = 1.0) -> None:
        """Caller holds `lock`."""
        series = self._counters[name]
        series[labels] = series.get(labels, 0.0) + value

    def render(self) -> str:
        out: list[str] = []
        with self.lock:
            for name, help_text in self.COUNTERS.items():
                out.append(f"# HELP {name} {help_text}\n# TYPE {name} counter\n")
                for labels, value in self._counters[name].items():
                    out.append(f"{name}{_labels(labels)} {_number(value)}\n")
            for histogram in (self.latency, self.ttft, self.itl):
                histogram.render(out)
        return "".join(out)


class MetricsPage:
    """What /metrics shows: the calls' metrics as the writer's process last reported them, then gauges read at
    render time."""

    def __init__(self, calls: Callable[[], str]) -> None:
        self._calls = calls
        self._gauges: dict[str, tuple[str, str, Callable[[], float]]] = {}

    def gauge(self, name: str, help_text: str, read: Callable[[], float], kind: str = "gauge") -> None:
        """A value read at render time (`kind` "counter" for totals kept elsewhere, e.g. by the writer)."""
        self._gauges[name] = (help_text, kind, read)

    def render(self) -> bytes:
        out = [self._calls()]
        for name, (help_text, kind, read) in self._gauges.items():
            out.append(f"# HELP {name} {help_text}\n# TYPE {name} {kind}\n{name} {_number(read())}\n")
        return "".join(out).encode()
