"""Prompt templates: parsed, checked and rendered in Jinja2's immutable sandbox. Pure functions, no I/O.

A template may only read the variables it is given. The sandbox refuses attributes that start with `_` (so
`''.__class__.__mro__` and `lipsum.__globals__` fail), every global (`lipsum`, `cycler`, `joiner`, `namespace`,
`range`, `dict`) is removed, mutating methods of lists and dicts are refused, and `*` / `**` are bounded so
`'a' * 10**10` cannot exhaust memory. A missing variable is an error that names every missing variable.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Iterable, Mapping
from functools import lru_cache
from typing import Any

from jinja2 import StrictUndefined, TemplateError, TemplateSyntaxError, meta, nodes
from jinja2.exceptions import SecurityError, UndefinedError
from jinja2.sandbox import ImmutableSandboxedEnvironment

__all__ = [
    "MAX_OUTPUT_CHARS",
    "TemplateProblem",
    "MissingVariables",
    "check_template",
    "render_chat",
    "render_text",
    "template_variables",
]

MAX_OUTPUT_CHARS = 1_000_000
_MAX_REPEAT = 100_000  # longest string/list a `*` may build
_MAX_POWER = 1_000_000  # largest result of `**`


class TemplateProblem(ValueError):
    """A template cannot be parsed or rendered (syntax error, refused operation, output too large)."""


class MissingVariables(TemplateProblem):
    """Variables the template uses were not given."""

    def __init__(self, missing: Iterable[str]) -> None:
        self.missing = sorted(set(missing))
        super().__init__("missing template variable(s): " + ", ".join(self.missing))


class _Sandbox(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context: Any, operator_: str, left: Any, right: Any) -> Any:
        if operator_ == "*":
            for seq, count in ((left, right), (right, left)):
                if isinstance(seq, str | list | tuple) and isinstance(count, int) and len(seq) * count > _MAX_REPEAT:
                    raise SecurityError(f"'*' would build a sequence longer than {_MAX_REPEAT}")
            return operator.mul(left, right)
        if operator_ == "**":
            numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (left, right))
            if numbers and abs(left) > 1 and right > 0 and right * math.log10(abs(left)) > math.log10(_MAX_POWER):
                raise SecurityError(f"'**' result would exceed {_MAX_POWER}")
            return operator.pow(left, right)
        return super().call_binop(context, operator_, left, right)


@lru_cache(maxsize=1)
def _env() -> _Sandbox:
    env = _Sandbox(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True)
    env.globals.clear()  # no lipsum, cycler, joiner, namespace, range, dict
    return env


def _parse(source: str) -> nodes.Template:
    try:
        return _env().parse(source)
    except TemplateSyntaxError as exc:
        raise TemplateProblem(f"template syntax error on line {exc.lineno}: {exc.message}") from None


def template_variables(source: str) -> frozenset[str]:
    """The variables a template reads (undeclared names); also checks its syntax. Cached per source: the gateway
    renders the same few templates over and over."""
    return _variables(source)


@lru_cache(maxsize=512)
def _variables(source: str) -> frozenset[str]:
    return frozenset(meta.find_undeclared_variables(_parse(source)))


def check_template(sources: Iterable[str]) -> list[str]:
    """Parse every template; return the sorted union of the variables they use."""
    found: set[str] = set()
    for source in sources:
        found |= template_variables(source)
    return sorted(found)


@lru_cache(maxsize=512)
def _compiled(source: str) -> Any:
    try:
        return _env().from_string(source)
    except TemplateSyntaxError as exc:
        raise TemplateProblem(f"template syntax error on line {exc.lineno}: {exc.message}") from None


def render_text(source: str, variables: Mapping[str, Any]) -> str:
    """Render one template with exactly these variables; missing ones are named in the error."""
    missing = template_variables(source) - set(variables)
    if missing:
        raise MissingVariables(missing)
    try:
        out = _compiled(source).render(dict(variables))
    except SecurityError as exc:
        raise TemplateProblem(f"refused by the template sandbox: {exc}") from None
    except UndefinedError as exc:  # e.g. a missing key inside a given variable: {{ user.name }}
        raise TemplateProblem(f"undefined value in template: {exc.message}") from None
    except TemplateError as exc:
        raise TemplateProblem(f"template error: {exc}") from None
    except (TypeError, ValueError, ArithmeticError, OverflowError) as exc:
        raise TemplateProblem(f"template error: {exc}") from None
    if len(out) > MAX_OUTPUT_CHARS:
        raise TemplateProblem(f"rendered template is longer than {MAX_OUTPUT_CHARS} characters")
    return out


def render_chat(messages: list[Mapping[str, Any]], variables: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Render each message's content; every missing variable of every message is named at once."""
    missing: set[str] = set()
    for message in messages:
        missing |= template_variables(str(message.get("content", ""))) - set(variables)
    if missing:
        raise MissingVariables(missing)
    rendered = []
    for message in messages:
        out = dict(message)
        out["content"] = render_text(str(message.get("content", "")), variables)
        rendered.append(out)
    return rendered
