"""Prompts as data: the push format, references (`name@label`, `name:3`), rendering a version, diffs, and
what the gateway does with a request that names a prompt. Pure functions; the store lives in store/registry.py.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from shipyard.errors import InvalidRequest
from shipyard.registry.templates import MissingVariables, TemplateProblem, check_template, render_chat, render_text

__all__ = [
    "LABEL_PATTERN",
    "NAME_PATTERN",
    "PromptRef",
    "apply_to_request",
    "diff_versions",
    "parse_ref",
    "parse_spec",
    "render_version",
]

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
LABEL_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_ROLES = frozenset({"system", "developer", "user", "assistant"})
# Default parameters a prompt version may carry; they fill what the caller did not set.
PARAMS = frozenset(
    {"temperature", "top_p", "max_tokens", "max_completion_tokens", "stop", "seed", "presence_penalty",
     "frequency_penalty", "top_k", "min_p", "repetition_penalty", "response_format", "n"}
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class PromptRef:
    """`name` alone means the `latest` label; `name@label`; `name:3` for a version."""

    name: str
    label: str | None = None
    version: int | None = None

    def __str__(self) -> str:
        if self.version is not None:
            return f"{self.name}:{self.version}"
        return f"{self.name}@{self.label or 'latest'}"


def check_name(name: str, what: str = "prompt") -> str:
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise InvalidRequest(f"Invalid {what} name {name!r}: use 1-128 letters, digits, '.', '_' or '-'.")
    return name


def check_label(label: str) -> str:
    if not isinstance(label, str) or not LABEL_PATTERN.match(label):
        raise InvalidRequest(f"Invalid label {label!r}: use 1-64 letters, digits, '.', '_' or '-'.")
    return label


def parse_ref(ref: str) -> PromptRef:
    """`support-bot`, `support-bot@production` or `support-bot:3`."""
    if not isinstance(ref, str) or not ref:
        raise InvalidRequest("A prompt reference must be a string like 'name@label' or 'name:3'.", param="prompt")
    if "@" in ref:
        name, label = ref.split("@", 1)
        return PromptRef(check_name(name), label=check_label(label))
    if ":" in ref:
        name, number = ref.rsplit(":", 1)
        if not number.isdigit() or int(number) < 1:
            raise InvalidRequest(f"Invalid prompt version in {ref!r}: expected a positive integer.", param="prompt")
        return PromptRef(check_name(name), version=int(number))
    return PromptRef(check_name(ref), label="latest")


def parse_spec(data: Mapping[str, Any] | str) -> dict[str, Any]:
    """A pushed version (YAML text or a mapping) checked and normalised: kind, template, variables, params."""
    if isinstance(data, str):
        try:
            data = yaml.safe_load(data)
        except yaml.YAMLError as exc:
            raise InvalidRequest(f"The prompt file is not valid YAML: {exc}") from None
    if not isinstance(data, Mapping):
        raise InvalidRequest("A prompt must be a mapping with 'messages' (chat) or 'template' (text).")
    allowed = {"messages", "template", "variables", "params", "message", "author", "type", "labels"}
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise InvalidRequest(f"Unknown prompt field(s): {', '.join(unknown)} (allowed: {', '.join(sorted(allowed))}).")
    has_messages, has_text = data.get("messages") is not None, data.get("template") is not None
    if has_messages == has_text:
        raise InvalidRequest("A prompt needs exactly one of 'messages' (a chat template) or 'template' (text).")
    if has_messages:
        kind, template = "chat", _messages(data["messages"])
        sources = [m["content"] for m in template]
    else:
        if not isinstance(data["template"], str):
            raise InvalidRequest("'template' must be a string.", param="template")
        kind, template, sources = "text", data["template"], [data["template"]]
    try:
        used = check_template(sources)
    except TemplateProblem as exc:
        raise InvalidRequest(f"Invalid template: {exc}", code="invalid_template") from None
    declared = data.get("variables")
    if declared is not None:
        if not isinstance(declared, list) or not all(isinstance(v, str) for v in declared):
            raise InvalidRequest("'variables' must be a list of names.", param="variables")
        undeclared = sorted(set(used) - set(declared))
        if undeclared:
            raise InvalidRequest(f"The template uses undeclared variable(s): {', '.join(undeclared)}.")
    params = data.get("params") or {}
    if not isinstance(params, Mapping) or set(params) - PARAMS:
        bad = sorted(set(params) - PARAMS) if isinstance(params, Mapping) else params
        raise InvalidRequest(f"Unsupported prompt params: {bad}; allowed: {', '.join(sorted(PARAMS))}.")
    for field in ("message", "author"):
        if data.get(field) is not None and not isinstance(data[field], str):
            raise InvalidRequest(f"'{field}' must be a string.", param=field)
    return {
        "kind": kind,
        "template": template,
        "variables": sorted(set(declared or used)),
        "params": dict(params),
        "message": data.get("message") or "",
        "author": data.get("author"),
    }


def _messages(raw: Any) -> list[dict[str, str]]:
    if not isinstance(raw, list) or not raw:
        raise InvalidRequest("'messages' must be a non-empty list of {role, content}.", param="messages")
    out = []
    for index, message in enumerate(raw):
        if (
            not isinstance(message, Mapping)
            or message.get("role") not in _ROLES
            or not isinstance(message.get("content"), str)
        ):
            raise InvalidRequest(
                f"messages[{index}] must be {{role: {'|'.join(sorted(_ROLES))}, content: string}}.",
                param=f"messages[{index}]",
            )
        out.append({"role": message["role"], "content": message["content"]})
    return out


def render_version(version: Mapping[str, Any], variables: Mapping[str, Any]) -> list[dict[str, Any]] | str:
    """Render a stored version: a list of messages for chat, a string for text. Errors are InvalidRequest."""
    if not isinstance(variables, Mapping):
        raise InvalidRequest("'variables' must be an object.", param="variables")
    ref = f"{version['name']}:{version['version']}" if "name" in version else "the prompt"
    try:
        if version["kind"] == "chat":
            return render_chat(version["template"], variables)
        return render_text(version["template"], variables)
    except MissingVariables as exc:
        raise InvalidRequest(
            f"Prompt {ref} needs variable(s) that were not given: {', '.join(exc.missing)}.",
            param="variables",
            code="missing_prompt_variables",
        ) from None
    except TemplateProblem as exc:
        raise InvalidRequest(f"Prompt {ref} cannot be rendered: {exc}", code="prompt_render_failed") from None


def _as_text(version: Mapping[str, Any]) -> list[str]:
    shown = {
        "type": version["kind"],
        ("messages" if version["kind"] == "chat" else "template"): version["template"],
        "variables": list(version["variables"]),
        "params": dict(version["params"]),
    }
    return yaml.safe_dump(shown, sort_keys=False, allow_unicode=True, width=1000).splitlines(keepends=True)


def diff_versions(a: Mapping[str, Any], b: Mapping[str, Any]) -> str:
    """A unified diff of two versions (template, variables, params) as YAML text."""
    name_a, name_b = f"{a['name']}:{a['version']}", f"{b['name']}:{b['version']}"
    return "".join(difflib.unified_diff(_as_text(a), _as_text(b), fromfile=name_a, tofile=name_b))


def apply_to_request(
    body: dict[str, Any], endpoint: str, version: Mapping[str, Any], variables: Mapping[str, Any]
) -> dict[str, Any]:
    """The request body with the prompt rendered in: chat messages go before the caller's messages (a text
    template becomes one user message); for /v1/completions a text template becomes `prompt`. The version's
    default params fill only what the caller did not set."""
    rendered = render_version(version, variables)
    out = dict(body)
    if endpoint == "chat.completions":
        messages = rendered if isinstance(rendered, list) else [{"role": "user", "content": rendered}]
        caller = body.get("messages")
        if caller is not None and not isinstance(caller, list):
            raise InvalidRequest("'messages' must be a list.", param="messages")
        out["messages"] = [*messages, *(caller or [])]
    else:
        if isinstance(rendered, list):
            raise InvalidRequest(
                f"Prompt {version['name']}:{version['version']} is a chat template; use /v1/chat/completions.",
                param="prompt",
                code="prompt_kind_mismatch",
            )
        if body.get("prompt") is not None:
            raise InvalidRequest(
                "This deployment renders its bound prompt: send 'variables', not 'prompt'.", param="prompt"
            )
        out["prompt"] = rendered
    for key, value in version["params"].items():
        if key not in out and not (key == "max_tokens" and "max_completion_tokens" in out):
            out[key] = value
    return out
