"""Online evaluation: rules that score a sample of a deployment's live calls, off the request path.

A rule names a deployment, a sample rate and scorers that need no expected answer (judge, JSON validity,
length, guardrail flags, regex, ...). A background task reads recent gateway calls from the trace store,
keeps those whose (trace, span, rule) hash falls under the rate (so every process picks the same sample),
scores them in a worker thread, and stores one row per call and scorer: on the trace, and as a time series
for rollout gates. Late writes (a trace replayed from the journal) are caught by reading back `lookback`
seconds each pass; a call is never scored twice by one rule.
"""

from __future__ import annotations

import asyncio
import logging
import time
import zlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, field_validator

from shipyard.evals.base import Score, Scorer, build_scorer

if TYPE_CHECKING:
    from shipyard.store.online_evals import OnlineScoreRepo

__all__ = ["GuardrailFlagsScorer", "OnlineEvalConfig", "OnlineEvaluator", "sampled"]

log = logging.getLogger("shipyard.evals.online")


class OnlineEvalConfig(BaseModel):
    """A rule that scores a sample of one deployment's live calls in the background."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$", description="The rule's name (series key).")
    deployment: str = Field(description="The deployment whose calls are sampled.")
    sample_rate: float = Field(0.1, gt=0, le=1, description="Share of calls scored (deterministic by call id).")
    scorers: list[str | dict[str, Any]] = Field(
        min_length=1, description="Scorers that need no expected answer: a name, or {name, options, as}."
    )
    status: Literal["ok", "error", "any"] = Field("ok", description="Which calls: answered ones, failed ones, all.")
    interval: float = Field(10.0, gt=0, description="Seconds between passes.")
    lookback: float = Field(300.0, ge=0, description="Seconds read back each pass, for traces written late.")

    @field_validator("scorers")
    @classmethod
    def _usable_online(cls, value: list[str | dict[str, Any]]) -> list[str | dict[str, Any]]:
        for item in value:
            name, options = (item, {}) if isinstance(item, str) else (item.get("name", ""), item.get("options"))
            scorer = build_scorer(str(name), options)  # registered scorers only: no module paths from config
            if type(scorer).needs_expected:
                raise ValueError(f"scorer '{name}' compares with an expected answer, which live calls do not have")
        return value


def sampled(trace_id: str, span_id: str, rule: str, rate: float) -> bool:
    """Whether this call is in the rule's sample: the same answer in every process and on every pass."""
    return zlib.crc32(f"{trace_id}:{span_id}:{rule}".encode()) / 2**32 < rate


class GuardrailFlagsScorer(Scorer):
    """1 when the call's guardrails found nothing, 0 when they flagged, redacted or blocked something."""

    name: ClassVar[str] = "guardrail_flags"
    needs_expected: ClassVar[bool] = False

    def score(self, output: str, expected: Any, row: Mapping[str, Any]) -> Score:
        findings = row.get("guardrails") or []
        kinds = sorted({f"{f.get('scanner')}:{f.get('kind')}" for f in findings if isinstance(f, dict)})
        return Score(0.0 if kinds else 1.0, ", ".join(kinds) or None)


def _text(value: str | None) -> Any:
    if value is None:
        return None
    try:
        return orjson.loads(value)
    except orjson.JSONDecodeError:
        return value


def _output_text(value: Any) -> str:
    if isinstance(value, dict):
        return str(value.get("content") or "")
    if isinstance(value, list):
        return _output_text(value[0]) if value else ""
    return "" if value is None else str(value)


class _Rule:
    def __init__(self, config: OnlineEvalConfig) -> None:
        self.config = config
        self.scorers: list[tuple[str, Scorer]] = []
        for item in config.scorers:
            spec = {"name": item} if isinstance(item, str) else item
            self.scorers.append((spec.get("as") or spec["name"], build_scorer(spec["name"], spec.get("options"))))
        self.checkpoint: float | None = None
        self.due = 0.0


class OnlineEvaluator:
    """Runs every rule on its interval until stopped; all store and scoring work happens in a worker thread."""

    def __init__(self, rules: list[OnlineEvalConfig], repo: OnlineScoreRepo, batch: int = 200) -> None:
        self.rules = [_Rule(r) for r in rules]
        self.repo = repo
        self.batch = batch
        self.scored = 0

    async def run(self) -> None:
        while True:
            now = time.monotonic()
            for rule in self.rules:
                if now >= rule.due:
                    try:
                        more = await asyncio.to_thread(self.run_once, rule)
                    except Exception:
                        log.exception("online evaluation '%s' failed; retrying in %.0fs", rule.config.name,
                                      rule.config.interval)  # fmt: skip
                        more = False
                    rule.due = now if more else now + rule.config.interval
            await asyncio.sleep(min(1.0, min(r.config.interval for r in self.rules)))

    def run_once(self, rule: _Rule) -> bool:
        """One pass over recent calls; True when a full batch came back (so more may be waiting)."""
        config = rule.config
        if rule.checkpoint is None:
            rule.checkpoint = self.repo.last_time(config.name) or time.time() - config.lookback
        since = rule.checkpoint - config.lookback
        calls = self.repo.candidates(config.deployment, since, self.batch)
        picked = [c for c in calls if sampled(c["trace_id"], c["span_id"], config.name, config.sample_rate)
                  and (config.status == "any" or c["status"] == config.status)]  # fmt: skip
        done = self.repo.scored(config.name, [(c["trace_id"], c["span_id"]) for c in picked])
        rows = []
        for call in picked:
            if (call["trace_id"], call["span_id"]) not in done:
                rows.extend(self._score(rule, call))
        if rows:
            self.scored += self.repo.save(rows)
        if calls:
            rule.checkpoint = max(rule.checkpoint, calls[-1]["start_time"])
        return len(calls) == self.batch and calls[-1]["start_time"] > since

    def _score(self, rule: _Rule, call: Mapping[str, Any]) -> list[dict[str, Any]]:
        attributes = call.get("attributes") or {}
        row = {"input": _text(call.get("input")), "metadata": call.get("meta"),
               "guardrails": attributes.get("guardrails") if isinstance(attributes, dict) else None}  # fmt: skip
        output = _output_text(_text(call.get("output")))
        out = []
        for key, scorer in rule.scorers:
            try:
                score = asyncio.run(scorer.ascore(output, None, row))
            except (ValueError, TypeError, KeyError, OSError) as exc:
                score = Score(None, f"the scorer failed: {type(exc).__name__}: {exc}")
            out.append({"trace_id": call["trace_id"], "span_id": call["span_id"], "rule": rule.config.name,
                        "scorer": key, "deployment": rule.config.deployment, "span_time": call["start_time"],
                        "scored_at": time.time(), "value": score.value, "reason": score.reason,
                        "details": score.details or None})  # fmt: skip
        return out
