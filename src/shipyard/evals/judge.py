"""LLM-as-judge: a rubric prompt sent to any deployment, answered with a score and a reason.

The judge's prompt is a chat template: by default Shipyard's own (below); name a registered prompt with
`prompt: "my-judge@production"` to version it in the registry like any other prompt. The template gets
`input`, `output`, `expected` and `rubric`; the judge must answer JSON `{"score": <0..scale>, "reason": "..."}`
(a number after "score" is accepted too). An answer that carries no score is a row the judge could not
score (value None, with the judge's text as the reason), never a silent zero.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any, ClassVar

import httpx
import orjson
from pydantic import Field

from shipyard.evals.base import Score, Scorer, ScorerOptions
from shipyard.registry.templates import render_chat

__all__ = ["DEFAULT_JUDGE_TEMPLATE", "JudgeScorer", "parse_verdict"]

DEFAULT_JUDGE_TEMPLATE: list[dict[str, str]] = [
    {
        "role": "system",
        "content": "You are a strict evaluator. Judge the answer against the rubric. Reply with JSON only: "
        '{"score": <integer from 0 to {{ scale }}>, "reason": "<one sentence>"}',
    },
    {
        "role": "user",
        "content": "Rubric: {{ rubric }}\n\nQuestion:\n{{ input }}\n\n{% if expected %}Reference answer:\n"
        "{{ expected }}\n\n{% endif %}Answer to judge:\n{{ output }}",
    },
]
_SCORE = re.compile(r'"?score"?\s*[:=]\s*"?(-?\d+(?:\.\d+)?)', re.I)
_OBJECT = re.compile(r"\{.*?\}", re.S)


def parse_verdict(text: str, scale: float) -> Score:
    """The judge's answer as a Score in [0, 1] (score / scale), or a None score saying why not."""
    for candidate in _OBJECT.findall(text):
        try:
            value = orjson.loads(candidate)
        except orjson.JSONDecodeError:
            continue
        if isinstance(value, dict) and isinstance(value.get("score"), int | float | str):
            try:
                raw = float(value["score"])
            except ValueError:
                continue
            return _scaled(raw, scale, str(value.get("reason") or "") or None)
    found = _SCORE.search(text)
    if found:
        return _scaled(float(found.group(1)), scale, text.strip()[:500] or None)
    return Score(None, f"the judge gave no score: {text.strip()[:300]!r}")


def _scaled(raw: float, scale: float, reason: str | None) -> Score:
    if not 0 <= raw <= scale:
        return Score(None, f"the judge's score {raw:g} is outside 0..{scale:g}")
    return Score(raw / scale, reason, {"raw": raw})


class JudgeScorer(Scorer):
    """Asks `deployment` (through a Shipyard gateway or any OpenAI-compatible server) to grade the output."""

    name: ClassVar[str] = "judge"
    needs_expected: ClassVar[bool] = False

    class Options(ScorerOptions):
        deployment: str
        rubric: str = "Is the answer correct, complete and helpful?"
        prompt: str | None = Field(None, description="A registered chat prompt (`name@label`, `name:3`).")
        scale: float = Field(10.0, gt=0)
        base_url: str | None = None  # default: $SHIPYARD_URL, else http://127.0.0.1:8000
        max_tokens: int = Field(96, ge=8)
        timeout: float = Field(120.0, gt=0)

    options: Options

    def __init__(self, options: Options) -> None:
        super().__init__(options)
        self.base_url = (options.base_url or os.environ.get("SHIPYARD_URL") or "http://127.0.0.1:8000").rstrip("/")
        self.prompt_ref: str | None = None  # the registry version used, recorded with the results

    def _template(self) -> list[Mapping[str, Any]]:
        if self.options.prompt is None:
            return DEFAULT_JUDGE_TEMPLATE
        from shipyard.sdk.client import Client

        name, _, rest = self.options.prompt.replace(":", "@:", 1).partition("@")
        client = Client(self.base_url)
        if rest.startswith(":"):
            prompt = client.prompts.get(name, version=int(rest[1:]))
        else:
            prompt = client.prompts.get(name, label=rest or None)
        self.prompt_ref = prompt.ref
        return list(prompt.template)

    async def ascore(self, output: str, expected: Any, row: Mapping[str, Any]) -> Score:
        values = {
            "input": _as_text(row.get("input")),
            "output": output,
            "expected": _as_text(expected) if expected is not None else "",
            "rubric": self.options.rubric,
            "scale": f"{self.options.scale:g}",
        }
        messages = render_chat(self._template(), values)
        body = {
            "model": self.options.deployment,
            "messages": messages,
            "temperature": 0,
            "max_tokens": self.options.max_tokens,
        }
        headers = (
            {"authorization": f"Bearer {os.environ['SHIPYARD_API_KEY']}"} if "SHIPYARD_API_KEY" in os.environ else {}
        )
        async with httpx.AsyncClient(timeout=self.options.timeout) as client:
            response = await client.post(f"{self.base_url}/v1/chat/completions", json=body, headers=headers)
        if response.status_code != 200:
            return Score(None, f"the judge deployment answered HTTP {response.status_code}: {response.text[:300]}")
        text = response.json()["choices"][0]["message"].get("content") or ""
        score = parse_verdict(text, self.options.scale)
        return Score(score.value, score.reason, {**score.details, "judge_prompt": self.prompt_ref or "builtin"})

    def score(self, output: str, expected: Any, row: Mapping[str, Any]) -> Score:
        raise TypeError("the judge scorer calls a model: use ascore")


def _as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(m, dict) for m in value):  # chat messages
        return "\n".join(f"{m.get('role', 'user')}: {m.get('content', '')}" for m in value)
    return orjson.dumps(value).decode()
