"""Scorers for structured answers: JSON validity, JSON Schema conformance, numeric closeness."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any, ClassVar

from pydantic import Field, model_validator

from shipyard.evals.base import Score, Scorer, ScorerOptions
from shipyard.jsonanswers import first_violation, parse_json_answer, schema_validator

__all__ = ["JsonSchemaScorer", "JsonValidScorer", "NumericScorer"]

_NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?")


class JsonValidScorer(Scorer):
    """1 if the output is JSON (one code fence allowed), else 0."""

    name: ClassVar[str] = "json_valid"
    needs_expected: ClassVar[bool] = False

    def score(self, output: str, expected: Any, row: Mapping[str, Any]) -> Score:
        ok, _ = parse_json_answer(output)
        return Score(float(ok), None if ok else "not JSON")


class JsonSchemaScorer(Scorer):
    """1 if the output is JSON that conforms to `schema` (JSON Schema 2020-12), with the first error as reason."""

    name: ClassVar[str] = "json_schema"
    needs_expected: ClassVar[bool] = False

    class Options(ScorerOptions):
        json_schema: dict[str, Any] = Field(alias="schema")

        @model_validator(mode="after")
        def _valid(self) -> JsonSchemaScorer.Options:
            schema_validator(self.json_schema)
            return self

    options: Options

    def __init__(self, options: Options) -> None:
        super().__init__(options)
        self._validator = schema_validator(options.json_schema)

    def score(self, output: str, expected: Any, row: Mapping[str, Any]) -> Score:
        ok, value = parse_json_answer(output)
        if not ok:
            return Score(0.0, "not JSON")
        violation = first_violation(self._validator, value)
        return Score(0.0, violation) if violation else Score(1.0)


class NumericScorer(Scorer):
    """1 if the first number in the output is within `abs_tol` + `rel_tol` × |expected| of the expected number."""

    name: ClassVar[str] = "numeric"

    class Options(ScorerOptions):
        abs_tol: float = Field(0.0, ge=0)
        rel_tol: float = Field(1e-6, ge=0)

    options: Options

    def score(self, output: str, expected: Any, row: Mapping[str, Any]) -> Score:
        try:
            target = float(str(expected).replace(",", ""))
        except ValueError:
            return Score(None, f"the expected answer {expected!r} is not a number")
        found = _NUMBER.search(output)
        if found is None:
            return Score(0.0, "no number in the output")
        got = float(found.group().replace(",", ""))
        close = math.isclose(got, target, rel_tol=self.options.rel_tol, abs_tol=self.options.abs_tol)
        return Score(float(close), details={"parsed": got})
