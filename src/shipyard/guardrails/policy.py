"""Guardrail policies: which scanners a deployment runs on its input and output, and what each finding does.

Actions:
    block   input: the request is refused (400 naming the scanner); output: the answer ends with
            `finish_reason: "content_filter"` (a stream is cut there and the engine stops).
    redact  the matched text becomes `[REDACTED_<KIND>]` (input: before the engine sees it).
    mask    input only: the matched text becomes a placeholder such as `[EMAIL_1]`; the engine never sees the
            original, and the placeholders are turned back into the originals in the answer.
    flag    nothing changes; the finding is recorded with the call.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from shipyard.errors import InvalidRequest
from shipyard.guardrails.base import Finding, Scanner, build_scanner

__all__ = ["GuardRule", "GuardrailBlocked", "GuardrailsConfig", "Masks", "Policy", "TextVerdict", "rewrite"]

Action = Literal["block", "redact", "mask", "flag"]


class GuardRule(BaseModel):
    """One scanner, where it runs and what its findings do."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    scanner: str = Field(description="Scanner name: pii, secrets, injection, toxicity, banned_terms, ...")
    side: Literal["input", "output", "both"] = Field("both", description="Run on the request, the answer, or both.")
    action: Action = Field("block", description="block, redact, mask (input only) or flag.")
    options: dict[str, Any] = Field(default_factory=dict, description="The scanner's own options.")

    @model_validator(mode="after")
    def _consistent(self) -> GuardRule:
        if self.action == "mask" and self.side != "input":
            raise ValueError("action 'mask' applies to the input only (set side: input)")
        scanner = build_scanner(self.scanner, self.options)  # unknown scanner or bad options: a clear error now
        if self.action in ("redact", "mask") and not scanner.spans:
            raise ValueError(f"scanner '{self.scanner}' judges the whole text; it can block or flag, not redact")
        return self


class GuardrailsConfig(BaseModel):
    """A deployment's guardrail policy."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rules: list[GuardRule] = Field(default_factory=list, description="Applied in order, on every entry point.")
    stream_window: int = Field(
        64,
        ge=0,
        le=4096,
        description="Characters of a streamed answer held back for output scanning, so a finding that spans "
        "chunks is caught before it reaches the client.",
    )


class GuardrailBlocked(InvalidRequest):
    """A request refused by an input guardrail."""


@dataclass
class Masks:
    """Placeholders put into a request by `mask` rules, and the originals they stand for."""

    originals: dict[str, str] = field(default_factory=dict)
    _by_value: dict[tuple[str, str], str] = field(default_factory=dict)

    def placeholder(self, kind: str, value: str) -> str:
        key = (kind, value)
        if key not in self._by_value:
            count = sum(1 for k, _ in self._by_value if k == kind) + 1
            token = f"[{kind.upper()}_{count}]"
            self._by_value[key] = token
            self.originals[token] = value
        return self._by_value[key]

    def restore(self, text: str) -> str:
        if not self.originals or "[" not in text:
            return text
        for token, value in self.originals.items():
            text = text.replace(token, value)
        return text


@dataclass
class TextVerdict:
    """What a policy decided about one text."""

    text: str
    findings: list[tuple[GuardRule, Finding]]
    blocked: tuple[GuardRule, Finding] | None = None


@dataclass
class _Bound:
    rule: GuardRule
    scanner: Scanner


class Policy:
    """A built policy: scanners instantiated once, split into input and output rules."""

    def __init__(self, config: GuardrailsConfig) -> None:
        self.config = config
        bound = [_Bound(rule, build_scanner(rule.scanner, rule.options)) for rule in config.rules]
        self.input = [b for b in bound if b.rule.side in ("input", "both")]
        self.output = [b for b in bound if b.rule.side in ("output", "both")]

    def check_text(self, text: str, side: Literal["input", "output"], masks: Masks | None = None) -> TextVerdict:
        """Run one side's rules over `text`: the first block wins; redactions and masks are applied together."""
        found: list[tuple[GuardRule, Finding]] = []
        edits: list[tuple[Finding, Action]] = []
        for item in self.input if side == "input" else self.output:
            for finding in item.scanner.scan(text):
                found.append((item.rule, finding))
                if item.rule.action == "block":
                    return TextVerdict(text, found, (item.rule, finding))
                if item.rule.action in ("redact", "mask"):
                    edits.append((finding, item.rule.action))
        if edits:
            text = rewrite(text, edits, masks)
        return TextVerdict(text, found)


def rewrite(text: str, edits: list[tuple[Finding, Action]], masks: Masks | None) -> str:
    """Replace each finding's span (overlaps: the earliest, then the longest wins) with its redaction or mask."""
    chosen: list[tuple[Finding, Action]] = []
    for finding, action in sorted(edits, key=lambda e: (e[0].start, -(e[0].end - e[0].start))):
        if chosen and finding.start < chosen[-1][0].end:
            continue
        chosen.append((finding, action))
    parts: list[str] = []
    at = 0
    for finding, action in chosen:
        parts.append(text[at : finding.start])
        original = text[finding.start : finding.end]
        if action == "mask" and masks is not None:
            parts.append(masks.placeholder(finding.kind, original))
        else:
            parts.append(f"[REDACTED_{finding.kind.upper()}]")
        at = finding.end
    parts.append(text[at:])
    return "".join(parts)


def blocked_error(rule: GuardRule, finding: Finding, where: str) -> GuardrailBlocked:
    return GuardrailBlocked(
        f"The request was blocked by the '{rule.scanner}' guardrail ({finding.kind}) in {where}.",
        param=where.split("[", 1)[0] if where.startswith(("messages", "prompt")) else None,
        code="guardrail_blocked",
    )
