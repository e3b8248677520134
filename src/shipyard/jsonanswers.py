"""Model answers read as JSON and checked against a JSON Schema (2020-12).

One implementation for the `json_schema` guardrail and the `json_valid` / `json_schema` scorers, so that a
deployment's policy and its evaluations accept exactly the same answers.
"""

from __future__ import annotations

import re
from typing import Any

import jsonschema
import orjson

__all__ = ["first_violation", "parse_json_answer", "schema_validator"]

_FENCE = re.compile(r"^```[a-zA-Z0-9]*\n(.*?)\n?```$", re.S)


def parse_json_answer(output: str) -> tuple[bool, Any]:
    """(True, value) if the answer is JSON, allowing one Markdown code fence around it."""
    text = output.strip()
    fenced = _FENCE.match(text)
    if fenced:
        text = fenced.group(1)
    try:
        return True, orjson.loads(text)
    except orjson.JSONDecodeError:
        return False, None


def schema_validator(schema: dict[str, Any]) -> jsonschema.Draft202012Validator:
    """A validator for `schema`; ValueError naming the problem if it is not a valid JSON Schema."""
    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise ValueError(f"not a valid JSON Schema: {exc.message}") from None
    return jsonschema.Draft202012Validator(schema)


def first_violation(validator: jsonschema.Draft202012Validator, value: Any) -> str | None:
    """`where: message` of the first way `value` breaks the schema, or None if it conforms."""
    error = next(validator.iter_errors(value), None)
    if error is None:
        return None
    return f"{'/'.join(map(str, error.absolute_path)) or '(root)'}: {error.message}"
