"""Per-request results and their mergeable aggregate.

A generator process folds every finished request into an `Aggregate`: histograms (exact to merge),
counters and a per-second timeline. Aggregates from several processes are merged by adding, never by
averaging percentiles, and `summarise` turns the merged aggregate into the numbers a report shows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from shipyard.loadtest.histogram import Histogram

__all__ = ["HIST_NAMES", "Aggregate", "RequestResult", "summarise"]

HIST_NAMES = ("ttft", "itl", "tpot", "e2e", "lateness")


@dataclass(slots=True)
class RequestResult:
    """One request as the client saw it. Times are seconds, offsets from the start of the run."""

    index: int
    start: float
    end: float
    lateness: float | None = None  # open loop: how long after its scheduled time it was sent
    status: int | None = None  # HTTP status (None: no answer)
    error: str | None = None  # error kind; None when the request succeeded
    content_times: list[float] = field(default_factory=list)
    input_tokens: int | None = None
    output_tokens: int | None = None  # from usage; else the number of content events
    tokens_from_usage: bool = False

    @property
    def ttft(self) -> float | None:
        return self.content_times[0] - self.start if self.content_times else None

    @property
    def e2e(self) -> float:
        return self.end - self.start

    def itls(self) -> list[float]:
        times = self.content_times
        return [times[i] - times[i - 1] for i in range(1, len(times))]

    @property
    def tpot(self) -> float | None:
        """(end-to-end - TTFT) / (output tokens - 1): the mean time per token after the first."""
        ttft = self.ttft
        tokens = self.output_tokens
        if ttft is None or not tokens or tokens < 2:
            return None
        return (self.end - self.content_times[0]) / (tokens - 1)


class Aggregate:
    """Histograms, counters and a per-second timeline of the measured requests."""

    def __init__(self, thresholds: dict[str, float] | None = None) -> None:
        self.thresholds = dict(thresholds or {})  # per-request SLO bounds in ms (goodput)
        self.hists = {name: Histogram() for name in HIST_NAMES}
        self.requests = 0
        self.ok = 0
        self.good = 0
        self.errors: dict[str, int] = {}
        self.warmup = 0
        self.input_tokens = 0
        self.output_tokens = 0
        self.usage_reported = 0
        self.first_start: float | None = None
        self.last_end: float | None = None
        self.timeline: dict[int, list[int]] = {}  # second → [started, succeeded, failed, output tokens]

    def add(self, result: RequestResult, measured: bool = True) -> None:
        if result.lateness is not None:
            self.hists["lateness"].record(result.lateness)  # lateness covers warm-up too: it is the generator's
        if not measured:
            self.warmup += 1
            return
        self.requests += 1
        if self.first_start is None or result.start < self.first_start:
            self.first_start = result.start
        if self.last_end is None or result.end > self.last_end:
            self.last_end = result.end
        started = self._second(result.start)
        started[0] += 1
        finished = self._second(result.end)
        if result.error is not None:
            self.errors[result.error] = self.errors.get(result.error, 0) + 1
            finished[2] += 1
            return
        self.ok += 1
        finished[1] += 1
        out = result.output_tokens or 0
        finished[3] += out
        self.output_tokens += out
        self.input_tokens += result.input_tokens or 0
        self.usage_reported += result.tokens_from_usage
        hists = self.hists
        ttft = result.ttft
        if ttft is not None:
            hists["ttft"].record(ttft)
        hists["e2e"].record(result.e2e)
        itls = result.itls()
        for gap in itls:
            hists["itl"].record(gap)
        tpot = result.tpot
        if tpot is not None:
            hists["tpot"].record(tpot)
        if self._good(ttft, tpot, result.e2e, max(itls) if itls else None):
            self.good += 1

    def _second(self, at: float) -> list[int]:
        key = int(at) if at > 0 else 0
        slot = self.timeline.get(key)
        if slot is None:
            slot = self.timeline[key] = [0, 0, 0, 0]
        return slot

    def _good(self, ttft: float | None, tpot: float | None, e2e: float, itl_max: float | None) -> bool:
        for metric, bound_ms in self.thresholds.items():
            value = {"ttft": ttft, "tpot": tpot, "e2e": e2e, "itl": itl_max}[metric]
            if value is not None and value * 1000 > bound_ms:
                return False
            if value is None and metric == "ttft":
                return False
        return True

    def record_error(self, kind: str, at: float) -> None:
        """A request that was never sent (refused by the generator's own safety cap)."""
        self.requests += 1
        self.errors[kind] = self.errors.get(kind, 0) + 1
        self._second(at)[2] += 1

    def merge(self, other: Aggregate) -> Aggregate:
        for name, hist in other.hists.items():
            self.hists[name].merge(hist)
        for attr in ("requests", "ok", "good", "warmup", "input_tokens", "output_tokens", "usage_reported"):
            setattr(self, attr, getattr(self, attr) + getattr(other, attr))
        for kind, n in other.errors.items():
            self.errors[kind] = self.errors.get(kind, 0) + n
        if other.first_start is not None and (self.first_start is None or other.first_start < self.first_start):
            self.first_start = other.first_start
        if other.last_end is not None and (self.last_end is None or other.last_end > self.last_end):
            self.last_end = other.last_end
        for second, values in other.timeline.items():
            mine = self.timeline.setdefault(second, [0, 0, 0, 0])
            for i, v in enumerate(values):
                mine[i] += v
        return self

    def to_dict(self) -> dict[str, Any]:
        return {
            "thresholds": self.thresholds,
            "hists": {name: h.to_dict() for name, h in self.hists.items()},
            "requests": self.requests,
            "ok": self.ok,
            "good": self.good,
            "errors": dict(self.errors),
            "warmup": self.warmup,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "usage_reported": self.usage_reported,
            "first_start": self.first_start,
            "last_end": self.last_end,
            "timeline": [[s, *v] for s, v in sorted(self.timeline.items())],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Aggregate:
        agg = cls(data.get("thresholds"))
        agg.hists = {name: Histogram.from_dict(h) for name, h in data["hists"].items()}
        for attr in ("requests", "ok", "good", "warmup", "input_tokens", "output_tokens", "usage_reported"):
            setattr(agg, attr, int(data.get(attr, 0)))
        agg.errors = {k: int(v) for k, v in data.get("errors", {}).items()}
        agg.first_start, agg.last_end = data.get("first_start"), data.get("last_end")
        agg.timeline = {int(row[0]): [int(v) for v in row[1:]] for row in data.get("timeline", [])}
        return agg


def summarise(agg: Aggregate, measure_start: float, offered_rps: float | None = None) -> dict[str, Any]:
    """The numbers of a run. Latencies in milliseconds; rates per second over the measured window, from the
    end of the warm-up to the last measured request's end."""
    end = agg.last_end if agg.last_end is not None else measure_start
    window = max(end - measure_start, 1e-9)
    failed = sum(agg.errors.values())
    return {
        "requests": agg.requests,
        "succeeded": agg.ok,
        "failed": failed,
        "warmup_requests": agg.warmup,
        "window_s": round(window, 3),
        "offered_rps": offered_rps,
        "throughput_rps": round(agg.ok / window, 3) if agg.requests else 0.0,
        "goodput_rps": round(agg.good / window, 3) if agg.requests else 0.0,
        "good_requests": agg.good,
        "output_tps": round(agg.output_tokens / window, 2) if agg.requests else 0.0,
        "total_tps": round((agg.output_tokens + agg.input_tokens) / window, 2) if agg.requests else 0.0,
        "input_tokens": agg.input_tokens,
        "output_tokens": agg.output_tokens,
        "tokens_from_usage": agg.usage_reported == agg.ok and agg.ok > 0,
        "error_rate": round(failed / agg.requests, 6) if agg.requests else None,
        "errors": dict(sorted(agg.errors.items())),
        "latency_ms": {name: hist.summary((50, 90, 95, 99, 99.9)) for name, hist in agg.hists.items()},
    }
