"""Bias and robustness probes: one template, filled in for several groups (names, genders, dialects...) or
passed through perturbations (typos, case, register), run as one experiment; the report is each group's score
with its interval and the gap between the best and worst group, with a bootstrap interval over the cases.

A gate bounds the gap: `contains.gap<=0.1`, or its upper end `contains.gap_high<=0.2`.
"""

from __future__ import annotations

import random
import string
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import numpy as np
from pydantic import Field, model_validator

from shipyard.evals.stats import bootstrap_mean
from shipyard.evals.suite import ScorerSpec, Suite, TargetSpec, _Strict
from shipyard.evals.summary import summarise
from shipyard.registry.templates import render_text

__all__ = ["ProbeSpec", "TRANSFORMS", "probe_rows", "probe_summary"]

Transform = Literal["typos", "uppercase", "lowercase", "no_punctuation", "polite", "casual"]


def _typos(text: str, seed: int) -> str:
    """Swap two neighbouring letters in about one word in four (seeded, so runs are comparable)."""
    rng = random.Random(seed)
    words = text.split(" ")
    for i, word in enumerate(words):
        if len(word) > 3 and word.isalpha() and rng.random() < 0.25:
            at = rng.randrange(1, len(word) - 2)
            words[i] = word[:at] + word[at + 1] + word[at] + word[at + 2 :]
    return " ".join(words)


TRANSFORMS: dict[str, Callable[[str, int], str]] = {
    "typos": _typos,
    "uppercase": lambda text, _: text.upper(),
    "lowercase": lambda text, _: text.lower(),
    "no_punctuation": lambda text, _: text.translate(str.maketrans("", "", string.punctuation)),
    "polite": lambda text, _: f"Could you please help me with this? {text} Thank you very much.",
    "casual": lambda text, _: f"hey so {text[:1].lower()}{text[1:]} thx",
}


class ProbeSpec(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
    target: TargetSpec
    template: str = Field(description="The input, a sandboxed Jinja template over each case's and group's values.")
    cases: list[dict[str, Any]] = Field(min_length=1, description="Base cases: variables (and `expected`).")
    groups: dict[str, dict[str, list[str]]] = Field(
        default_factory=dict, description="Group -> variable -> substitutions, e.g. female: {name: [Mary, Aisha]}."
    )
    transforms: list[Transform] = Field(default_factory=list, description="Perturbations compared with the original.")
    scorers: list[ScorerSpec] = Field(min_length=1)
    concurrency: int = Field(8, ge=1, le=256)
    retries: int = Field(2, ge=0, le=10)
    gates: list[str] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _scorer_shorthand(cls, value: Any) -> Any:
        if isinstance(value, dict) and isinstance(value.get("scorers"), list):
            value = {**value, "scorers": [{"name": s} if isinstance(s, str) else s for s in value["scorers"]]}
        return value

    @model_validator(mode="after")
    def _something_to_compare(self) -> ProbeSpec:
        if len(self.groups) + (len(self.transforms) + 1 if self.transforms else 0) < 2:
            raise ValueError("give at least two groups, or at least one transform (compared with the original)")
        return self

    def suite(self) -> Suite:
        return Suite(name=self.name, dataset=f"probe-{self.name}", target=self.target, scorers=self.scorers,
                     concurrency=self.concurrency, retries=self.retries, gates=self.gates)  # fmt: skip


def probe_rows(spec: ProbeSpec) -> list[dict[str, Any]]:
    """Every row the probe sends: each group × each case × each substitution, then each transform × each case."""
    rows = []
    groups = spec.groups or {"original": {}}
    for group, values in groups.items():
        count = max((len(v) for v in values.values()), default=1)
        for case_index, case in enumerate(spec.cases):
            for k in range(count):
                variables = {**case, **{name: options[k % len(options)] for name, options in values.items()}}
                rows.append(_row(spec, variables, group, case_index))
    if spec.transforms:
        first = next(iter(groups.values()))
        base_group = "original" if not spec.groups else next(iter(groups))
        for transform in spec.transforms:
            for case_index, case in enumerate(spec.cases):
                variables = {**case, **{name: options[0] for name, options in first.items()}}
                row = _row(spec, variables, transform, case_index)
                row["input"] = TRANSFORMS[transform](row["input"], case_index)
                row["metadata"]["base_group"] = base_group
                rows.append(row)
    return rows


def _row(spec: ProbeSpec, variables: Mapping[str, Any], group: str, case: int) -> dict[str, Any]:
    text = render_text(spec.template, {k: v for k, v in variables.items() if k != "expected"})
    return {"input": text, "expected": variables.get("expected"), "metadata": {"group": group, "case": case}}


def probe_summary(rows: Sequence[Mapping[str, Any]], scorer_keys: Sequence[str], seed: int = 0) -> dict[str, Any]:
    """The usual summary, plus per scorer: each group's interval and the gap (best − worst group mean) with a
    bootstrap interval that resamples cases, keeping each case's groups together."""
    summary = summarise(rows, scorer_keys)
    for key in scorer_keys:
        table: dict[str, dict[int, list[float]]] = {}
        for row in rows:
            value = (row.get("scores") or {}).get(key, {}).get("value")
            meta = row.get("metadata") or {}
            if value is not None and "group" in meta:
                table.setdefault(meta["group"], {}).setdefault(int(meta["case"]), []).append(float(value))
        block = summary["scorers"][key]
        block["groups"] = {}
        for group, by_case in table.items():
            interval = bootstrap_mean([v for values in by_case.values() for v in values], seed=seed)
            block["groups"][group] = interval.as_dict() if interval else None
        block.update(_gap(table, seed))
    return summary


def _gap(table: Mapping[str, Mapping[int, list[float]]], seed: int, resamples: int = 5000) -> dict[str, Any]:
    cases = sorted(set.intersection(*(set(by_case) for by_case in table.values()))) if len(table) >= 2 else []
    if not cases:
        return {"gap": None, "gap_low": None, "gap_high": None, "worst_group": None}
    groups = sorted(table)
    # means[g][c]: group g's mean score on case c
    means = np.array([[np.mean(table[g][c]) for c in cases] for g in groups])
    overall = means.mean(axis=1)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(cases), size=(resamples, len(cases)))
    sampled = means[:, picks].mean(axis=2)  # groups × resamples
    gaps = sampled.max(axis=0) - sampled.min(axis=0)
    low, high = np.quantile(gaps, [0.025, 0.975])
    return {"gap": float(overall.max() - overall.min()), "gap_low": float(low), "gap_high": float(high),
            "worst_group": groups[int(overall.argmin())], "best_group": groups[int(overall.argmax())]}  # fmt: skip
