"""Operator-defined rules: banned terms and topics, output JSON Schema, length limits."""

from __future__ import annotations

import re
from typing import Any, ClassVar

from pydantic import Field, model_validator

from shipyard.guardrails.base import Finding, Scanner, ScannerOptions
from shipyard.jsonanswers import first_violation, parse_json_answer, schema_validator

__all__ = ["BannedTermsScanner", "JsonSchemaScanner", "LengthScanner"]


class BannedTermsScanner(Scanner):
    """Whole-word, case-insensitive matches of `terms`, and of the keywords of each named topic in `topics`
    (the finding's kind is the topic's name)."""

    name: ClassVar[str] = "banned_terms"

    class Options(ScannerOptions):
        terms: list[str] = Field(default_factory=list)
        topics: dict[str, list[str]] = Field(default_factory=dict)

        @model_validator(mode="after")
        def _something(self) -> BannedTermsScanner.Options:
            if not self.terms and not any(self.topics.values()):
                raise ValueError("give at least one term or topic keyword")
            return self

    options: Options

    def __init__(self, options: Options) -> None:
        super().__init__(options)
        groups = [("term", options.terms), *options.topics.items()]
        self._patterns = [
            (
                kind,
                re.compile(
                    r"(?<!\w)(?:" + "|".join(re.escape(w) for w in sorted(words, key=len)[::-1]) + r")(?!\w)", re.I
                ),
            )
            for kind, words in groups
            if words
        ]

    def scan(self, text: str) -> list[Finding]:
        found = [self.finding(kind, m.start(), m.end()) for kind, p in self._patterns for m in p.finditer(text)]
        found.sort(key=lambda f: f.start)
        return found


class JsonSchemaScanner(Scanner):
    """The whole text must be JSON (a ```json fence around it is allowed) that conforms to `schema`."""

    name: ClassVar[str] = "json_schema"
    spans: ClassVar[bool] = False

    class Options(ScannerOptions):
        json_schema: dict[str, Any] = Field(alias="schema")

        @model_validator(mode="after")
        def _valid_schema(self) -> JsonSchemaScanner.Options:
            schema_validator(self.json_schema)
            return self

    options: Options

    def __init__(self, options: Options) -> None:
        super().__init__(options)
        self._validator = schema_validator(options.json_schema)

    def scan(self, text: str) -> list[Finding]:
        ok, value = parse_json_answer(text)
        if not ok:
            return [self.finding("invalid_json", 0, len(text))]
        if first_violation(self._validator, value) is not None:
            return [self.finding("schema_violation", 0, len(text))]
        return []


class LengthScanner(Scanner):
    """Text longer than `max_chars` characters (or `max_words` words)."""

    name: ClassVar[str] = "length"
    spans: ClassVar[bool] = False

    class Options(ScannerOptions):
        max_chars: int | None = Field(None, gt=0)
        max_words: int | None = Field(None, gt=0)

    options: Options

    def scan(self, text: str) -> list[Finding]:
        limit = self.options
        if limit.max_chars is not None and len(text) > limit.max_chars:
            return [self.finding("too_long", limit.max_chars, len(text))]
        if limit.max_words is not None and len(text.split()) > limit.max_words:
            return [self.finding("too_long", 0, len(text))]
        return []
