"""The scorer shape: one small class per way of judging an output, found by name.

Built-in scorers are registered under the entry-point group `shipyard.scorers` in pyproject.toml, the same
way a third-party package registers its own. A plain Python function can be a scorer too:

    def my_scorer(output: str, expected: object, row: dict) -> float | bool | Score: ...

named by entry point, or by module path (`my_package.checks:my_scorer`) in a suite file run from the CLI.
Module paths are refused where a suite arrives over the network: importing code named by a request is code
execution.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError

from shipyard.errors import ConfigError

__all__ = [
    "ENTRY_POINT_GROUP",
    "FunctionScorer",
    "Score",
    "Scorer",
    "ScorerOptions",
    "build_scorer",
    "scorer_classes",
]

ENTRY_POINT_GROUP = "shipyard.scorers"


@dataclass(frozen=True, slots=True)
class Score:
    """One scorer's verdict on one output: `value` in [0, 1] unless the scorer says otherwise."""

    value: float | None  # None: the scorer could not score this row (say why in `reason`)
    reason: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, result: float | bool | Score | None) -> Score:
        if isinstance(result, Score):
            return result
        if result is None:
            return cls(None, "the scorer returned nothing")
        return cls(float(result))


class ScorerOptions(BaseModel):
    """A scorer's options as written in a suite file; unknown keys are refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Scorer:
    """Base class of every scorer. `needs_expected`: it compares with the row's expected answer (so it cannot
    score live traffic). Scorers that call a model or a network implement `ascore`; the others `score`."""

    name: ClassVar[str] = ""
    needs_expected: ClassVar[bool] = True
    Options: ClassVar[type[ScorerOptions]] = ScorerOptions

    def __init__(self, options: ScorerOptions) -> None:
        self.options = options

    def score(self, output: str, expected: Any, row: Mapping[str, Any]) -> Score:
        raise NotImplementedError

    async def ascore(self, output: str, expected: Any, row: Mapping[str, Any]) -> Score:
        return self.score(output, expected, row)


class FunctionScorer(Scorer):
    """A plain function (sync or async) as a scorer."""

    def __init__(self, name: str, function: Callable[..., Any], needs_expected: bool = True) -> None:
        super().__init__(ScorerOptions())
        self.label = name
        self.function = function
        self.is_async = inspect.iscoroutinefunction(function)
        self.expects = needs_expected

    def score(self, output: str, expected: Any, row: Mapping[str, Any]) -> Score:
        if self.is_async:
            raise TypeError(f"scorer '{self.label}' is async; call ascore")
        return Score.of(self.function(output, expected, row))

    async def ascore(self, output: str, expected: Any, row: Mapping[str, Any]) -> Score:
        if self.is_async:
            return Score.of(await self.function(output, expected, row))
        return await asyncio.to_thread(self.score, output, expected, row)


@functools.cache
def scorer_classes() -> dict[str, Any]:
    """Every installed scorer by name: Scorer subclasses and plain functions alike, read once."""
    return {point.name: point.load() for point in entry_points(group=ENTRY_POINT_GROUP)}


def build_scorer(name: str, options: Mapping[str, Any] | None = None, *, allow_module_path: bool = False) -> Scorer:
    """A configured scorer from a registered name, or (CLI suites only) a `module:function` path."""
    found = scorer_classes().get(name)
    if found is None and ":" in name:
        if not allow_module_path:
            raise ConfigError(f"scorer '{name}': module paths are only accepted in suites run from the CLI")
        module, _, attribute = name.partition(":")
        try:
            # The operator's own suite file names this module; never reached from a network request.
            found = getattr(importlib.import_module(module), attribute)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(f"scorer '{name}' cannot be imported: {exc}") from None
    if found is None:
        raise ConfigError(f"unknown scorer '{name}'; installed scorers: {', '.join(sorted(scorer_classes()))}")
    if isinstance(found, type) and issubclass(found, Scorer):
        try:
            return found(found.Options.model_validate(dict(options or {})))
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'options'}: {e['msg']}" for e in exc.errors())
            raise ConfigError(f"scorer '{name}': {problems}") from None
    if callable(found):
        if options:
            raise ConfigError(f"scorer '{name}' is a plain function; it takes no options")
        return FunctionScorer(name, found)
    raise ConfigError(f"scorer '{name}' is neither a Scorer class nor a function")
