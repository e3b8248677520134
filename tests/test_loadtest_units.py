"""Load testing, the pure parts: histogram, SSE timing, schedules, SLO parsing, sources, compare, limits."""

from __future__ import annotations

import math
import random
from pathlib import Path

import orjson
import pytest

from shipyard.config import LoadtestConfig
from shipyard.errors import ConfigError
from shipyard.loadtest.compare import compare_rows
from shipyard.loadtest.histogram import Histogram
from shipyard.loadtest.limits import check_limits, normalise_target
from shipyard.loadtest.metrics import Aggregate, RequestResult, summarise
from shipyard.loadtest.runner import RunPlan
from shipyard.loadtest.shapes import LoadShape, arrival_times, split_concurrency
from shipyard.loadtest.slo import evaluate_slos, parse_slo, request_thresholds
from shipyard.loadtest.sources import SourceSpec, build_source, parse_distribution
from shipyard.loadtest.wire import LoadRequest, StreamTimer, build_body


def test_public_api_is_explicit() -> None:
    import shipyard.loadtest as loadtest

    assert sorted(loadtest.__all__) == sorted(
        ["Aggregate", "Histogram", "LoadRequest", "LoadShape", "RequestResult", "RequestSource", "RunPlan", "Slo",
         "SourceSpec", "evaluate_slos", "html_report", "json_report", "parse_slo", "register_source", "run_sweep",
         "run_test", "summarise"]
    )  # fmt: skip
    for name in loadtest.__all__:
        assert hasattr(loadtest, name), name


# -- histogram


def test_histogram_percentiles_are_within_its_precision() -> None:
    rng = random.Random(7)
    values = sorted(rng.lognormvariate(-3, 1) for _ in range(20_000))
    hist = Histogram()
    hist.record_many(values)
    for q in (50, 90, 95, 99, 99.9):
        exact = values[math.ceil(q / 100 * len(values)) - 1]
        assert hist.percentile(q) == pytest.approx(exact, rel=2**-11, abs=1e-6), q
    assert hist.count == len(values)
    assert hist.min == pytest.approx(values[0], abs=1e-6) and hist.max == pytest.approx(values[-1], abs=1e-6)


def test_histogram_merge_is_exact_and_round_trips() -> None:
    rng = random.Random(1)
    values = [rng.expovariate(20) for _ in range(5000)]
    whole, a, b = Histogram(), Histogram(), Histogram()
    whole.record_many(values)
    a.record_many(values[::3])
    b.record_many([v for i, v in enumerate(values) if i % 3])
    merged = Histogram.from_dict(orjson.loads(orjson.dumps(a.to_dict()))).merge(b)
    assert merged == whole
    assert merged.percentile(99) == whole.percentile(99)
    with pytest.raises(ValueError, match="precision"):
        Histogram(8).merge(Histogram(12))


def test_histogram_buckets_hold_their_values() -> None:
    hist = Histogram()
    for us in [0, 1, 4095, 4096, 4097, 8191, 8192, 123_456, 10**9]:
        low, high = hist._bounds(hist._index(us))
        assert low <= us < high


# -- wire


def _events(*objs: object) -> bytes:
    return b"".join(b"data: " + orjson.dumps(o) + b"\n\n" for o in objs)


