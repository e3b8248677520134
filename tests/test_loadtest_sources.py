"""`shipyard loadtest` requests from a registry dataset and from replayed gateway traces.

The pure conversions are tested directly; the sources themselves against a real `shipyard up` (auth off,
SQLite) whose deployments forward to the fake upstream (a stand-in for a hosted provider), with the CLI run
as a subprocess."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from shipyard.auth.keys import new_key
from shipyard.errors import ConfigError
from shipyard.loadtest.remote import (
    dataset_request,
    parse_dataset_ref,
    parse_trace_filter,
    server_url,
    trace_requests,
)
from shipyard.loadtest.sources import SOURCES, SourceSpec, build_source, register_source, resolve_source
from shipyard.loadtest.wire import LoadRequest
from shipyard.sdk.client import Client
from tests.helpers import FakeUpstreamProcess, ShipyardProcess, free_port, wait_until

# -- pure parts


def test_dataset_refs_and_row_inputs() -> None:
    assert parse_dataset_ref("faq") == ("faq", None) and parse_dataset_ref("faq:3") == ("faq", 3)
    for bad in ("", "faq:x", "faq:0", "faq@1"):
        with pytest.raises(ConfigError):
            parse_dataset_ref(bad)
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert dataset_request("Hi", 9, "row 1") == LoadRequest(messages=[{"role": "user", "content": "Hi"}], max_tokens=9)
    assert dataset_request(chat, None, "row 2").messages == chat
    assert dataset_request({"messages": chat}, 4, "row 3") == LoadRequest(messages=chat, max_tokens=4)
    with pytest.raises(ConfigError, match=r"row 4: 'input' must be .* \(got an object with question\)"):
        dataset_request({"question": "x"}, 4, "row 4")
    with pytest.raises(ConfigError, match=r"\(got int\)"):
        dataset_request(7, 4, "row 5")


def test_trace_filters_and_recorded_calls() -> None:
    params, limit = parse_trace_filter("deployment=smollm2,since=-3600,until=30m,status=ok,limit=50", now=10_000.0)
    assert params == {"deployment": "smollm2", "since": 6400.0, "until": 8200.0, "status": "ok"} and limit == 50
    assert parse_trace_filter("since=1700000000,metadata=team=a", now=0.0)[0] == {
        "since": 1700000000.0,
        "metadata": "team=a",
    }
    assert parse_trace_filter(None, now=0.0) == ({}, 10_000)
    for bad in ("color=red", "deployment", "since=yesterday", "limit=0"):
        with pytest.raises(ConfigError, match="traces"):
            parse_trace_filter(bad, now=0.0)

    chat = [{"role": "user", "content": "Where is my parcel?"}]
    trace = {
        "spans": [
            {"source": "gateway", "kind": "llm", "start_time": 2.0, "input": "Once upon", "attributes": None},
            {"source": "gateway", "kind": "retry", "start_time": 1.5, "input": None},
            {"source": "sdk", "kind": "llm", "start_time": 0.5, "input": [{"role": "user", "content": "sdk"}]},
            {"source": "gateway", "kind": "llm", "start_time": 3.0, "input": None},  # capture off: skipped
            {
                "source": "gateway",
                "kind": "llm",
                "start_time": 1.0,
                "input": chat,
                "attributes": {"max_tokens": 12, "temperature": 0.2, "stream": True, "served_by": "backup"},
            },
        ]
    }
    assert trace_requests(trace) == [
        LoadRequest(messages=chat, max_tokens=12, params={"temperature": 0.2}),
        LoadRequest(prompt="Once upon"),
    ]
    assert server_url("http://h:8000/v1/") == "http://h:8000" and server_url("http://h/api/v1") == "http://h"


def test_remote_sources_are_read_once_and_snapshotted() -> None:
    spec = SourceSpec(input_tokens="8", output_tokens="4", pool=3)
    resolved, source = resolve_source(spec)
    assert resolved is spec and len(source) == 3 and spec.stored() is spec  # local sources stay as they are
    with pytest.raises(ConfigError, match="unknown request source 'snapshot'"):
        build_source(SourceSpec(kind="snapshot"))

    reads: list[str | None] = []

    class Remote:
        remote = True
        description = "from elsewhere"

        def __init__(self, argument: str | None) -> None:
            reads.append(argument)
            self.requests = [LoadRequest(prompt=f"p{i}") for i in range(3)]

        def __len__(self) -> int:
            return len(self.requests)

        def get(self, index: int) -> LoadRequest:
            return self.requests[index % 3]

    register_source("test-remote")(lambda s: Remote(s.argument))
    try:
        frozen, _ = resolve_source(SourceSpec.parse("test-remote:abc", options={"server_url": "http://x"}))
        copy = pickle.loads(pickle.dumps(frozen))  # what a generator process receives
        rebuilt = build_source(copy)
        assert reads == ["abc"]  # the generator processes do not read again
        assert [rebuilt.get(i).prompt for i in range(4)] == ["p0", "p1", "p2", "p0"]
        assert rebuilt.description == "from elsewhere" and copy.argument == "test-remote:abc"
        assert frozen.stored().options == {"requests": 3} and frozen.stored().kind == "snapshot"
    finally:
        SOURCES.pop("test-remote")


# -- against a real server


def _cli(tmp_path: Path, *args: str, key: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SHIPYARD_DATA_DIR": str(tmp_path / "cli-data"), "COLUMNS": "200"}
    env.pop("SHIPYARD_URL", None)
    env.pop("SHIPYARD_API_KEY", None)
    if key is not None:
        env["SHIPYARD_API_KEY"] = key
    command = [sys.executable, "-m", "shipyard.cli.main", "loadtest", "run", "-q", "--no-store", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)


@pytest.fixture()
def server(tmp_path: Path, fake_upstream: FakeUpstreamProcess) -> ShipyardProcess:
    config = {
        "engines": {"fake": {"kind": "openai", "base_url": fake_upstream.base_url}},
        "deployments": {
            "recorded": {"targets": [{"engine": "fake", "model": "fake-model"}]},
            "replay": {"targets": [{"engine": "fake", "model": "fake-model"}]},
        },
    }
    process = ShipyardProcess(tmp_path / "data", config=config)
    process.start()
    try:
        process.wait_ready(60)
        yield process
    finally:
        process.stop()


def test_dataset_source_sends_the_rows(tmp_path: Path, server: ShipyardProcess, fake_upstream) -> None:
    chat = [{"role": "system", "content": "Answer in one word."}, {"role": "user", "content": "Capital of France?"}]
    with Client(server.url) as client:
        client.datasets.create("load", [{"input": "2+2?", "expected": "4"}, {"input": chat}])
        client.datasets.create("load", [{"input": {"messages": [{"role": "user", "content": "third"}]}}], append=True)
        client.datasets.create("odd", [{"input": {"question": "not a chat"}}])
    target = ["-m", "fake-model", "--url", fake_upstream.url, "--server-url", server.url]

    out = tmp_path / "v1.json"
    first = _cli(tmp_path, *target, "--source", "dataset:load:1", "-c", "1", "-n", "3", "--output-tokens", "7",
                 "--json", str(out))  # fmt: skip
    assert first.returncode == 0, first.stderr + first.stdout
    stats = fake_upstream.stats()
    assert stats["requests"] == 3  # rows 1, 2, then row 1 again: version 1 holds two rows
    assert stats["last_body"]["messages"] == [{"role": "user", "content": "2+2?"}]
    assert stats["last_body"]["max_tokens"] == 7 and stats["last_body"]["stream"] is True
    record = orjson.loads(out.read_bytes())
    assert record["source"] == "dataset load:1 (2 rows, max_tokens 7)"
    assert record["config"]["source"]["kind"] == "snapshot" and record["config"]["source"]["options"] == {
        "requests": 2
    }  # the run record counts the rows, it does not copy them
    assert record["config"]["source"]["argument"] == "dataset:load:1"

    fake_upstream.reset()
    newest = _cli(tmp_path, *target, "--source", "dataset:load", "-c", "1", "-n", "2", "--extra-body",
                  '{"temperature": 0}')  # fmt: skip
    assert newest.returncode == 0, newest.stderr + newest.stdout
    body = fake_upstream.stats()["last_body"]
    assert body["messages"] == chat and body["temperature"] == 0 and body["max_tokens"] == 64

    # Several generator processes replay the snapshot read once by the parent.
    fake_upstream.reset()
    split = _cli(tmp_path, *target, "--source", "dataset:load", "--rate", "20", "-n", "6", "--workers", "2")
    assert split.returncode == 0, split.stderr + split.stdout
    assert fake_upstream.stats()["requests"] == 6

    # More rows than one page of the rows API.
    with Client(server.url) as client:
        client.datasets.create("big", [{"input": f"question {i}"} for i in range(2500)])
    fake_upstream.reset()
    big = _cli(tmp_path, *target, "--source", "dataset:big", "-c", "1", "-n", "1", "--json", str(out))
    assert big.returncode == 0, big.stderr + big.stdout
    assert orjson.loads(out.read_bytes())["source"] == "dataset big:1 (2500 rows, max_tokens 64)"
    assert fake_upstream.stats()["last_body"]["messages"] == [{"role": "user", "content": "question 0"}]

    fake_upstream.reset()
    missing = _cli(tmp_path, *target, "--source", "dataset:nope", "-n", "1", "-c", "1")
    assert missing.returncode == 2 and f"cannot read dataset 'nope' from {server.url}: No dataset" in missing.stderr
    old = _cli(tmp_path, *target, "--source", "dataset:load:9", "-n", "1", "-c", "1")
    assert old.returncode == 2 and "cannot read dataset 'load'" in old.stderr
    odd = _cli(tmp_path, *target, "--source", "dataset:odd", "-n", "1", "-c", "1")
    assert odd.returncode == 2 and "dataset odd:1 row 1: 'input' must be a string" in odd.stderr
    down = f"http://127.0.0.1:{free_port()}"
    gone = _cli(tmp_path, "-m", "fake-model", "--url", fake_upstream.url, "--server-url", down, "--source",
                "dataset:load", "-n", "1", "-c", "1")  # fmt: skip
    assert gone.returncode == 2 and "cannot be reached" in gone.stderr and "--server-url" in gone.stderr
    assert fake_upstream.stats()["requests"] == 0  # no load was sent by any failed run


def _traces(server: ShipyardProcess, deployment: str) -> list[dict[str, Any]]:
    response = httpx.get(server.url + "/api/v1/traces/export", params={"deployment": deployment}, timeout=10)
    response.raise_for_status()
    return [orjson.loads(line) for line in response.text.splitlines() if line.strip()]


def _root(trace: dict[str, Any]) -> dict[str, Any]:
    return next(s for s in trace["spans"] if s["span_id"] == trace["root_span_id"])


def test_traces_source_replays_recorded_calls_in_order(tmp_path: Path, server: ShipyardProcess, fake_upstream) -> None:
    calls = [
        {"messages": [{"role": "user", "content": "first call"}], "max_tokens": 5, "temperature": 0.5},
        {"messages": [{"role": "system", "content": "Terse."}, {"role": "user", "content": "second"}],
         "max_tokens": 6, "top_p": 0.9, "stream": True},
        {"messages": [{"role": "user", "content": "third call"}], "seed": 3},
    ]  # fmt: skip
    for call in calls:
        answer = httpx.post(server.url + "/v1/chat/completions", json={"model": "recorded", **call}, timeout=30)
        assert answer.status_code == 200, answer.text
    wait_until(lambda: len(_traces(server, "recorded")) == 3, 30, 0.2, "three recorded calls")
    fake_upstream.reset()

    source = "traces:deployment=recorded,since=-600"
    run = _cli(tmp_path, "-m", "replay", "--url", server.url, "--server-url", server.url + "/v1", "--source", source,
               "-c", "1", "-n", "3", "--json", str(tmp_path / "replay.json"))  # fmt: skip
    assert run.returncode == 0, run.stderr + run.stdout
    assert fake_upstream.stats()["requests"] == 3
    last = fake_upstream.stats()["last_body"]
    assert last["messages"] == calls[2]["messages"] and last["seed"] == 3 and "max_tokens" not in last
    record = orjson.loads((tmp_path / "replay.json").read_bytes())
    assert record["source"] == f"{source} (3 recorded calls, replayed in order)"

    # The gateway recorded the replay too: the same inputs and parameters, in the recorded order.
    wait_until(lambda: len(_traces(server, "replay")) == 3, 30, 0.2, "three replayed calls")
    replayed = [_root(t) for t in _traces(server, "replay")]
    assert [span["input"] for span in replayed] == [call["messages"] for call in calls]
    assert replayed[0]["attributes"]["max_tokens"] == 5 and replayed[0]["attributes"]["temperature"] == 0.5
    assert replayed[1]["attributes"]["max_tokens"] == 6 and replayed[1]["attributes"]["top_p"] == 0.9
    assert replayed[2]["attributes"]["seed"] == 3 and "max_tokens" not in replayed[2]["attributes"]

    fake_upstream.reset()
    empty = _cli(tmp_path, "-m", "replay", "--url", server.url, "--server-url", server.url, "--source",
                 "traces:deployment=nobody", "-n", "1", "-c", "1")  # fmt: skip
    assert empty.returncode == 2 and "no recorded gateway call with its input matches" in empty.stderr
    future = _cli(tmp_path, "-m", "replay", "--url", server.url, "--server-url", server.url, "--source",
                  "traces:deployment=recorded,since=1h,until=-3000", "-n", "1", "-c", "1")  # fmt: skip
    assert future.returncode == 2 and "traces:deployment=recorded,since=1h,until=-3000" in future.stderr
    typo = _cli(tmp_path, "-m", "replay", "--url", server.url, "--server-url", server.url, "--source",
                "traces:deploy=recorded", "-n", "1", "-c", "1")  # fmt: skip
    assert typo.returncode == 2 and "bad traces filter 'deploy=recorded'" in typo.stderr
    assert fake_upstream.stats()["requests"] == 0


def test_sources_use_the_api_key_when_auth_is_on(tmp_path: Path, fake_upstream: FakeUpstreamProcess) -> None:
    admin = new_key()
    config = {
        "engines": {"fake": {"kind": "openai", "base_url": fake_upstream.base_url}},
        "deployments": {"recorded": {"targets": [{"engine": "fake", "model": "fake-model"}]}},
    }
    server = ShipyardProcess(tmp_path / "data", config=config, env={"SHIPYARD_AUTH": "on", "SHIPYARD_ADMIN_KEY": admin})
    server.start()
    try:
        server.wait_ready(60)
        with Client(server.url, api_key=admin) as client:
            client.datasets.create("secret", [{"input": "hello"}])
        target = ["-m", "fake-model", "--url", fake_upstream.url, "--server-url", server.url, "-n", "1", "-c", "1"]
        refused = _cli(tmp_path, *target, "--source", "dataset:secret")
        assert refused.returncode == 2 and "set SHIPYARD_API_KEY" in refused.stderr, refused.stderr
        no_traces = _cli(tmp_path, *target, "--source", "traces:")
        assert no_traces.returncode == 2 and "cannot read traces (HTTP 401)" in no_traces.stderr, no_traces.stderr
        assert fake_upstream.stats()["requests"] == 0
        allowed = _cli(tmp_path, *target, "--source", "dataset:secret", key=admin)
        assert allowed.returncode == 0, allowed.stderr + allowed.stdout
        assert fake_upstream.stats()["last_body"]["messages"] == [{"role": "user", "content": "hello"}]
    finally:
        server.stop()
