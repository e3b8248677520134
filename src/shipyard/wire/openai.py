"""The OpenAI wire format: request checks and response builders, as pure functions.

The gateway and the local engine both call `check_chat` / `check_completion`; neither touches
HTTP here. Every refusal is an `InvalidRequest` naming the parameter and what to change.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from shipyard.config import LimitsConfig
from shipyard.errors import InvalidRequest

__all__ = [
    "ROUTING_FIELDS",
    "RequestShape",
    "check_chat",
    "check_completion",
    "chat_chunk",
    "parse_body",
]

# Fields that would let a caller choose where a request goes or which key it uses (CVE-2024-6587 class).
ROUTING_FIELDS = frozenset(
    {
        "api_base",
        "base_url",
        "api_key",
        "api_version",
        "api_type",
        "organization",
        "custom_llm_provider",
        "deployment_id",
        "engine",
        "litellm_params",
        "extra_headers",
        "headers",
        "proxy",
        "endpoint",
        "url",
        "azure_endpoint",
        "azure_ad_token",
        "aws_region_name",
        "vertex_project",
        "vertex_location",
    }
)

_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})


@dataclass(slots=True)
class RequestShape:
    """What the gateway needs to know about a checked request."""

    model: str
    stream: bool
    include_usage: bool
    n: int
    max_tokens: int | None


def parse_body(raw: bytes) -> dict[str, Any]:
    """Decode a JSON request body into an object, or refuse it."""
    if not raw:
        raise InvalidRequest("The request body is empty; send a JSON object.", code="invalid_json")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"The request body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.", code="invalid_json")
    return body


def _bad(param: str, message: str, code: str = "invalid_value") -> InvalidRequest:
    return InvalidRequest(f"Invalid '{param}': {message}", param=param, code=code)


def _number(lo: float, hi: float, *, lo_open: bool = False) -> Callable[[str, Any], None]:
    def check(name: str, value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise _bad(name, "expected a number.", "invalid_type")
        if value < lo or value > hi or (lo_open and value == lo):
            bracket = "(" if lo_open else "["
            raise _bad(name, f"{value} is outside {bracket}{lo}, {hi}].")

    return check


def _integer(lo: int, hi: int | None = None) -> Callable[[str, Any], None]:
    def check(name: str, value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _bad(name, "expected an integer.", "invalid_type")
        if value < lo or (hi is not None and value > hi):
            upper = f" and at most {hi}" if hi is not None else ""
            raise _bad(name, f"{value} must be at least {lo}{upper}.")

    return check


def _of_type(kind: type | tuple[type, ...], label: str) -> Callable[[str, Any], None]:
    def check(name: str, value: Any) -> None:
        if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
            raise _bad(name, f"expected {label}.", "invalid_type")

    return check


def _nullable(inner: Callable[[str, Any], None]) -> Callable[[str, Any], None]:
    def check(name: str, value: Any) -> None:
        if value is not None:
            inner(name, value)

    return check


def _response_format(name: str, value: Any) -> None:
    if not isinstance(value, dict) or value.get("type") not in ("text", "json_object", "json_schema"):
        raise _bad(name, "expected {'type': 'text' | 'json_object' | 'json_schema'}.")
    if value["type"] == "json_schema" and not isinstance(value.get("json_schema"), dict):
        raise _bad(name, "type 'json_schema' needs a 'json_schema' object.")


def _stream_options(name: str, value: Any) -> None:
    if not isinstance(value, dict):
        raise _bad(name, "expected an object.", "invalid_type")
    for key, item in value.items():
        if key not in ("include_usage", "include_obfuscation") or not isinstance(item, bool):
            raise _bad(name, f"unknown option {key!r} or non-boolean value.")


def _metadata(name: str, value: Any) -> None:
    if not isinstance(value, dict) or len(value) > 16:
        raise _bad(name, "expected an object of at most 16 string pairs.")
    for key, item in value.items():
        if not isinstance(item, str) or len(key) > 64 or len(item) > 512:
            raise _bad(name, "keys must be at most 64 and values at most 512 characters, both strings.")


def _logit_bias(name: str, value: Any) -> None:
    if not isinstance(value, dict):
        raise _bad(name, "expected an object mapping token ids to numbers.", "invalid_type")
    for key, item in value.items():
        if not str(key).isdigit() or isinstance(item, bool) or not isinstance(item, int | float):
            raise _bad(name, "keys must be token ids and values numbers in [-100, 100].")
        if not -100 <= item <= 100:
            raise _bad(name, f"bias {item} is outside [-100, 100].")


_COMMON: dict[str, Callable[[str, Any], None]] = {
    "model": _of_type(str, "a string"),
    "stream": _nullable(_of_type(bool, "a boolean")),
    "stream_options": _nullable(_stream_options),
    "temperature": _nullable(_number(0, 2)),
    "top_p": _nullable(_number(0, 1, lo_open=True)),
    "n": _nullable(_integer(1)),
    "max_tokens": _nullable(_integer(1)),
    "seed": _nullable(_integer(-(2**63), 2**63 - 1)),
    "presence_penalty": _nullable(_number(-2, 2)),
    "frequency_penalty": _nullable(_number(-2, 2)),
    "logit_bias": _nullable(_logit_bias),
    "user": _nullable(_of_type(str, "a string")),
    "metadata": _nullable(_metadata),
    # Common extensions understood by vLLM, llama.cpp and Shipyard's local engine.
    "top_k": _nullable(_integer(-1)),
    "min_p": _nullable(_number(0, 1)),
    "repetition_penalty": _nullable(_number(0, 10, lo_open=True)),
}

_CHAT: dict[str, Callable[[str, Any], None]] = {
    **_COMMON,
    "messages": lambda name, value: None,  # checked by _check_messages
    "stop": lambda name, value: None,  # checked by _check_stop
    "max_completion_tokens": _nullable(_integer(1)),
    "response_format": _nullable(_response_format),
    "logprobs": _nullable(_of_type(bool, "a boolean")),
    "top_logprobs": _nullable(_integer(0, 20)),
    "tools": _nullable(_of_type(list, "a list")),
    "tool_choice": _nullable(_of_type((str, dict), "a string or an object")),
    "parallel_tool_calls": _nullable(_of_type(bool, "a boolean")),
    "functions": _nullable(_of_type(list, "a list")),
    "function_call": _nullable(_of_type((str, dict), "a string or an object")),
    "store": _nullable(_of_type(bool, "a boolean")),
    "service_tier": _nullable(_of_type(str, "a string")),
    "reasoning_effort": _nullable(_of_type(str, "a string")),
    "modalities": _nullable(_of_type(list, "a list")),
    "prediction": _nullable(_of_type(dict, "an object")),
    "audio": _nullable(_of_type(dict, "an object")),
    "web_search_options": _nullable(_of_type(dict, "an object")),
    "verbosity": _nullable(_of_type(str, "a string")),
}

_COMPLETION: dict[str, Callable[[str, Any], None]] = {
    **_COMMON,
    "prompt": lambda name, value: None,  # checked by _check_prompt
    "stop": lambda name, value: None,
    "echo": _nullable(_of_type(bool, "a boolean")),
    "suffix": _nullable(_of_type(str, "a string")),
    "best_of": _nullable(_integer(1)),
    "logprobs": _nullable(_integer(0, 5)),
}


def _check_fields(body: dict[str, Any], spec: dict[str, Callable[[str, Any], None]]) -> None:
    for name, value in body.items():
        check = spec.get(name)
        if check is None:
            if name in ROUTING_FIELDS:
                raise InvalidRequest(
                    f"'{name}' is refused: where a request goes is decided by the deployment, not the caller.",
                    param=name,
                    code="routing_field_refused",
                )
            raise InvalidRequest(
                f"Unrecognized request argument supplied: {name}", param=name, code="unknown_parameter"
            )
        check(name, value)
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise InvalidRequest(
            "'model' is required: name a deployment (see GET /v1/models).",
            param="model",
            code="missing_required_parameter",
        )


def _check_stop(body: dict[str, Any], limits: LimitsConfig) -> None:
    stop = body.get("stop")
    if stop is None:
        return
    items = [stop] if isinstance(stop, str) else stop
    if not isinstance(items, list) or not all(isinstance(s, str) and s for s in items):
        raise _bad("stop", "expected a non-empty string or a list of non-empty strings.", "invalid_type")
    if len(items) > limits.max_stop:
        raise _bad("stop", f"{len(items)} sequences given; at most {limits.max_stop} are allowed.")
    if any(len(s) > limits.max_stop_chars for s in items):
        raise _bad("stop", f"each sequence must be at most {limits.max_stop_chars} characters.")


def _check_content(index: int, message: dict[str, Any]) -> None:
    content = message.get("content")
    param = f"messages[{index}].content"
    if content is None:
        if message["role"] == "assistant" and (message.get("tool_calls") or message.get("function_call")):
            return
        raise _bad(param, "content is required.", "missing_required_parameter")
    if isinstance(content, str):
        return
    if not isinstance(content, list) or not content:
        raise _bad(param, "expected a string or a non-empty list of content parts.", "invalid_type")
    for part in content:
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise _bad(param, "each content part must be an object with a 'type'.", "invalid_type")
        if part["type"] == "text" and not isinstance(part.get("text"), str):
            raise _bad(param, "a 'text' part needs a string 'text'.", "invalid_type")


def _check_messages(body: dict[str, Any], limits: LimitsConfig) -> None:
    messages = body.get("messages")
    if messages is None:
        raise InvalidRequest("'messages' is required.", param="messages", code="missing_required_parameter")
    if not isinstance(messages, list) or not messages:
        raise _bad("messages", "expected a non-empty list of messages.", "invalid_type")
    if len(messages) > limits.max_messages:
        raise _bad("messages", f"{len(messages)} messages given; at most {limits.max_messages} are allowed.")
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise _bad(f"messages[{index}]", "expected an object.", "invalid_type")
        role = message.get("role")
        if role not in _ROLES:
            raise _bad(f"messages[{index}].role", f"{role!r} is not one of {sorted(_ROLES)}.")
        _check_content(index, message)


def _check_prompt(body: dict[str, Any]) -> None:
    prompt = body.get("prompt")
    if prompt is None:
        raise InvalidRequest("'prompt' is required.", param="prompt", code="missing_required_parameter")
    if isinstance(prompt, str):
        return
    if isinstance(prompt, list) and prompt:
        if all(isinstance(p, str) for p in prompt):
            return
        if all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            return
        if all(isinstance(p, list) and p and all(isinstance(t, int) for t in p) for p in prompt):
            return
    raise _bad("prompt", "expected a string, a list of strings, or token ids.", "invalid_type")


def _shape(
    body: dict[str, Any], limits: LimitsConfig, max_tokens: int | None, tokens_param: str = "max_tokens"
) -> RequestShape:
    n = body.get("n") or 1
    if n > limits.max_n:
        raise _bad("n", f"{n} choices asked; at most {limits.max_n} are allowed.")
    if max_tokens is not None and max_tokens > limits.max_tokens:
        raise _bad(tokens_param, f"{max_tokens} is above this server's cap of {limits.max_tokens}.")
    stream = bool(body.get("stream"))
    options = body.get("stream_options")
    if options is not None and not stream:
        raise _bad("stream_options", "only allowed when 'stream' is true.")
    include_usage = bool(options and options.get("include_usage"))
    return RequestShape(body["model"], stream, include_usage, n, max_tokens)


def check_chat(body: dict[str, Any], limits: LimitsConfig) -> RequestShape:
    """Check a /v1/chat/completions body; return its shape or raise InvalidRequest."""
    _check_fields(body, _CHAT)
    _check_messages(body, limits)
    _check_stop(body, limits)
    max_tokens = body.get("max_completion_tokens")
    legacy = body.get("max_tokens")
    if max_tokens is not None and legacy is not None and max_tokens != legacy:
        raise _bad("max_tokens", "give either 'max_tokens' or 'max_completion_tokens', not two different values.")
    if max_tokens is not None:
        return _shape(body, limits, max_tokens, "max_completion_tokens")
    return _shape(body, limits, legacy)


def check_completion(body: dict[str, Any], limits: LimitsConfig) -> RequestShape:
    """Check a /v1/completions body; return its shape or raise InvalidRequest."""
    _check_fields(body, _COMPLETION)
    _check_prompt(body)
    _check_stop(body, limits)
    best_of = body.get("best_of")
    if best_of is not None and best_of < (body.get("n") or 1):
        raise _bad("best_of", "must be at least 'n'.")
    if best_of is not None and best_of > limits.max_n:  # best_of candidates are generated like n choices
        raise _bad("best_of", f"{best_of} candidates asked; at most {limits.max_n} are allowed.")
    return _shape(body, limits, body.get("max_tokens"))


def chat_chunk(
    completion_id: str,
    model: str,
    created: int,
    choices: list[dict[str, Any]],
    usage: dict[str, int] | None = None,
) -> bytes:
    """One `chat.completion.chunk` as an SSE event."""
    payload: dict[str, Any] = {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": choices,
    }
    if usage is not None:
        payload["usage"] = usage
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def now() -> int:
    return int(time.time())