def _chunk(text: str) -> dict:
    return {"choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]}


STREAM = (
    _events({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}, _chunk("a"), _chunk("b"))
    + _events({"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 2}})
    + b"data: [DONE]\n\n"
)


@pytest.mark.parametrize("step", [1, 3, 17, len(STREAM)])
def test_stream_timer_times_content_events_however_the_bytes_are_split(step: int) -> None:
    timer = StreamTimer()
    for n, start in enumerate(range(0, len(STREAM), step)):
        timer.feed(STREAM[start : start + step], float(n))
    assert timer.chunks == 2 and len(timer.content_times) == 2
    assert timer.content_times == sorted(timer.content_times)
    assert timer.done and timer.error is None
    assert (timer.input_tokens, timer.output_tokens) == (7, 2)


def test_stream_timer_reads_crlf_framing_split_inside_a_line_end() -> None:
    crlf = STREAM.replace(b"\n", b"\r\n")
    timer = StreamTimer()
    cut = crlf.index(b"\r\n\r\n") + 3  # between the CR and the LF that end the first event
    timer.feed(crlf[:cut], 0.0)
    timer.feed(crlf[cut:], 1.0)
    assert timer.chunks == 2 and timer.done


def test_stream_timer_reports_errors_and_truncation() -> None:
    timer = StreamTimer()
    timer.feed(_events(_chunk("a"), {"error": {"message": "boom", "type": "server_error"}}), 0.0)
    assert timer.error == {"message": "boom", "type": "server_error"} and not timer.done
    assert timer.output_tokens is None  # no usage: the caller falls back to counted chunks


def test_build_body_asks_for_usage_and_keeps_the_request() -> None:
    request = LoadRequest(messages=[{"role": "user", "content": "hi"}], max_tokens=5, params={"temperature": 0})
    body = orjson.loads(build_body(request, "m", "chat", {"stream_options": {"x": 1}, "top_p": 0.5}))
    assert body["stream"] is True and body["stream_options"] == {"x": 1, "include_usage": True}
    assert body["messages"][0]["content"] == "hi" and body["max_tokens"] == 5
    assert body["temperature"] == 0 and body["top_p"] == 0.5
    completion = orjson.loads(build_body(request, "m", "completions"))
    assert completion["prompt"] == "hi" and "messages" not in completion
    with pytest.raises(ValueError):
        LoadRequest()


# -- shapes


def test_constant_arrivals_are_evenly_spaced_and_split_exactly_among_workers() -> None:
    shape = LoadShape("constant", rate=20)
    full = list(arrival_times(shape, 2.0, seed=0))
    assert len(full) == 40 and full[1][1] == pytest.approx(0.05) and full[-1][1] == pytest.approx(1.95)
    parts = [list(arrival_times(shape, 2.0, 0, worker=w, workers=3)) for w in range(3)]
    assert sorted(a for p in parts for a in p) == full


def test_poisson_arrivals_have_the_rate_and_exponential_gaps() -> None:
    times = [t for _, t in arrival_times(LoadShape("poisson", rate=100), 100.0, seed=3)]
    assert len(times) == pytest.approx(10_000, rel=0.05)
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    mean = sum(gaps) / len(gaps)
    assert mean == pytest.approx(0.01, rel=0.05)
    assert sum(g > 3 * mean for g in gaps) / len(gaps) == pytest.approx(math.exp(-3), abs=0.01)
    assert list(arrival_times(LoadShape("poisson", rate=100), 1.0, seed=3)) == list(
        arrival_times(LoadShape("poisson", rate=100), 1.0, seed=3)
    )
    assert len(list(arrival_times(LoadShape("poisson", rate=100), 100.0, 3, count=50))) == 50


def test_ramp_rate_grows_linearly() -> None:
    times = [t for _, t in arrival_times(LoadShape("ramp", rate=0, rate_to=100, arrivals="constant"), 10.0, 0)]
    assert len(times) == pytest.approx(500, abs=1)  # the area under the ramp
    first, second = sum(t < 5 for t in times), sum(t >= 5 for t in times)
    assert second == pytest.approx(3 * first, rel=0.02)  # 125 vs 375


def test_shapes_refuse_nonsense() -> None:
    with pytest.raises(ValueError, match="concurrency"):
        LoadShape("concurrency", concurrency=0)
    with pytest.raises(ValueError, match="rate"):
        LoadShape("poisson", rate=0)
    with pytest.raises(ValueError, match="final rate"):
        LoadShape("ramp", rate=1)
    assert split_concurrency(10, 3) == [4, 3, 3]
    with pytest.raises(ValueError, match="a ramp needs a duration"):
        RunPlan("http://x/v1", "m", LoadShape("ramp", rate=1, rate_to=2), duration=None, requests=5)
    closed = LoadShape("concurrency", concurrency=1)
    assert RunPlan("http://x/v1", "m", closed, duration=None, requests=5, max_seconds=9).horizon == 9
    assert RunPlan("http://x/v1", "m", closed, duration=20, warmup=2).horizon == 22


# -- SLOs


@pytest.mark.parametrize(
    ("text", "metric", "op", "threshold"),
    [
        ("ttft.p95<500ms", "ttft.p95", "<", 500.0),
        ("e2e.p99 <= 2s", "e2e.p99", "<=", 2000.0),
        ("itl.p50<900us", "itl.p50", "<", 0.9),
        ("error_rate<1%", "error_rate", "<", 0.01),
        ("error_rate<=0.05", "error_rate", "<=", 0.05),
        ("goodput>=4rps", "goodput_rps", ">=", 4.0),
        ("throughput>10req/s", "throughput_rps", ">", 10.0),
        ("output_tps>=100tok/s", "output_tps", ">=", 100.0),
    ],
)
def test_slo_parsing(text: str, metric: str, op: str, threshold: float) -> None:
    slo = parse_slo(text)
    assert (slo.metric, slo.op) == (metric, op) and slo.threshold == pytest.approx(threshold)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("ttft.p95 500ms", "expected METRIC OP VALUE"),
        ("ttft.p95<500", "needs a unit"),
        ("ttft.p42<5ms", "unknown statistic"),
        ("ttft<5ms", "say which statistic"),
        ("latency.p95<5ms", "unknown metric"),
        ("goodput>=4", "requests per second"),
        ("error_rate<150%", "cannot exceed"),
        ("error_rate<1ms", "percentage"),
        ("ttft.p95<<5ms", "expected METRIC OP VALUE"),
    ],
)
def test_bad_slos_say_what_is_wrong(text: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match="bad SLO") as info:
        parse_slo(text)
    assert fragment in str(info.value)


def test_slo_evaluation_and_per_request_thresholds() -> None:
    slos = [parse_slo(s) for s in ("ttft.p95<100ms", "ttft.p99<=80ms", "error_rate<1%", "goodput>=5rps")]
    summary = {"latency_ms": {"ttft": {"p95": 90.0, "p99": 95.0}}, "error_rate": 0.0, "goodput_rps": None}
    results = {r.slo.text: r.passed for r in evaluate_slos(slos, summary)}
    assert results == {"ttft.p95<100ms": True, "ttft.p99<=80ms": False, "error_rate<1%": True, "goodput>=5rps": False}
    assert request_thresholds(slos) == {"ttft": 80.0}


# -- aggregates


def _result(i: int, ttft: float, gaps: int = 3, error: str | None = None) -> RequestResult:
    start = i * 0.1
    times = [start + ttft + k * 0.01 for k in range(gaps + 1)]
    return RequestResult(i, start, times[-1] + 0.001, 0.0005, 200, error, times, 5, gaps + 1, True)


def test_aggregates_merge_exactly_and_count_goodput() -> None:
    results = [_result(i, 0.05 if i % 4 else 0.2) for i in range(40)] + [_result(40, 0.05, error="http_500")]
    whole = Aggregate({"ttft": 100.0})
    parts = [Aggregate({"ttft": 100.0}) for _ in range(3)]
    for r in results:
        whole.add(r)
        parts[r.index % 3].add(r)
    merged = parts[0].merge(parts[1]).merge(Aggregate.from_dict(orjson.loads(orjson.dumps(parts[2].to_dict()))))
    assert merged.to_dict() == whole.to_dict()
    summary = summarise(merged, 0.0)
    assert summary["requests"] == 41 and summary["succeeded"] == 40 and summary["errors"] == {"http_500": 1}
    assert summary["good_requests"] == 30  # every fourth request had a 200 ms TTFT, over the 100 ms bound
    assert summary["latency_ms"]["itl"]["count"] == 40 * 3
    assert summary["latency_ms"]["ttft"]["p50"] == pytest.approx(50.0, abs=0.05)
    assert summary["latency_ms"]["tpot"]["p50"] == pytest.approx(10.0 + 1 / 3, abs=0.05)


# -- sources


def test_jsonl_source(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    path.write_text(
        '{"prompt": "a", "max_tokens": 3}\n\n{"messages": [{"role": "user", "content": "b"}], "temperature": 0}\n'
    )
    source = build_source(SourceSpec.parse(f"jsonl:{path}"))
    assert len(source) == 2 and source.get(0).prompt == "a" and source.get(0).max_tokens == 3
    assert source.get(3).messages == [{"role": "user", "content": "b"}] and source.get(1).params == {"temperature": 0}
    path.write_text('{"prompt": "a"}\n{"nope": 1}\n')
    with pytest.raises(ConfigError, match=r"r.jsonl:2"):
        build_source(SourceSpec.parse(f"jsonl:{path}"))
    with pytest.raises(ConfigError, match="does not exist"):
        build_source(SourceSpec.parse(f"jsonl:{tmp_path / 'missing'}"))
    with pytest.raises(ConfigError, match="unknown request source 'sql'; known: dataset, jsonl, synthetic, traces"):
        build_source(SourceSpec.parse("sql:select 1"))


def test_synthetic_source_follows_the_length_distributions() -> None:
    source = build_source(SourceSpec(input_tokens="uniform:20,40", output_tokens="normal:50,5", pool=300, seed=2))
    wants = [source.get(i).input_tokens for i in range(300)]
    outs = [source.get(i).max_tokens for i in range(300)]
    assert min(wants) >= 20 and max(wants) <= 40 and sum(outs) / 300 == pytest.approx(50, abs=1.5)
    assert "approximate" in source.description
    assert len({source.get(i).messages[0]["content"] for i in range(300)}) == 300
    with pytest.raises(ConfigError, match="bad input-token distribution"):
        parse_distribution("gamma:3", "input-token")
    assert parse_distribution("64").mean == 64


# -- compare and limits


def test_compare_rows_mark_better_and_worse() -> None:
    a = {"summary": {"throughput_rps": 10.0, "error_rate": 0.0, "latency_ms": {"ttft": {"p50": 100.0}}}}
    b = {"summary": {"throughput_rps": 12.0, "error_rate": 0.1, "latency_ms": {"ttft": {"p50": 50.0}}}}
    rows = {r[0]: r for r in compare_rows(a, b)}
    assert rows["throughput req/s"][3] == "[green]+2[/green]" and rows["throughput req/s"][4] == "[green]+20.0%[/green]"
    assert rows["error rate"][3].startswith("[red]+0.1")
    assert rows["ttft p50 ms"][3] == "[green]-50[/green]"
    assert "itl p50 ms" not in rows


def test_safety_caps_name_the_setting_and_yield_to_the_override() -> None:
    caps = LoadtestConfig(max_rate=10, max_concurrency=8, max_duration=60, max_workers=2)
    fast = RunPlan("http://x/v1", "m", LoadShape("poisson", rate=50), max_in_flight=8)
    with pytest.raises(ConfigError, match=r"50 req/s exceeds the safety cap of 10 req/s.*max_rate.*--override-limits"):
        check_limits(fast, 1, caps, override=False)
    check_limits(fast, 1, caps, override=True)
    with pytest.raises(ConfigError, match="concurrency of 9"):
        check_limits(
            RunPlan("http://x/v1", "m", LoadShape("concurrency", concurrency=9), max_in_flight=8), 1, caps, False
        )
    with pytest.raises(ConfigError, match="exceeds the safety cap of 60 s"):
        check_limits(
            RunPlan("http://x/v1", "m", LoadShape("constant", rate=1), duration=100, max_in_flight=8), 1, caps, False
        )
    with pytest.raises(ConfigError, match="3 generator processes"):
        check_limits(RunPlan("http://x/v1", "m", LoadShape("constant", rate=1), max_in_flight=8), 3, caps, False)
    assert normalise_target("http://127.0.0.1:8000/") == "http://127.0.0.1:8000/v1"
    assert normalise_target("https://api.example.com/openai/v1") == "https://api.example.com/openai/v1"
    with pytest.raises(ConfigError, match="not an http"):
        normalise_target("127.0.0.1:8000")
