"""Load tests against real processes: the fake upstream (a stand-in for a hosted provider, with configurable
chunk timing) and the `shipyard loadtest` CLI as a subprocess, with its real store."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from shipyard.loadtest.execute import run_test
from shipyard.loadtest.runner import RunPlan
from shipyard.loadtest.shapes import LoadShape, arrival_times
from shipyard.loadtest.slo import parse_slo, request_thresholds
from shipyard.loadtest.sources import SourceSpec
from tests.helpers import FakeUpstreamProcess, default_sigint, start_fake_upstream, wait_until

CHUNKS = 8  # the fake's content chunks per streamed answer


@pytest.fixture()
def slow_fake() -> FakeUpstreamProcess:
    fake = start_fake_upstream("--first-delay-ms", "50", "--chunk-delay-ms", "10")
    yield fake
    fake.stop()


def _plan(fake: FakeUpstreamProcess, shape: LoadShape, **kw) -> RunPlan:
    small = SourceSpec(input_tokens="16", output_tokens="8", pool=8)
    return RunPlan(base_url=fake.base_url, model="fake-model", shape=shape, source=small, **kw)


def test_constant_rate_sends_the_schedule_and_times_every_chunk(slow_fake: FakeUpstreamProcess) -> None:
    record = run_test(_plan(slow_fake, LoadShape("constant", rate=20), duration=1.0), [], in_process=True)
    s = record["summary"]
    assert s["requests"] == s["succeeded"] == 20 and slow_fake.stats()["requests"] == 20
    assert s["latency_ms"]["itl"]["count"] == 20 * (CHUNKS - 1)
    assert s["latency_ms"]["ttft"]["p50"] >= 50 and s["latency_ms"]["itl"]["p50"] >= 10  # never below the truth
    assert s["latency_ms"]["e2e"]["min"] >= 50 + 10 * (CHUNKS - 1)
    assert s["tokens_from_usage"] and s["output_tokens"] == 20 * CHUNKS and s["input_tokens"] == 20 * 5
    assert s["latency_ms"]["lateness"]["count"] == 20
    body = slow_fake.stats()["last_body"]
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True} and body["max_tokens"] == 8


def test_open_loop_is_not_slowed_by_a_slow_server(fake_upstream: FakeUpstreamProcess) -> None:
    fake_upstream.script(*[{"first_delay_ms": 1500} for _ in range(30)])
    record = run_test(_plan(fake_upstream, LoadShape("constant", rate=15), duration=1.0), [], in_process=True)
    assert record["summary"]["requests"] == 15  # all sent on schedule although none had answered yet
    # The clock starts when the client has sent the headers, which can be a fraction of a millisecond after the
    # fake has read them and started its own 1.5 s timer.
    assert record["summary"]["latency_ms"]["ttft"]["min"] >= 1495


def test_closed_loop_keeps_the_concurrency(fake_upstream: FakeUpstreamProcess) -> None:
    fake_upstream.script(*[{"first_delay_ms": 400} for _ in range(50)])
    record = run_test(_plan(fake_upstream, LoadShape("concurrency", concurrency=3), duration=1.0), [], in_process=True)
    s = record["summary"]
    # three users, each waiting ≥ 400 ms per answer, start at most 3 requests each in one second
    assert 3 <= s["requests"] <= 9 and s["errors"] == {}
    assert s["latency_ms"]["lateness"]["count"] == 0  # closed loop has no schedule to be late against


def test_poisson_and_request_limit_and_warmup(fake_upstream: FakeUpstreamProcess) -> None:
    shape = LoadShape("poisson", rate=40)
    plan = _plan(fake_upstream, shape, duration=None, requests=25, warmup=0.5, seed=11)
    warm = len(list(arrival_times(shape, 0.5, 11)))
    record = run_test(plan, [], in_process=True)
    s = record["summary"]
    assert s["requests"] == 25 and s["warmup_requests"] == warm
    assert fake_upstream.stats()["requests"] == 25 + warm


def test_ramp_sends_more_as_the_rate_rises(fake_upstream: FakeUpstreamProcess) -> None:
    shape = LoadShape("ramp", rate=2, rate_to=40, arrivals="constant")
    record = run_test(_plan(fake_upstream, shape, duration=2.0), [], in_process=True)
    started = {row[0]: row[1] for row in record["aggregate"]["timeline"]}
    assert record["summary"]["requests"] == len(list(arrival_times(shape, 2.0, 0)))
    assert started[1] > 2 * started[0]


def test_errors_are_counted_by_kind(fake_upstream: FakeUpstreamProcess) -> None:
    fake_upstream.script(
        {"status": 500}, {"status": 429}, {"reset_after_chunks": 2}, {"end_after_chunks": 2}, {"hang": True}
    )
    plan = _plan(fake_upstream, LoadShape("concurrency", concurrency=1), duration=None, requests=7, timeout=1.0)
    s = run_test(plan, [], in_process=True)["summary"]
    assert s["errors"] == {"http_500": 1, "http_429": 1, "connection": 1, "incomplete_stream": 1, "timeout": 1}
    assert s["succeeded"] == 2 and s["error_rate"] == pytest.approx(5 / 7)


def test_open_loop_in_flight_cap_drops_and_counts(fake_upstream: FakeUpstreamProcess) -> None:
    fake_upstream.script(*[{"first_delay_ms": 1500} for _ in range(20)])
    plan = _plan(fake_upstream, LoadShape("constant", rate=20), duration=1.0, max_in_flight=5)
    s = run_test(plan, [], in_process=True)["summary"]
    assert s["requests"] == 20 and s["succeeded"] == 5 and s["errors"] == {"dropped_in_flight_cap": 15}
    assert fake_upstream.stats()["requests"] == 5


def test_worker_processes_share_the_schedule_and_merge_exactly(slow_fake: FakeUpstreamProcess) -> None:
    slos = [parse_slo("ttft.p99<10s")]
    plan = _plan(slow_fake, LoadShape("constant", rate=30), duration=1.0, thresholds=request_thresholds(slos))
    record = run_test(plan, slos, workers=3)
    s = record["summary"]
    assert record["workers"] == 3 and record["passed"] is True
    assert s["requests"] == s["succeeded"] == s["good_requests"] == 30 and slow_fake.stats()["requests"] == 30
    assert s["latency_ms"]["itl"]["count"] == 30 * (CHUNKS - 1) and s["latency_ms"]["ttft"]["count"] == 30
    assert s["output_tokens"] == 30 * CHUNKS


# -- the CLI as a subprocess


def _cli(tmp_path: Path, *args: str, config: dict | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SHIPYARD_DATA_DIR": str(tmp_path / "data"), "COLUMNS": "200"}
    env.pop("SHIPYARD_URL", None)
    extra = []
    if config is not None:
        path = tmp_path / "shipyard.yaml"
        path.write_text(yaml.safe_dump(config))
        extra = ["--config", str(path)]
    command = [sys.executable, "-m", "shipyard.cli.main", "loadtest", *args, *extra]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)


def test_cli_slo_gate_passes_and_fails_with_exit_codes(tmp_path: Path, slow_fake: FakeUpstreamProcess) -> None:
    common = [
        "run",
        "-m",
        "fake-model",
        "--url",
        slow_fake.url,
        "--rate",
        "10",
        "-d",
        "1",
        "-q",
        "--output-tokens",
        "8",
    ]
    ok = _cli(tmp_path, *common, "--slo", "ttft.p95<5s", "--slo", "error_rate<1%", "--slo", "goodput>=1rps")
    assert ok.returncode == 0, ok.stderr + ok.stdout
    assert "all SLOs met" in ok.stdout
    bad = _cli(tmp_path, *common, "--slo", "ttft.p95<5ms", "--slo", "error_rate<1%")
    assert bad.returncode == 1, bad.stderr + bad.stdout
    assert re.search(r"ttft\.p95<5ms\s*│\s*[\d.]+\s*│\s*FAIL", bad.stdout) and "SLO failed" in bad.stdout
    assert re.search(r"error_rate<1%\s*│\s*0\.0\s*│\s*pass", bad.stdout)
    typo = _cli(tmp_path, *common, "--slo", "ttft.p95<5")
    assert typo.returncode == 2 and "bad SLO 'ttft.p95<5': a latency needs a unit" in typo.stderr


def test_cli_safety_caps_and_override(tmp_path: Path, fake_upstream: FakeUpstreamProcess) -> None:
    config = {"loadtest": {"max_rate": 5, "max_duration": 30}}
    args = [
        "run",
        "-m",
        "fake-model",
        "--url",
        fake_upstream.url,
        "-d",
        "1",
        "-q",
        "--no-store",
        "--arrivals",
        "constant",
    ]
    refused = _cli(tmp_path, *args, "--rate", "20", config=config)
    assert refused.returncode == 2 and "exceeds the safety cap of 5 req/s" in refused.stderr
    assert fake_upstream.stats()["requests"] == 0
    too_long = _cli(tmp_path, *args, "--rate", "1", "-d", "60", config=config)
    assert too_long.returncode == 2 and "safety cap of 30 s" in too_long.stderr
    forced = _cli(tmp_path, *args, "--rate", "20", "--override-limits", config=config)
    assert forced.returncode == 0, forced.stderr
    assert fake_upstream.stats()["requests"] == 20
    neither = _cli(tmp_path, "run", "-m", "x", "--url", fake_upstream.url, "-q")
    assert neither.returncode == 2 and "exactly one of --concurrency" in neither.stderr


def test_cli_reports_store_list_and_compare(tmp_path: Path, slow_fake: FakeUpstreamProcess) -> None:
    html, report = tmp_path / "a.html", tmp_path / "a.json"
    base = ["run", "-m", "fake-model", "--url", slow_fake.url, "-d", "1", "-q"]
    first = _cli(tmp_path, *base, "--rate", "10", "--label", "before", "--html", str(html), "--json", str(report))
    assert first.returncode == 0, first.stderr
    slow_fake.script(*[{"first_delay_ms": 300} for _ in range(100)])
    second = _cli(tmp_path, *base, "-c", "2", "--label", "after", "--workers", "2")
    assert second.returncode == 0, second.stderr
    page = html.read_text()
    assert page.count("<svg") >= 2 and "id='latency'" in page and "id='timeline'" in page
    assert "time to first token" in page and "inter-token latency" in page
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page) and "<script" not in page  # offline
    assert '"kind": "run"' in report.read_text()
    listed = _cli(tmp_path, "list")
    assert listed.returncode == 0 and "before" in listed.stdout and "after" in listed.stdout
    assert "poisson 10 req/s" in listed.stdout and "concurrency 2" in listed.stdout
    compared = _cli(tmp_path, "compare", "before", "after")
    assert compared.returncode == 0, compared.stderr
    ttft = re.search(r"ttft p50 ms\s*│\s*([\d.,]+)\s*│\s*([\d.,]+)\s*│\s*\+([\d.,]+)", compared.stdout)
    assert ttft, compared.stdout
    assert float(ttft.group(2)) > float(ttft.group(1)) + 200  # the second run's answers started 300 ms late
    missing = _cli(tmp_path, "compare", "before", "nope")
    assert missing.returncode == 2 and "no load-test run 'nope'" in missing.stderr
    again = _cli(tmp_path, "report", "after", "--html", str(tmp_path / "b.html"))
    assert again.returncode == 0 and (tmp_path / "b.html").read_text().count("<svg") >= 2


def test_cli_sweep_finds_the_highest_passing_rate(tmp_path: Path, fake_upstream: FakeUpstreamProcess) -> None:
    html = tmp_path / "sweep.html"
    args = ["sweep", "-m", "fake-model", "--url", fake_upstream.url, "--arrivals", "constant", "-d", "1.5", "-q"]
    result = _cli(tmp_path, *args, "--rates", "4,8,16", "--slo", "throughput<=10rps", "--html", str(html))
    assert result.returncode == 0, result.stderr + result.stdout
    assert "highest rate meeting every SLO: 8 req/s" in result.stdout
    page = html.read_text()
    assert "id='sweep'" in page and "throughput vs offered rate" in page and "latency vs offered rate" in page
    none = _cli(tmp_path, *args, "--rates", "4", "--slo", "throughput<=1rps", "--no-store")
    assert none.returncode == 1 and "no rate met every SLO" in none.stdout


def test_max_seconds_stops_a_request_count_run(fake_upstream: FakeUpstreamProcess) -> None:
    plan = _plan(fake_upstream, LoadShape("concurrency", concurrency=1), duration=None, requests=100_000, max_seconds=1)
    s = run_test(plan, [], in_process=True)["summary"]
    assert 0 < s["requests"] < 100_000 and s["errors"] == {}


def test_cli_ctrl_c_stops_the_load_and_keeps_what_was_measured(
    tmp_path: Path, fake_upstream: FakeUpstreamProcess
) -> None:
    env = {**os.environ, "SHIPYARD_DATA_DIR": str(tmp_path / "data"), "COLUMNS": "200"}
    args = ["run", "-m", "fake-model", "--url", fake_upstream.url, "--rate", "10", "-d", "60", "-q", "--label", "cut"]
    process = subprocess.Popen(
        [sys.executable, "-m", "shipyard.cli.main", "loadtest", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=default_sigint,
    )
    try:
        wait_until(lambda: fake_upstream.stats()["requests"] >= 5, 60, what="the first requests")
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, stderr
    assert "interrupted (Ctrl-C)" in stdout
    sent = fake_upstream.stats()["requests"]
    assert 5 <= sent < 600  # stopped long before the 60 s schedule ended
    listed = _cli(tmp_path, "show", "cut")
    assert listed.returncode == 0 and "interrupted (Ctrl-C)" in listed.stdout
    assert re.search(rf"│ {sent}\s+│ {sent}\s+│ 0 ", listed.stdout), listed.stdout  # every sent request measured
