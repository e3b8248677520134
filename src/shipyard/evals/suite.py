"""Suite files: what an experiment runs (dataset × target × scorers × run parameters), and its gates."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from shipyard.errors import ConfigError

__all__ = ["Gate", "ScorerSpec", "Suite", "TargetSpec", "load_suite", "parse_gate"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class ScorerSpec(_Strict):
    name: str = Field(description="A registered scorer, or `module:function` in a suite run from the CLI.")
    options: dict[str, Any] = Field(default_factory=dict)
    label: str | None = Field(None, alias="as", description="The name results are reported under (default: name).")

    @property
    def key(self) -> str:
        return self.label or self.name.rsplit(":", 1)[-1]


class TargetSpec(_Strict):
    deployment: str = Field(description="The deployment each row is sent to, through the gateway.")
    prompt: str | None = Field(None, description="A registered prompt (`name@label`, `name:3`); rows give variables.")
    params: dict[str, Any] = Field(default_factory=dict, description="Request parameters: max_tokens, temperature...")
    endpoint: Literal["chat", "completions"] = "chat"


class Suite(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
    dataset: str = Field(description="A registry dataset: `name` (newest version) or `name:3`.")
    target: TargetSpec
    scorers: list[ScorerSpec] = Field(min_length=1)
    concurrency: int = Field(8, ge=1, le=256)
    retries: int = Field(2, ge=0, le=10, description="Retries of a row on 429, 5xx, timeouts and connection errors.")
    timeout: float = Field(300.0, gt=0, description="Seconds one row's request may take.")
    limit: int | None = Field(None, ge=1, description="Run only the first N rows.")
    gates: list[str] = Field(default_factory=list)

    @field_validator("scorers", mode="before")
    @classmethod
    def _short_forms(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [{"name": item} if isinstance(item, str) else item for item in value]
        return value

    @field_validator("gates")
    @classmethod
    def _gates_parse(cls, value: list[str]) -> list[str]:
        for gate in value:
            parse_gate(gate)
        return value

    def dataset_ref(self) -> tuple[str, int | None]:
        name, _, version = self.dataset.partition(":")
        return name, int(version) if version else None


def load_suite(path: str | Path) -> Suite:
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"suite file {file} does not exist")
    try:
        raw = yaml.safe_load(file.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"suite file {file} is not valid YAML: {exc}") from None
    try:
        return Suite.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or '(top)'}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"invalid suite {file}: {problems}") from None


_GATE = re.compile(
    r"^\s*(?P<metric>[A-Za-z0-9_.:-]+?)\.(?P<stat>mean|low|high|pass_rate|gap|gap_high|error_rate|p50_latency_ms|p95_latency_ms)"
    r"\s*(?P<op>>=|<=|>|<|==)\s*(?P<baseline>baseline\s*(?P<sign>[-+])\s*)?(?P<value>-?\d+(?:\.\d+)?)\s*$"
)


class Gate(_Strict):
    text: str
    metric: str  # a scorer key, or "run" for run-wide statistics
    stat: str
    op: str
    value: float
    relative: bool  # compared with the baseline experiment's figure plus/minus value

    def threshold(self, baseline: float | None) -> float:
        if not self.relative:
            return self.value
        if baseline is None:
            raise ConfigError(f"gate '{self.text}' compares with a baseline; pass --baseline EXPERIMENT")
        return baseline + self.value

    def holds(self, actual: float, threshold: float) -> bool:
        return {">=": actual >= threshold, "<=": actual <= threshold, ">": actual > threshold,
                "<": actual < threshold, "==": actual == threshold}[self.op]  # fmt: skip


def parse_gate(text: str) -> Gate:
    """`exact_match.mean>=0.8`, `judge.mean>=baseline-0.05`, `run.error_rate<=0.01`."""
    match = _GATE.match(text)
    if match is None:
        raise ConfigError(
            f"gate {text!r} is not of the form SCORER.STAT OP NUMBER or SCORER.STAT OP baseline±NUMBER "
            "(STAT: mean, low, high, pass_rate, and gap, gap_high for probes; run.error_rate, run.p50_latency_ms, "
            "run.p95_latency_ms)"
        )
    value = float(match["value"])
    if match["sign"] == "-":
        value = -value
    return Gate(text=text, metric=match["metric"], stat=match["stat"], op=match["op"], value=value,
                relative=match["baseline"] is not None)  # fmt: skip
