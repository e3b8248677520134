"""Span ingestion, as pure functions: SDK JSON spans and OTLP trace requests become span rows.

OTLP requests are decoded with the `opentelemetry-proto` message definitions (protobuf, or JSON through
protobuf's json_format after turning OTLP/JSON's hex ids into the base64 that json_format expects). GenAI
semantic-convention attributes (`gen_ai.*`) map onto the same columns the gateway fills.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping
from typing import Any

import orjson
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from shipyard.config import PriceConfig
from shipyard.errors import InvalidRequest

__all__ = ["MAX_SPANS", "decode_otlp", "otlp_rows", "price_of", "sdk_rows"]

MAX_SPANS = 10_000
_HEX32 = re.compile(r"^[0-9a-f]{32}$")
_HEX16 = re.compile(r"^[0-9a-f]{16}$")
_STATUSES = {"ok", "error"}


def _text(value: Any, limit: int) -> str | None:
    if value is None:
        return None
    return str(value)[:limit]


def _json_text(value: Any) -> str | None:
    if value is None:
        return None
    return orjson.dumps(value, default=str).decode()


def sdk_rows(payload: Any, prices: Mapping[str, PriceConfig] | None = None) -> list[dict[str, Any]]:
    """Validate a batch from the SDK (`{"spans": [...]}`) and return span rows; InvalidRequest names the
    first bad field."""
    if not isinstance(payload, dict) or not isinstance(payload.get("spans"), list):
        raise InvalidRequest("The body must be a JSON object with a 'spans' list.", param="spans")
    items = payload["spans"]
    if len(items) > MAX_SPANS:
        raise InvalidRequest(f"At most {MAX_SPANS} spans per request.", param="spans")
    project = payload.get("project")
    return [_sdk_row(item, index, project, prices or {}) for index, item in enumerate(items)]


def _sdk_row(item: Any, index: int, project: Any, prices: Mapping[str, PriceConfig]) -> dict[str, Any]:
    where = f"spans[{index}]"
    if not isinstance(item, dict):
        raise InvalidRequest(f"'{where}' must be an object.", param=where)
    for key, pattern in (("trace_id", _HEX32), ("span_id", _HEX16)):
        if not isinstance(item.get(key), str) or not pattern.match(item[key]):
            raise InvalidRequest(f"'{where}.{key}' must be lower-case hex of the W3C length.", param=f"{where}.{key}")
    parent = item.get("parent_id")
    if parent is not None and (not isinstance(parent, str) or not _HEX16.match(parent)):
        raise InvalidRequest(f"'{where}.parent_id' must be 16 hex characters or null.", param=f"{where}.parent_id")
    start, end = item.get("start_time"), item.get("end_time")
    if not isinstance(start, int | float) or (end is not None and not isinstance(end, int | float)):
        raise InvalidRequest(f"'{where}.start_time' and 'end_time' must be unix seconds.", param=f"{where}.start_time")
    status = item.get("status", "ok")
    if status not in _STATUSES:
        raise InvalidRequest(f"'{where}.status' must be 'ok' or 'error'.", param=f"{where}.status")
    attributes = item.get("attributes")
    meta = item.get("metadata")
    model = _text(item.get("model"), 256)
    usage = {"prompt_tokens": item.get("prompt_tokens"), "completion_tokens": item.get("completion_tokens")}
    return {
        "trace_id": item["trace_id"],
        "span_id": item["span_id"],
        "parent_id": parent,
        "name": _text(item.get("name"), 256) or "span",
        "kind": _text(item.get("kind"), 16) or "span",
        "source": "sdk",
        "project": _text(item.get("project", project), 64),
        "start_time": float(start),
        "end_time": float(end) if end is not None else None,
        "duration_ms": (float(end) - float(start)) * 1000 if end is not None else None,
        "status": status,
        "error": _text(item.get("error"), 4000),
        "deployment": _text(item.get("deployment"), 64),
        "model": model,
        "input": _json_text(item.get("input")),
        "output": _json_text(item.get("output")),
        "prompt_tokens": _int(usage["prompt_tokens"]),
        "completion_tokens": _int(usage["completion_tokens"]),
        "cost": price_of(prices, model, usage),
        "user": _text(item.get("user"), 256),
        "meta": meta if isinstance(meta, dict) else None,
        "attributes": attributes if isinstance(attributes, dict) else None,
    }


def _int(value: Any) -> int | None:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def price_of(prices: Mapping[str, PriceConfig], model: str | None, usage: Mapping[str, Any]) -> float | None:
    """Dollars for the usage at the model's configured price; None when the model has no price or no usage."""
    price = prices.get(model) if model else None
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    if price is None or (prompt is None and completion is None):
        return None
    return ((prompt or 0) * price.input + (completion or 0) * price.output) / 1_000_000


# --- OTLP -----------------------------------------------------------------------------------------------------

_ID_KEYS = ("traceId", "spanId", "parentSpanId")


