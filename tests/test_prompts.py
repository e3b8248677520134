"""Prompt templates and prompt data as pure functions: the sandbox, missing variables, refs, specs, diffs."""

from __future__ import annotations

import pytest

from shipyard.errors import InvalidRequest
from shipyard.registry.prompts import apply_to_request, diff_versions, parse_ref, parse_spec, render_version
from shipyard.registry.templates import MissingVariables, TemplateProblem, render_chat, render_text

# Server-side template injection payloads in the style of LiteLLM's advisories (GHSA-46cm-pfwv-cgf8,
# PYSEC-2026-3861) and the classic Jinja2 escape chains. Every one must be refused, never rendered.
SSTI = [
    "{{ lipsum.__globals__ }}",
    "{{ lipsum.__globals__['os'].popen('id').read() }}",
    "{{ ''.__class__.__mro__ }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ ''.__class__.__base__.__subclasses__() }}",
    "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
    "{{ joiner.__init__.__globals__ }}",
    "{{ namespace.__init__.__globals__ }}",
    "{{ self.__init__.__globals__.__builtins__ }}",
    "{{ self._TemplateReference__context }}",
    "{{ x.__class__ }}",
    "{{ x|attr('__class__') }}",
    "{{ x|attr('\\x5f\\x5fclass\\x5f\\x5f') }}",
    "{{ x['__class__'] }}",
    "{{ (x.upper).__self__ }}",
    "{{ x.format.__globals__ }}",
    "{{ request.application.__globals__ }}",
    "{{ config.items() }}",
    "{{ range.__class__ }}",
    "{{ dict(a=1) }}",
    "{% set l = [] %}{{ l.append(1) }}",
    "{% set d = {} %}{{ d.update(a=1) }}",
    "{{ 'a' * 1000000000 }}",
    "{{ 9 ** 9 ** 9 }}",
    "{% for i in range(100000000) %}{% endfor %}",
    "{% include '/etc/passwd' %}",
    "{% import 'os' as os %}",
    "{% extends '/etc/passwd' %}",
]


@pytest.mark.parametrize("payload", SSTI)
def test_template_injection_payloads_are_refused(payload: str) -> None:
    with pytest.raises(TemplateProblem):
        render_text(payload, {"x": "text"})


def test_file_access_through_a_loader_is_impossible() -> None:
    with pytest.raises(TemplateProblem) as info:
        render_text("{% include 'x' %}", {})
    assert "root" not in str(info.value)


def test_rendering_uses_exactly_the_variables_given() -> None:
    out = render_text("Hello {{ name }}, {{ items | join(', ') }}{% if vip %} (VIP){% endif %}", {
        "name": "Ada", "items": ["a", "b"], "vip": True})  # fmt: skip
    assert out == "Hello Ada, a, b (VIP)"
    assert render_text("{{ n * 3 }} {{ 'ab' * 2 }} {{ 2 ** 10 }}", {"n": 2}) == "6 abab 1024"


def test_missing_variables_are_an_error_that_names_them_all() -> None:
    with pytest.raises(MissingVariables) as info:
        render_text("{{ a }} {{ b }} {{ c }}", {"b": 1})
    assert info.value.missing == ["a", "c"]
    assert "a, c" in str(info.value)
    with pytest.raises(MissingVariables) as chat:
        render_chat([{"role": "system", "content": "{{ x }}"}, {"role": "user", "content": "{{ y }}"}], {})
    assert chat.value.missing == ["x", "y"]
    with pytest.raises(TemplateProblem, match="name"):  # a missing key inside a given object: not an empty string
        render_text("{{ user.name }}", {"user": {}})


def test_refs() -> None:
    assert str(parse_ref("bot")) == "bot@latest"
    assert parse_ref("bot@production").label == "production"
    assert parse_ref("bot:3").version == 3
    for bad in ["", "bot:x", "bot:0", "../x@y", "bot@", "bot@a/b", "a b"]:
        with pytest.raises(InvalidRequest):
            parse_ref(bad)


def test_spec_checks() -> None:
    spec = parse_spec(
        "messages:\n  - {role: system, content: 'You help {{ company }}.'}\n  - {role: user, content: '{{ q }}'}\n"
        "params: {temperature: 0.2}\nmessage: first\n"
    )
    assert spec["kind"] == "chat" and spec["variables"] == ["company", "q"] and spec["params"] == {"temperature": 0.2}
    assert parse_spec({"template": "Say {{ x }}"})["kind"] == "text"
    for bad, words in [
        ({"template": "x", "messages": [{"role": "user", "content": "y"}]}, "exactly one"),
        ({"template": "{{ x "}, "syntax"),
        ({"template": "{{ x }}", "variables": ["y"]}, "undeclared variable(s): x"),
        ({"template": "x", "params": {"api_base": "http://evil"}}, "Unsupported prompt params"),
        ({"messages": [{"role": "root", "content": "x"}]}, "messages[0]"),
        ({"template": "x", "surprise": 1}, "Unknown prompt field(s): surprise"),
    ]:
        with pytest.raises(InvalidRequest) as info:
            parse_spec(bad)
        assert words in info.value.message


def _version(number: int, spec: dict) -> dict:
    return {"name": "bot", "version": number, **parse_spec(spec)}


def test_render_version_names_missing_variables_for_api_callers() -> None:
    version = _version(2, {"template": "{{ a }}{{ b }}"})
    with pytest.raises(InvalidRequest) as info:
        render_version(version, {"a": 1})
    assert info.value.code == "missing_prompt_variables" and "bot:2" in info.value.message
    assert info.value.message.endswith("b.")


def test_diff_shows_the_changed_lines() -> None:
    a = _version(1, {"template": "Hello {{ name }}", "params": {"temperature": 0.1}})
    b = _version(2, {"template": "Hi {{ name }}", "params": {"temperature": 0.1}})
    text = diff_versions(a, b)
    assert "--- bot:1" in text and "+++ bot:2" in text
    assert "-template: Hello {{ name }}" in text and "+template: Hi {{ name }}" in text
    assert "temperature" not in "".join(line for line in text.splitlines() if line[:1] in "+-" and "++" not in line)
    assert diff_versions(a, a) == ""


def test_apply_to_request_prepends_messages_and_fills_unset_params() -> None:
    chat = _version(3, {"messages": [{"role": "system", "content": "Be {{ tone }}."}],
                        "params": {"temperature": 0.3, "max_tokens": 50}})  # fmt: skip
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 7}
    out = apply_to_request(body, "chat.completions", chat, {"tone": "brief"})
    assert out["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    assert out["temperature"] == 0.3 and out["max_tokens"] == 7  # the caller's value wins
    text = _version(4, {"template": "Summarise: {{ doc }}"})
    assert apply_to_request({"model": "m"}, "completions", text, {"doc": "x"})["prompt"] == "Summarise: x"
    assert apply_to_request({"model": "m"}, "chat.completions", text, {"doc": "x"})["messages"] == [
        {"role": "user", "content": "Summarise: x"}
    ]
    with pytest.raises(InvalidRequest):
        apply_to_request({"model": "m"}, "completions", chat, {"tone": "x"})
