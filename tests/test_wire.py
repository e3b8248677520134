"""The OpenAI wire checks as pure functions: no HTTP involved."""

from __future__ import annotations

import pytest

from shipyard.config import LimitsConfig
from shipyard.errors import InvalidRequest
from shipyard.wire.openai import check_chat, check_completion, parse_body

LIMITS = LimitsConfig(max_n=4, max_tokens=100, max_stop=2, max_stop_chars=8, max_messages=3)
MSG = [{"role": "user", "content": "hi"}]


def _chat(**fields: object) -> dict:
    return {"model": "m", "messages": MSG, **fields}


def _refused(body: dict, param: str | None, code: str, check=check_chat) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as info:
        check(body, LIMITS)
    assert info.value.param == param
    assert info.value.code == code
    assert info.value.status == 400
    return info.value


def test_parse_body() -> None:
    assert parse_body(b'{"a": 1}') == {"a": 1}
    for raw in (b"", b"{", b"[1]", b'"x"', b"\xff\xfe"):
        with pytest.raises(InvalidRequest) as info:
            parse_body(raw)
        assert info.value.code == "invalid_json"


def test_valid_chat_shape() -> None:
    shape = check_chat(_chat(stream=True, stream_options={"include_usage": True}, n=2, max_tokens=9), LIMITS)
    assert (shape.model, shape.stream, shape.include_usage, shape.n, shape.max_tokens) == ("m", True, True, 2, 9)
    assert check_chat(_chat(max_completion_tokens=7), LIMITS).max_tokens == 7
    assert check_chat(_chat(), LIMITS).stream is False


@pytest.mark.parametrize(
    ("fields", "param", "code"),
    [
        ({"temperature": 3}, "temperature", "invalid_value"),
        ({"temperature": "hot"}, "temperature", "invalid_type"),
        ({"top_p": 0}, "top_p", "invalid_value"),
        ({"n": 0}, "n", "invalid_value"),
        ({"n": 5}, "n", "invalid_value"),
        ({"n": True}, "n", "invalid_type"),
        ({"max_tokens": 101}, "max_tokens", "invalid_value"),
        ({"max_tokens": 5, "max_completion_tokens": 6}, "max_tokens", "invalid_value"),
        ({"stop": ["a", "b", "c"]}, "stop", "invalid_value"),
        ({"stop": "123456789"}, "stop", "invalid_value"),
        ({"stop": [""]}, "stop", "invalid_type"),
        ({"stream_options": {"include_usage": True}}, "stream_options", "invalid_value"),
        ({"response_format": {"type": "yaml"}}, "response_format", "invalid_value"),
        ({"response_format": {"type": "json_schema"}}, "response_format", "invalid_value"),
        ({"seed": 1.5}, "seed", "invalid_type"),
        ({"logit_bias": {"x": 1}}, "logit_bias", "invalid_value"),
        ({"metadata": {"k": 1}}, "metadata", "invalid_value"),
        ({"api_base": "http://evil"}, "api_base", "routing_field_refused"),
        ({"base_url": "http://evil"}, "base_url", "routing_field_refused"),
        ({"api_key": "sk-x"}, "api_key", "routing_field_refused"),
        ({"frobnicate": 1}, "frobnicate", "unknown_parameter"),
        ({"model": ""}, "model", "missing_required_parameter"),
        ({"messages": []}, "messages", "invalid_type"),
        ({"messages": MSG * 4}, "messages", "invalid_value"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role", "invalid_value"),
        ({"messages": [{"role": "user"}]}, "messages[0].content", "missing_required_parameter"),
        ({"messages": [{"role": "user", "content": [{"type": "text"}]}]}, "messages[0].content", "invalid_type"),
        ({"messages": "hi"}, "messages", "invalid_type"),
    ],
)
def test_chat_refusals_name_the_parameter(fields: dict, param: str, code: str) -> None:
    error = _refused(_chat(**fields), param, code)
    assert param in error.message or code == "routing_field_refused" or param == "model"


def test_missing_model_and_messages() -> None:
    _refused({"messages": MSG}, "model", "missing_required_parameter")
    _refused({"model": "m"}, "messages", "missing_required_parameter")


def test_assistant_tool_call_without_content_is_allowed() -> None:
    messages = [*MSG, {"role": "assistant", "content": None, "tool_calls": [{"id": "1"}]}]
    assert check_chat({"model": "m", "messages": messages}, LIMITS).n == 1


def test_completion_checks() -> None:
    ok = {"model": "m", "prompt": "hello"}
    assert check_completion(ok, LIMITS).model == "m"
    for prompt in (["a", "b"], [1, 2, 3], [[1, 2], [3]]):
        check_completion({**ok, "prompt": prompt}, LIMITS)
    _refused({**ok, "prompt": [1, "a"]}, "prompt", "invalid_type", check_completion)
    _refused({"model": "m"}, "prompt", "missing_required_parameter", check_completion)
    _refused({**ok, "messages": MSG}, "messages", "unknown_parameter", check_completion)
    _refused({**ok, "best_of": 1, "n": 2}, "best_of", "invalid_value", check_completion)