def _hex_ids_to_base64(node: Any) -> None:
    """OTLP/JSON writes ids as hex; protobuf's JSON mapping of bytes is base64."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in _ID_KEYS and isinstance(value, str) and re.fullmatch(r"[0-9a-fA-F]*", value):
                node[key] = base64.b64encode(bytes.fromhex(value)).decode()
            else:
                _hex_ids_to_base64(value)
    elif isinstance(node, list):
        for value in node:
            _hex_ids_to_base64(value)


def decode_otlp(body: bytes, content_type: str) -> ExportTraceServiceRequest:
    """An OTLP/HTTP trace export request, protobuf or JSON by content type."""
    request = ExportTraceServiceRequest()
    try:
        if content_type.startswith("application/json"):
            payload = orjson.loads(body)
            _hex_ids_to_base64(payload)
            json_format.ParseDict(payload, request, ignore_unknown_fields=True)
        else:
            request.ParseFromString(body)
    except (orjson.JSONDecodeError, json_format.ParseError, DecodeError, ValueError) as exc:
        raise InvalidRequest(f"The body is not a valid OTLP trace export request: {exc}") from None
    return request


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: _value(kv.value) for kv in value.kvlist_value.values}
    if kind == "bytes_value":
        return value.bytes_value.hex()
    return getattr(value, kind)


def _maybe_json(value: Any) -> Any:
    if isinstance(value, str) and value[:1] in ("[", "{"):
        try:
            return orjson.loads(value)
        except orjson.JSONDecodeError:
            return value
    return value


def _indexed(attributes: dict[str, Any], prefix: str) -> list[dict[str, Any]] | None:
    """The older flattened form: gen_ai.prompt.0.role, gen_ai.prompt.0.content, ..."""
    found: dict[int, dict[str, Any]] = {}
    for key, value in attributes.items():
        if key.startswith(prefix):
            index, _, field = key[len(prefix) :].partition(".")
            if index.isdigit() and field:
                found.setdefault(int(index), {})[field] = value
    return [found[i] for i in sorted(found)] or None


def _genai(attributes: dict[str, Any]) -> dict[str, Any]:
    get = attributes.get
    reasons = get("gen_ai.response.finish_reasons")
    inputs = get("gen_ai.input.messages") or get("gen_ai.prompt") or _indexed(attributes, "gen_ai.prompt.")
    outputs = get("gen_ai.output.messages") or get("gen_ai.completion") or _indexed(attributes, "gen_ai.completion.")
    return {
        "model": get("gen_ai.response.model") or get("gen_ai.request.model"),
        "engine": get("gen_ai.provider.name") or get("gen_ai.system"),
        "prompt_tokens": _int(get("gen_ai.usage.input_tokens", get("gen_ai.usage.prompt_tokens"))),
        "completion_tokens": _int(get("gen_ai.usage.output_tokens", get("gen_ai.usage.completion_tokens"))),
        "finish_reason": (reasons[0] if isinstance(reasons, list) and reasons else reasons) or None,
        "input": _maybe_json(inputs),
        "output": _maybe_json(outputs),
        "user": get("user.id") or get("enduser.id"),
        "llm": any(k.startswith("gen_ai.") for k in attributes),
    }


def otlp_rows(
    request: ExportTraceServiceRequest, prices: Mapping[str, PriceConfig] | None = None
) -> list[dict[str, Any]]:
    rows = []
    for resource_spans in request.resource_spans:
        resource = {kv.key: _value(kv.value) for kv in resource_spans.resource.attributes}
        project = resource.get("service.name")
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                if len(span.trace_id) != 16 or len(span.span_id) != 8:
                    raise InvalidRequest("Every OTLP span needs a 16-byte trace id and an 8-byte span id.")
                rows.append(_otlp_row(span, project, prices or {}))
                if len(rows) > MAX_SPANS:
                    raise InvalidRequest(f"At most {MAX_SPANS} spans per request.")
    return rows


def _otlp_row(span: Any, project: Any, prices: Mapping[str, PriceConfig]) -> dict[str, Any]:
    attributes = {kv.key: _value(kv.value) for kv in span.attributes}
    genai = _genai(attributes)
    start = span.start_time_unix_nano / 1e9
    end = span.end_time_unix_nano / 1e9 if span.end_time_unix_nano else None
    error = span.status.code == 2
    model = _text(genai["model"], 256)
    usage = {"prompt_tokens": genai["prompt_tokens"], "completion_tokens": genai["completion_tokens"]}
    return {
        "trace_id": span.trace_id.hex(),
        "span_id": span.span_id.hex(),
        "parent_id": span.parent_span_id.hex() if len(span.parent_span_id) == 8 else None,
        "name": span.name[:256] or "span",
        "kind": "llm" if genai["llm"] else "span",
        "source": "otlp",
        "project": _text(project, 64),
        "start_time": start,
        "end_time": end,
        "duration_ms": (end - start) * 1000 if end is not None else None,
        "status": "error" if error else "ok",
        "error": (span.status.message or "error")[:4000] if error else None,
        "engine": _text(genai["engine"], 64),
        "model": model,
        "input": _json_text(genai["input"]),
        "output": _json_text(genai["output"]),
        "finish_reason": _text(genai["finish_reason"], 32),
        "prompt_tokens": genai["prompt_tokens"],
        "completion_tokens": genai["completion_tokens"],
        "cost": price_of(prices, model, usage),
        "user": _text(genai["user"], 256),
        "attributes": attributes or None,
    }
