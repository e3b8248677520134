"""The scanner shape: one small class per detector, found by name through entry points.

A scanner looks at one text and returns findings: spans of that text with a kind and a score.
Built-in scanners are registered in pyproject.toml under the entry-point group `shipyard.scanners`,
exactly as a third-party package registers its own:

    [project.entry-points."shipyard.scanners"]
    my_scanner = "my_package.module:MyScanner"
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError

from shipyard.errors import ConfigError

__all__ = ["ENTRY_POINT_GROUP", "Finding", "Scanner", "ScannerOptions", "build_scanner", "scanner_classes"]

ENTRY_POINT_GROUP = "shipyard.scanners"


@dataclass(frozen=True, slots=True)
class Finding:
    """One thing a scanner found: `text[start:end]` is of `kind` (e.g. "email", "aws_access_key")."""

    scanner: str
    kind: str
    start: int
    end: int
    score: float = 1.0

    def describe(self) -> dict[str, Any]:
        """A record safe to store: never the matched text itself."""
        return {"scanner": self.scanner, "kind": self.kind, "start": self.start, "end": self.end, "score": self.score}


class ScannerOptions(BaseModel):
    """Options of a scanner, as written under `options:` in a guardrail rule. Unknown keys are refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Scanner:
    """Base class of every scanner. Subclasses set `name`, `Options`, and implement `scan`.

    `spans` says whether findings mark the offending text itself (so it can be redacted or masked) or
    judge the whole text (JSON Schema, length): a rule may only redact or mask with a span scanner.
    """

    name: ClassVar[str] = ""
    spans: ClassVar[bool] = True
    Options: ClassVar[type[ScannerOptions]] = ScannerOptions

    def __init__(self, options: ScannerOptions) -> None:
        self.options = options

    def scan(self, text: str) -> list[Finding]:
        raise NotImplementedError

    def finding(self, kind: str, start: int, end: int, score: float = 1.0) -> Finding:
        return Finding(self.name, kind, start, end, score)


@functools.cache
def scanner_classes() -> dict[str, type[Scanner]]:
    """Every installed scanner class by name (built-ins and third-party alike), read once."""
    found: dict[str, type[Scanner]] = {}
    for point in entry_points(group=ENTRY_POINT_GROUP):
        cls = point.load()
        if not (isinstance(cls, type) and issubclass(cls, Scanner)):
            raise ConfigError(f"entry point '{point.name}' ({point.value}) is not a shipyard Scanner class")
        if cls.name != point.name:
            raise ConfigError(f"entry point '{point.name}' names a scanner whose `name` is '{cls.name}'")
        found[point.name] = cls
    return found


def build_scanner(name: str, options: dict[str, Any] | None = None) -> Scanner:
    """A configured scanner; unknown names and bad options are configuration errors that say what to fix."""
    classes = scanner_classes()
    cls = classes.get(name)
    if cls is None:
        raise ConfigError(f"unknown guardrail scanner '{name}'; installed scanners: {', '.join(sorted(classes))}")
    try:
        parsed = cls.Options.model_validate(options or {})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'options'}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"guardrail scanner '{name}': {problems}") from None
    return cls(parsed)
