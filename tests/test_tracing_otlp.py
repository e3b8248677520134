"""OTLP/HTTP ingest (issue 3, item 4): protobuf and JSON trace exports, GenAI semantic conventions mapped onto
the same fields as gateway calls. A real server; requests built with the opentelemetry-proto messages."""

from __future__ import annotations

import base64
from collections.abc import Iterator

import httpx
import orjson
import pytest
from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status

from shipyard.errors import InvalidRequest
from shipyard.tracing.ingest import decode_otlp, otlp_rows
from tests.helpers import ShipyardProcess, wait_until

T0 = 1_700_000_000_000_000_000


def _kv(key: str, value: object) -> KeyValue:
    if isinstance(value, bool):
        return KeyValue(key=key, value=AnyValue(bool_value=value))
    if isinstance(value, int):
        return KeyValue(key=key, value=AnyValue(int_value=value))
    if isinstance(value, list):
        return KeyValue(key=key, value=AnyValue(array_value={"values": [AnyValue(string_value=v) for v in value]}))
    return KeyValue(key=key, value=AnyValue(string_value=str(value)))


def _request(trace_hex: str) -> ExportTraceServiceRequest:
    trace_id = bytes.fromhex(trace_hex)
    agent = Span(
        trace_id=trace_id,
        span_id=bytes.fromhex("1111111111111111"),
        name="agent run",
        start_time_unix_nano=T0,
        end_time_unix_nano=T0 + 900_000_000,
        attributes=[_kv("user.id", "otto")],
    )
    chat = Span(
        trace_id=trace_id,
        span_id=bytes.fromhex("2222222222222222"),
        parent_span_id=bytes.fromhex("1111111111111111"),
        name="chat gpt-x",
        start_time_unix_nano=T0 + 100_000_000,
        end_time_unix_nano=T0 + 600_000_000,
        attributes=[
            _kv("gen_ai.operation.name", "chat"),
            _kv("gen_ai.provider.name", "openai"),
            _kv("gen_ai.request.model", "gpt-x"),
            _kv("gen_ai.usage.input_tokens", 12),
            _kv("gen_ai.usage.output_tokens", 7),
            _kv("gen_ai.response.finish_reasons", ["stop"]),
            _kv("gen_ai.input.messages", '[{"role": "user", "parts": [{"type": "text", "content": "otlp hello"}]}]'),
            _kv("gen_ai.output.messages", '[{"role": "assistant", "parts": [{"type": "text", "content": "hi!"}]}]'),
        ],
        status=Status(code=Status.STATUS_CODE_ERROR, message="rate limited"),
    )
    resource = ResourceSpans(
        resource={"attributes": [_kv("service.name", "otel-app")]}, scope_spans=[ScopeSpans(spans=[agent, chat])]
    )
    return ExportTraceServiceRequest(resource_spans=[resource])


def _otlp_json(request: ExportTraceServiceRequest) -> bytes:
    """OTLP/JSON: protobuf's JSON mapping, except that ids are hex, not base64."""
    payload = json_format.MessageToDict(request)

    def hexify(node: object) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("traceId", "spanId", "parentSpanId"):
                    node[key] = base64.b64decode(value).hex()
                else:
                    hexify(value)
        elif isinstance(node, list):
            for value in node:
                hexify(value)

    hexify(payload)
    return orjson.dumps(payload)


def test_genai_attributes_map_onto_span_fields() -> None:
    rows = otlp_rows(_request("ab" * 16), {})
    agent, chat = rows
    assert agent["parent_id"] is None and agent["project"] == "otel-app" and agent["user"] == "otto"
    assert agent["kind"] == "span" and agent["duration_ms"] == pytest.approx(900)
    assert chat["kind"] == "llm" and chat["parent_id"] == "1" * 16 and chat["source"] == "otlp"
    assert (chat["engine"], chat["model"]) == ("openai", "gpt-x")
    assert (chat["prompt_tokens"], chat["completion_tokens"]) == (12, 7)
    assert chat["finish_reason"] == "stop" and chat["status"] == "error" and chat["error"] == "rate limited"
    assert orjson.loads(chat["input"])[0]["parts"][0]["content"] == "otlp hello"
    assert decode_otlp(_otlp_json(_request("ab" * 16)), "application/json") == _request("ab" * 16)
    with pytest.raises(InvalidRequest):
        decode_otlp(b"\xff\x00garbage", "application/x-protobuf")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ShipyardProcess]:
    # No engine is needed to ingest; an openai engine at a closed port keeps the config valid.
    config = {
        "engines": {"none": {"kind": "openai", "base_url": "http://127.0.0.1:9/v1"}},
        "deployments": {"x": {"targets": [{"engine": "none"}]}},
        "tracing": {"flush_interval": 0.1, "prices": {"gpt-x": {"input": 2.0, "output": 4.0}}},
    }
    server = ShipyardProcess(tmp_path_factory.mktemp("otlp"), config=config)
    server.start()
    try:
        server.wait_listening(60)
        yield server
    finally:
        assert server.stop() == 0


@pytest.mark.parametrize("encoding", ["protobuf", "json"])
def test_otlp_http_export_lands_in_the_store(server: ShipyardProcess, encoding: str) -> None:
    trace_hex = ("cd" if encoding == "protobuf" else "ef") * 16
    request = _request(trace_hex)
    if encoding == "protobuf":
        body, content_type = request.SerializeToString(), "application/x-protobuf"
    else:
        body, content_type = _otlp_json(request), "application/json"
    response = httpx.post(server.url + "/v1/traces", content=body, headers={"content-type": content_type}, timeout=10)
    assert response.status_code == 200, response.text
    if encoding == "protobuf":
        assert response.headers["content-type"] == "application/x-protobuf"
        ExportTraceServiceResponse.FromString(response.content)
    else:
        assert response.json() == {}

    def stored() -> bool:
        return httpx.get(f"{server.url}/api/v1/traces/{trace_hex}", timeout=10).status_code == 200

    wait_until(stored, 20, what="the OTLP trace")
    found = httpx.get(f"{server.url}/api/v1/traces/{trace_hex}", timeout=10).json()
    assert found["trace"]["source"] == "otlp" and found["trace"]["project"] == "otel-app"
    assert found["trace"]["name"] == "agent run" and found["trace"]["user"] == "otto"
    (root,) = found["spans"]
    (chat,) = root["children"]
    assert chat["model"] == "gpt-x" and chat["cost"] == pytest.approx((12 * 2 + 7 * 4) / 1e6)
    listed = httpx.get(server.url + "/api/v1/traces", params={"q": "otlp hello", "source": "otlp"}, timeout=10)
    assert trace_hex in [t["id"] for t in listed.json()["data"]]


def test_otlp_errors_are_clear(server: ShipyardProcess) -> None:
    bad = httpx.post(
        server.url + "/v1/traces", content=b"\xff\x00", headers={"content-type": "application/x-protobuf"}, timeout=10
    )
    assert bad.status_code == 400 and "OTLP" in bad.json()["error"]["message"]
    wrong = httpx.get(server.url + "/v1/traces", timeout=10)
    assert wrong.status_code == 405
    assert httpx.post(server.url + "/v1/tracesx", timeout=10).status_code == 404  # the catch-all still answers


def test_metrics_route_is_not_the_gateway_catch_all(server: ShipyardProcess) -> None:
    response = httpx.get(server.url + "/metrics", timeout=10)
    assert response.status_code == 200 and "shipyard_trace_queue_depth" in response.text
