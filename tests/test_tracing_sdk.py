"""`shipyard.observe` (issue 3, item 3): nested spans from sync/async functions, generators and `with` blocks,
shipped in batches to a real server; gateway calls made inside join the trace through `traceparent`."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

import shipyard
from shipyard.sdk import tracing
from tests.helpers import FakeUpstreamProcess, ShipyardProcess, wait_until


@pytest.fixture()
def server(tmp_path: Path, fake_upstream: FakeUpstreamProcess) -> Iterator[ShipyardProcess]:
    config = {
        "engines": {"fake": {"kind": "openai", "base_url": fake_upstream.base_url}},
        "deployments": {"chat": {"targets": [{"engine": "fake", "model": "fake-model"}]}},
        "tracing": {"flush_interval": 0.1},
    }
    server = ShipyardProcess(tmp_path / "data", config=config)
    server.start()
    try:
        server.wait_ready(60)
        yield server
    finally:
        assert server.stop() == 0


def _tree(server: ShipyardProcess, trace_id: str, spans: int) -> dict:
    def arrived() -> bool:
        response = httpx.get(f"{server.url}/api/v1/traces/{trace_id}", timeout=10)
        return response.status_code == 200 and response.json()["span_count"] >= spans

    wait_until(arrived, 20, what=f"{spans} spans of trace {trace_id}")
    found = httpx.get(f"{server.url}/api/v1/traces/{trace_id}", timeout=10).json()
    assert found["span_count"] == spans
    return found


def test_observe_records_nested_spans_and_joins_gateway_calls(server: ShipyardProcess) -> None:
    exporter = tracing.configure(url=server.url, project="demo", interval=0.1)
    gateway = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0, http_client=tracing.http_client())
    plain = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)

    @shipyard.observe
    def retrieve(question: str, k: int = 2) -> list[str]:
        return [f"doc{i}" for i in range(k)]

    @shipyard.observe(name="generate", kind="llm")
    def generate(question: str, docs: list[str]) -> str:
        answer = gateway.chat.completions.create(model="chat", messages=[{"role": "user", "content": question}])
        return answer.choices[0].message.content or ""

    @shipyard.observe
    def numbers(n: int) -> Iterator[int]:
        yield from range(n)

    @shipyard.observe
    async def letters(n: int):
        for i in range(n):
            await asyncio.sleep(0)
            yield "abc"[i]

    @shipyard.observe
    async def summarise(text: str) -> str:
        await asyncio.sleep(0)
        return text.upper()

    @shipyard.observe
    def boom() -> None:
        raise ValueError("no luck")

    @shipyard.observe
    def pipeline(question: str) -> dict:
        span = tracing.current_span()
        assert span is not None
        span.set(user="uma", metadata={"run": "r1"})
        docs = retrieve(question)
        with shipyard.observe("rerank") as block:
            block.set_attribute("kept", 1)
            block.set_output(docs[:1])
        answer = generate(question, docs)
        plain.chat.completions.create(
            model="chat", messages=[{"role": "user", "content": "plain"}], extra_headers=tracing.trace_headers()
        )
        assert list(numbers(3)) == [0, 1, 2]

        async def both() -> tuple[list[str], str]:
            return [c async for c in letters(2)], await summarise("ok")

        assert asyncio.run(both()) == (["a", "b"], "OK")
        with pytest.raises(ValueError):
            boom()
        return {"trace": span.trace_id, "answer": answer}

    result = pipeline("where is my parcel?")
    assert tracing.current_span() is None
    assert exporter.flush(20)
    found = _tree(server, result["trace"], spans=10)
    assert found["trace"]["source"] == "sdk" and found["trace"]["project"] == "demo"
    assert found["trace"]["user"] == "uma" and found["trace"]["meta"] == {"run": "r1"}
    (root,) = found["spans"]
    assert root["name"].endswith("pipeline") and root["input"] == {"question": "where is my parcel?"}
    assert root["output"]["answer"] == "hello from the fake"
    children = {c["name"].split("<locals>.")[-1]: c for c in root["children"]}
    names = ["retrieve", "rerank", "generate", "chat.completions", "numbers", "letters", "summarise", "boom"]
    assert list(children) == names
    assert children["retrieve"]["output"] == ["doc0", "doc1"] and children["retrieve"]["input"] == {
        "question": "where is my parcel?"
    }
    assert children["rerank"]["attributes"] == {"kept": 1} and children["rerank"]["output"] == ["doc0"]
    (llm,) = children["generate"]["children"]  # the gateway call made inside, joined through traceparent
    assert llm["source"] == "gateway" and llm["kind"] == "llm" and llm["deployment"] == "chat"
    assert llm["output"]["content"] == "hello from the fake" and llm["prompt_tokens"] == 5
    assert children["chat.completions"]["input"] == [{"role": "user", "content": "plain"}]  # via extra_headers
    assert children["numbers"]["output"] == [0, 1, 2] and children["letters"]["output"] == ["a", "b"]
    assert children["summarise"]["output"] == "OK"
    assert children["boom"]["status"] == "error" and children["boom"]["error"] == "ValueError: no luck"
    assert root["status"] == "ok" and all(c["duration_ms"] >= 0 for c in root["children"])
    listed = httpx.get(server.url + "/api/v1/traces", params={"source": "sdk"}, timeout=10).json()["data"]
    assert [t["id"] for t in listed] == [result["trace"]]


def test_ingest_endpoint_validates_batches(server: ShipyardProcess) -> None:
    url = server.url + "/api/v1/spans"
    bad = httpx.post(url, json={"spans": [{"trace_id": "xyz", "span_id": "1" * 16, "start_time": 1}]}, timeout=10)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "spans[0].trace_id"
    assert httpx.post(url, content=b"{", timeout=10).json()["error"]["code"] == "invalid_json"
    span = {"trace_id": "a" * 32, "span_id": "b" * 16, "name": "root", "start_time": 100.0, "end_time": 100.5}
    child = {**span, "span_id": "c" * 16, "parent_id": "b" * 16, "name": "child", "status": "error", "error": "x"}
    accepted = httpx.post(url, json={"spans": [child, span], "project": "p"}, timeout=10)
    assert accepted.status_code == 202 and accepted.json() == {"accepted": 2}
    again = httpx.post(url, json={"spans": [span]}, timeout=10)  # the same span twice is stored once
    assert again.status_code == 202
    found = _tree(server, "a" * 32, spans=2)
    assert found["trace"]["latency_ms"] == 500 and found["trace"]["project"] == "p"
    assert found["spans"][0]["children"][0]["status"] == "error"


def test_context_manager_without_a_server_does_not_block_the_caller() -> None:
    exporter = tracing.configure(url="http://127.0.0.1:9", interval=0.05, timeout=0.5)  # nothing listens
    with shipyard.observe("offline") as span:
        span.set_output(1)
    assert tracing.current_span() is None
    assert exporter.flush(0.5) is False  # kept for a retry, not dropped
    assert exporter.dropped == 0
    exporter.close()
