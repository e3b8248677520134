"""Every gateway call becomes a trace (issue 3, item 1), queried over /api/v1/traces and the CLI (item 5),
counted in /metrics (item 6). A real server in front of the fake provider (a stand-in for a hosted one)."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import orjson
import pytest

from tests.helpers import FakeUpstreamProcess, ShipyardProcess, free_port, start_fake_upstream, wait_until

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeUpstreamProcess]:
    fake = start_fake_upstream()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, fake: FakeUpstreamProcess) -> Iterator[ShipyardProcess]:
    config = {
        "engines": {
            "fake": {"kind": "openai", "base_url": fake.base_url},
            "dead": {"kind": "openai", "base_url": f"http://127.0.0.1:{free_port()}/v1"},
        },
        "deployments": {
            "chat": {"targets": [{"engine": "fake", "model": "fake-model"}], "retries": 1, "backoff": 0},
            "free": {"targets": [{"engine": "fake", "model": "unpriced-model"}], "retries": 0},
            "broken": {"targets": [{"engine": "dead", "model": "x"}], "retries": 0, "fallbacks": ["chat"]},
        },
        "tracing": {"flush_interval": 0.1, "prices": {"fake-model": {"input": 1.0, "output": 2.0}}},
    }
    server = ShipyardProcess(tmp_path_factory.mktemp("tracing-gw"), config=config)
    server.start()
    try:
        server.wait_ready(60)
        yield server
    finally:
        assert server.stop() == 0


def _client(server: ShipyardProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)


def _traces(server: ShipyardProcess, **params: object) -> dict:
    response = httpx.get(server.url + "/api/v1/traces", params={"limit": 1000, **params}, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def _wait_for(server: ShipyardProcess, count: int, **params: object) -> list[dict]:
    wait_until(lambda: len(_traces(server, **params)["data"]) >= count, 15, what=f"{count} traces {params}")
    rows = _traces(server, **params)["data"]
    assert len(rows) == count
    return rows


def _root(server: ShipyardProcess, trace_id: str) -> dict:
    found = httpx.get(f"{server.url}/api/v1/traces/{trace_id}", timeout=10).json()
    assert len(found["spans"]) == 1
    return found["spans"][0]


def test_a_call_and_a_stream_are_traces_with_everything(server: ShipyardProcess, fake: FakeUpstreamProcess) -> None:
    client = _client(server)
    client.chat.completions.create(
        model="chat", messages=[{"role": "user", "content": "alpha"}], user="ann", metadata={"team": "blue"}
    )
    fake.script({"chunks": 5, "chunk_delay_ms": 30})
    stream = client.chat.completions.create(
        model="chat", messages=[{"role": "user", "content": "beta"}], stream=True, user="ann"
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    client.chat.completions.create(model="free", messages=[{"role": "user", "content": "gamma"}])
    rows = _wait_for(server, 2, user="ann") + _wait_for(server, 1, deployment="free")
    by_input = {}
    for row in rows:
        span = _root(server, row["id"])
        by_input[span["input"][0]["content"]] = (row, span)

    row, span = by_input["alpha"]
    assert row["user"] == "ann" and row["meta"] == {"team": "blue"} and row["source"] == "gateway"
    assert span["output"] == {"role": "assistant", "content": "hello from the fake"}
    assert span["finish_reason"] == "stop" and span["status"] == "ok" and span["status_code"] == 200
    assert (span["prompt_tokens"], span["completion_tokens"]) == (5, 4)
    assert span["cost"] == pytest.approx((5 * 1.0 + 4 * 2.0) / 1e6)
    assert span["engine"] == "fake" and span["model"] == "fake-model" and span["attempts"] == 1
    assert span["duration_ms"] > 0 and span["api_key_id"] is None

    row, span = by_input["beta"]
    assert span["stream"] is True and span["output"]["content"] == text == "tok " * 5
    assert span["completion_tokens"] == 5 and span["finish_reason"] == "stop"
    assert span["ttft_ms"] > 0 and span["duration_ms"] >= span["ttft_ms"]
    assert span["itl_mean_ms"] >= 20 and span["itl_p95_ms"] >= span["itl_mean_ms"] * 0.5

    row, span = by_input["gamma"]
    assert span["model"] == "unpriced-model" and span["cost"] is None  # unknown price: empty, not zero
    assert span["prompt_tokens"] == 5


def test_errors_retries_and_fallbacks(server: ShipyardProcess, fake: FakeUpstreamProcess) -> None:
    client = _client(server)
    fake.script({"status": 500})  # first attempt fails, the retry answers
    client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "retry me"}], user="rita")
    client.chat.completions.create(model="broken", messages=[{"role": "user", "content": "fall"}], user="rita")
    fake.script({"status": 400})  # not retryable: one attempt
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "bad"}], user="rita")
    rows = _wait_for(server, 3, user="rita")
    trees = {}
    for row in rows:
        found = httpx.get(f"{server.url}/api/v1/traces/{row['id']}", timeout=10).json()
        (root,) = found["spans"]
        trees[root["input"][0]["content"]] = (row, root)

    row, root = trees["retry me"]
    assert row["status"] == "ok" and root["attempts"] == 2
    assert [(c["kind"], c["status"], c["status_code"]) for c in root["children"]] == [
        ("attempt", "error", 502),
        ("retry", "ok", None),
    ]
    row, root = trees["fall"]
    assert root["deployment"] == "broken" and root["engine"] == "fake" and root["status"] == "ok"
    assert root["attributes"]["served_by"] == "chat"
    assert [(c["kind"], c["deployment"], c["engine"], c["status"]) for c in root["children"]] == [
        ("attempt", "broken", "dead", "error"),
        ("fallback", "chat", "fake", "ok"),
    ]
    row, root = trees["bad"]
    assert row["status"] == "error" and root["status_code"] == 400 and root["error"]
    assert _traces(server, user="rita", status="error")["data"] == [row]

    metrics = httpx.get(server.url + "/metrics", timeout=10).text
    assert 'shipyard_retries_total{deployment="chat",target="fake/fake-model"} 1' in metrics
    assert 'shipyard_fallbacks_total{deployment="broken",target="fake/fake-model"} 1' in metrics
    assert 'shipyard_requests_total{deployment="chat",target="fake/fake-model",status="400"} 1' in metrics


def test_incoming_traceparent_joins_the_callers_trace(server: ShipyardProcess) -> None:
    client = _client(server)
    client.chat.completions.create(
        model="chat",
        messages=[{"role": "user", "content": "joined"}],
        extra_headers={"traceparent": f"00-{TRACE}-{PARENT}-01"},
    )
    client.chat.completions.create(
        model="chat", messages=[{"role": "user", "content": "bad header"}], extra_headers={"traceparent": "garbage"}
    )

    def joined() -> bool:
        return httpx.get(f"{server.url}/api/v1/traces/{TRACE}", timeout=5).status_code == 200

    wait_until(joined, 15, what="the joined span")
    found = httpx.get(f"{server.url}/api/v1/traces/{TRACE}", timeout=5).json()
    assert found["trace"] is None  # the caller's root span was never sent; the gateway's span is kept as a root
    (span,) = found["spans"]
    assert span["trace_id"] == TRACE and span["parent_id"] == PARENT and span["input"][0]["content"] == "joined"
    rows = _wait_for(server, 1, q="bad header")  # an invalid header is ignored: a trace of its own
    assert rows[0]["id"] != TRACE


def test_filters_cursor_pages_export_and_cli(server: ShipyardProcess) -> None:
    client = _client(server)
    for index in range(7):
        client.chat.completions.create(
            model="free",
            messages=[{"role": "user", "content": f"page item {index} needle{index % 2}"}],
            user="pager",
            metadata={"batch": "b1" if index < 3 else "b2"},
        )
    rows = _wait_for(server, 7, user="pager")
    assert [r["created_at"] for r in rows] == sorted((r["created_at"] for r in rows), reverse=True)
    assert len(_traces(server, user="pager", metadata="batch=b1")["data"]) == 3
    assert len(_traces(server, user="pager", metadata="batch")["data"]) == 7
    assert len(_traces(server, user="pager", q="NEEDLE1")["data"]) == 3  # case-insensitive, input or output
    assert len(_traces(server, user="pager", q="hello from the fake")["data"]) == 7
    assert _traces(server, user="pager", min_latency_ms=60_000)["data"] == []
    middle = sorted(r["created_at"] for r in rows)[3]
    assert len(_traces(server, user="pager", since=middle)["data"]) == 4
    assert len(_traces(server, user="pager", until=middle)["data"]) == 3

    seen, cursor = [], None
    while True:
        params = {"user": "pager", "limit": 3, **({"cursor": cursor} if cursor else {})}
        page = httpx.get(server.url + "/api/v1/traces", params=params, timeout=10).json()
        seen += [r["id"] for r in page["data"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [r["id"] for r in rows]
    bad = httpx.get(server.url + "/api/v1/traces", params={"cursor": "nope"}, timeout=10)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "cursor"
    missing = httpx.get(server.url + "/api/v1/traces/" + "0" * 32, timeout=10)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "trace_not_found"

    exported = httpx.get(server.url + "/api/v1/traces/export", params={"user": "pager"}, timeout=10)
    lines = [orjson.loads(line) for line in exported.content.splitlines()]
    assert [t["id"] for t in lines] == [r["id"] for r in reversed(rows)]  # oldest first
    assert all(len(t["spans"]) == 1 and t["spans"][0]["output"]["content"] for t in lines)

    def cli(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "shipyard.cli.main", "traces", *args, "--url", server.url],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    table = cli("list", "--user", "pager", "--limit", "5")
    assert sum(r["id"] in table for r in rows) == 5 and "free" in table
    tree = cli("show", rows[0]["id"])
    assert "chat.completions" in tree and "deployment=free" in tree and "tokens=5/4" in tree
    jsonl = cli("export", "--since", str(rows[-1]["created_at"] - 1))
    assert {r["id"] for r in rows} <= {orjson.loads(line)["id"] for line in jsonl.splitlines()}
    failed = subprocess.run(
        [sys.executable, "-m", "shipyard.cli.main", "traces", "show", "f" * 32, "--url", server.url],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert failed.returncode == 1 and "No trace with id" in failed.stderr


def test_metrics_count_calls_tokens_and_the_writer(tmp_path: Path, fake: FakeUpstreamProcess) -> None:
    config = {
        "engines": {"fake": {"kind": "openai", "base_url": fake.base_url}},
        "deployments": {"m": {"targets": [{"engine": "fake", "model": "fake-model"}]}},
        "tracing": {"flush_interval": 0.1, "prices": {"fake-model": {"input": 1000000.0, "output": 0}}},
    }
    server = ShipyardProcess(tmp_path / "data", config=config)
    server.start()
    try:
        server.wait_ready(60)
        client = _client(server)
        for _ in range(3):
            client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
        fake.script({"chunks": 3, "chunk_delay_ms": 5})
        list(client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}], stream=True))
        labels = 'deployment="m",target="fake/fake-model"'

        def counted() -> bool:
            text = httpx.get(server.url + "/metrics", timeout=5).text
            # requests are counted when a record is turned into spans, just before its batch is written
            return f'shipyard_requests_total{{{labels},status="200"}} 4' in text and "records_written_total 4" in text

        wait_until(counted, 15, what="four requests in /metrics")
        response = httpx.get(server.url + "/metrics", timeout=5)
        assert response.headers["content-type"].startswith("text/plain")
        text = response.text
        assert f'shipyard_tokens_total{{{labels},direction="input"}} 20' in text
        assert f'shipyard_tokens_total{{{labels},direction="output"}} 15' in text  # 3 × 4 + 3
        assert f"shipyard_cost_dollars_total{{{labels}}} 20" in text  # $1 per prompt token
        assert f"shipyard_request_latency_seconds_count{{{labels}}} 4" in text
        assert f"shipyard_ttft_seconds_count{{{labels}}} 1" in text
        assert f"shipyard_itl_seconds_count{{{labels}}} 2" in text  # 3 content chunks: 2 gaps
        assert "shipyard_trace_records_written_total 4" in text
        assert "shipyard_trace_queue_depth 0" in text and "shipyard_trace_store_up 1" in text
        assert "shipyard_trace_records_journaled_total 0" in text
    finally:
        assert server.stop() == 0


@pytest.mark.parametrize("setting", ["capture_content_off", "disabled"])
def test_content_capture_off_and_tracing_off(tmp_path: Path, fake: FakeUpstreamProcess, setting: str) -> None:
    tracing = {"capture_content": False} if setting == "capture_content_off" else {"enabled": False}
    config = {
        "engines": {"fake": {"kind": "openai", "base_url": fake.base_url}},
        "deployments": {"c": {"targets": [{"engine": "fake", "model": "fake-model"}]}},
        "tracing": {"flush_interval": 0.1, **tracing},
    }
    server = ShipyardProcess(tmp_path / "data", config=config)
    server.start()
    try:
        server.wait_ready(60)
        client = _client(server)
        client.chat.completions.create(model="c", messages=[{"role": "user", "content": "secret words"}])
        list(client.chat.completions.create(model="c", messages=[{"role": "user", "content": "x"}], stream=True))
        if setting == "disabled":
            # Nothing queued, nothing written: the gateway hands nothing to the writer. Wait five flush intervals
            # first, so that a trace, had one been queued, would be visible by now.
            time.sleep(0.5)
            assert _metric_value(server, "shipyard_trace_queue_depth") == 0
            assert _metric_value(server, "shipyard_trace_records_written_total") == 0
            assert _traces(server)["data"] == []
            assert "shipyard_requests_total{" not in httpx.get(server.url + "/metrics", timeout=5).text
            return
        rows = _wait_for(server, 2)
        for row in rows:
            span = _root(server, row["id"])
            assert span["input"] is None and span["output"] is None and span["finish_reason"] is None
            assert span["prompt_tokens"] == 5 and span["status"] == "ok"
        assert _traces(server, q="secret")["data"] == []
    finally:
        assert server.stop() == 0


def _metric_value(server: ShipyardProcess, name: str) -> float:
    for line in httpx.get(server.url + "/metrics", timeout=5).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(name)
