"""Traces stored with personal data masked (`tracing.mask_pii`).

Runs in the trace writer's process, inside its converter (`SpanMaker`): a request only hands its finished call
to the writer, so masking adds nothing to the request path and the caller gets the answer unchanged. The span
fields that carry content (`input`, `output`, `user`, `error`) go through the `pii` guardrail scanner; matches become
`[REDACTED_<KIND>]`. Input and output are JSON texts: they are parsed and every string inside is masked, so a
replacement never lands inside a JSON escape. Gateway calls and SDK/OTLP spans are masked alike.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson

from shipyard.guardrails.base import build_scanner
from shipyard.guardrails.policy import rewrite

__all__ = ["PiiMasker"]

_JSON_FIELDS = ("input", "output")
_TEXT_FIELDS = ("user", "error")  # an upstream's error message can quote the request


class PiiMasker:
    """Replaces personal data in span rows; built once per writer process, used by its writer thread only."""

    def __init__(self, entities: Iterable[str] | None = None) -> None:
        options = {"entities": list(entities)} if entities is not None else {}
        self._scanner = build_scanner("pii", options)

    def text(self, text: str) -> str:
        findings = self._scanner.scan(text)
        if not findings:
            return text
        return rewrite(text, [(finding, "redact") for finding in findings], None)

    def value(self, value: Any) -> Any:
        """A JSON value with every string in it (keys excepted) masked."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, list):
            return [self.value(item) for item in value]
        if isinstance(value, dict):
            return {key: self.value(item) for key, item in value.items()}
        return value

    def json_text(self, text: str) -> str:
        try:
            parsed = orjson.loads(text)
        except orjson.JSONDecodeError:
            return self.text(text)  # a span whose content is plain text
        return orjson.dumps(self.value(parsed)).decode()

    def rows(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The same rows with their content masked (rows are changed in place and returned)."""
        for row in rows:
            for field in _JSON_FIELDS:
                content = row.get(field)
                if isinstance(content, str) and content:
                    row[field] = self.json_text(content)
            for field in _TEXT_FIELDS:
                text = row.get(field)
                if isinstance(text, str) and text:
                    row[field] = self.text(text)
        return rows
