"""The experiment runner: every dataset row through the target (a deployment, optionally a registered prompt),
scored by every scorer, with bounded concurrency, retries on transient errors, and resumable results.

Results go to a sink: the server's REST API (`ApiSink`, what the CLI and SDK use) or the store directly
(`StoreSink`). Finished rows are saved every few seconds, so an interrupted run resumes (`resume=ID`)
without redoing them. Each row's request carries a W3C `traceparent` whose trace id is stored with the row,
so the row links to the trace the gateway recorded.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import httpx

from shipyard.errors import ConfigError
from shipyard.evals.base import Score, Scorer, build_scorer
from shipyard.evals.suite import Suite
from shipyard.evals.summary import summarise

__all__ = ["ApiSink", "RowResult", "Sink", "StoreSink", "request_body", "run_experiment"]

_TRANSIENT = {408, 409, 429, 500, 502, 503, 504}
SAVE_EVERY = 2.0  # seconds between saves of finished rows


@dataclass
class RowResult:
    index: int
    input: Any
    expected: Any
    metadata: Any
    status: str = "ok"  # ok | error
    output: str | None = None
    error: str | None = None
    latency_ms: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cost: float | None = None
    scores: dict[str, dict[str, Any]] = field(default_factory=dict)
    trace_id: str | None = None


class Sink(Protocol):
    def create(self, experiment: Mapping[str, Any]) -> None: ...
    def get(self, experiment_id: str) -> dict[str, Any] | None: ...
    def rows(self, experiment_id: str) -> list[dict[str, Any]]: ...
    def save_rows(self, experiment_id: str, rows: Sequence[Mapping[str, Any]]) -> None: ...
    def finish(self, experiment_id: str, status: str, summary: Mapping[str, Any]) -> None: ...
    def costs(self, trace_ids: Sequence[str]) -> dict[str, float | None]: ...


def _call_cost(spans: Sequence[Mapping[str, Any]]) -> tuple[bool, float | None]:
    """(found, cost) of the gateway's call span among a trace's spans (nested under "children" or flat)."""
    for span in spans:
        if span.get("kind") == "llm" and span.get("source") == "gateway":
            return True, span.get("cost")
        found, cost = _call_cost(span.get("children") or [])
        if found:
            return True, cost
    return False, None


class StoreSink:
    """Results straight into a store (server-side runs, tests)."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.repo = store.experiments

    def create(self, experiment: Mapping[str, Any]) -> None:
        self.repo.create(experiment)

    def get(self, experiment_id: str) -> dict[str, Any] | None:
        return self.repo.get(experiment_id)

    def rows(self, experiment_id: str) -> list[dict[str, Any]]:
        return self.repo.rows(experiment_id)

    def save_rows(self, experiment_id: str, rows: Sequence[Mapping[str, Any]]) -> None:
        self.repo.save_rows(experiment_id, rows)

    def finish(self, experiment_id: str, status: str, summary: Mapping[str, Any]) -> None:
        self.repo.finish(experiment_id, status, summary)

    def costs(self, trace_ids: Sequence[str]) -> dict[str, float | None]:
        out = {}
        for trace_id in trace_ids:
            found, cost = _call_cost(self.store.traces.get(trace_id)[1])
            if found:
                out[trace_id] = cost
        return out


class ApiSink:
    """Results through a Shipyard server's REST API (/api/v1/experiments)."""

    def __init__(self, client: Any) -> None:
        self.client = client

    def create(self, experiment: Mapping[str, Any]) -> None:
        self.client.request("POST", "/experiments", json=dict(experiment))

    def get(self, experiment_id: str) -> dict[str, Any] | None:
        from shipyard.errors import NotFound

        try:
            return self.client.request("GET", f"/experiments/{experiment_id}")
        except NotFound:
            return None

    def rows(self, experiment_id: str) -> list[dict[str, Any]]:
        return self.client.request("GET", f"/experiments/{experiment_id}/rows")["data"]

    def save_rows(self, experiment_id: str, rows: Sequence[Mapping[str, Any]]) -> None:
        self.client.request("POST", f"/experiments/{experiment_id}/rows", json={"rows": list(rows)})

    def finish(self, experiment_id: str, status: str, summary: Mapping[str, Any]) -> None:
        self.client.request("POST", f"/experiments/{experiment_id}/finish", json={"status": status, "summary": summary})

    def costs(self, trace_ids: Sequence[str]) -> dict[str, float | None]:
        from shipyard.errors import NotFound

        out = {}
        for trace_id in trace_ids:
            try:
                found, cost = _call_cost(self.client.request("GET", f"/traces/{trace_id}")["spans"])
            except NotFound:
                continue
            if found:
                out[trace_id] = cost
        return out


def request_body(suite: Suite, row: Mapping[str, Any], experiment_id: str, index: int) -> dict[str, Any]:
    """The gateway request for one row (pure: tested without HTTP)."""
    target = suite.target
    value = row.get("input")
    body: dict[str, Any] = {"model": target.deployment, **target.params}
    body["metadata"] = {"shipyard_experiment": experiment_id, "shipyard_row": str(index)}
    if target.prompt is not None:
        body["prompt"] = target.prompt
        body["variables"] = value if isinstance(value, dict) else {"input": value}
        return body
    if target.endpoint == "completions":
        body["prompt"] = value if isinstance(value, str) else str(value)
    elif isinstance(value, list):
        body["messages"] = value
    elif isinstance(value, dict) and isinstance(value.get("messages"), list):
        body["messages"] = value["messages"]
    else:
        body["messages"] = [{"role": "user", "content": value if isinstance(value, str) else str(value)}]
    return body


def _answer_text(payload: Mapping[str, Any], chat: bool) -> str:
    choice = (payload.get("choices") or [{}])[0]
    if chat:
        return (choice.get("message") or {}).get("content") or ""
    return choice.get("text") or ""


class _Run:
    def __init__(self, suite: Suite, experiment_id: str, gateway_url: str, api_key: str | None) -> None:
        self.suite = suite
        self.id = experiment_id
        self.url = gateway_url.rstrip("/") + ("/v1/chat/completions" if suite.target.endpoint == "chat" or
                                              suite.target.prompt else "/v1/completions")  # fmt: skip
        self.chat = self.url.endswith("/chat/completions")
        self.headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self.scorers: list[tuple[str, Scorer]] = []
        self.random = random.Random()

    async def call(self, http: httpx.AsyncClient, result: RowResult, row: Mapping[str, Any]) -> None:
        body = request_body(self.suite, row, self.id, result.index)
        trace_id = os.urandom(16).hex()
        headers = {**self.headers, "traceparent": f"00-{trace_id}-{os.urandom(8).hex()}-01"}
        for attempt in range(self.suite.retries + 1):
            started = time.perf_counter()
            try:
                response = await http.post(self.url, json=body, headers=headers, timeout=self.suite.timeout)
            except httpx.TransportError as exc:
                failure, wait = f"{type(exc).__name__}: {exc}", None
            else:
                if response.status_code == 200:
                    payload = response.json()
                    usage = payload.get("usage") or {}
                    result.output = _answer_text(payload, self.chat)
                    result.latency_ms = (time.perf_counter() - started) * 1000
                    result.prompt_tokens = usage.get("prompt_tokens")
                    result.completion_tokens = usage.get("completion_tokens")
                    result.trace_id = trace_id
                    return
                failure = f"HTTP {response.status_code}: {response.text[:500]}"
                if response.status_code not in _TRANSIENT:
                    break
                wait = _retry_after(response.headers.get("retry-after"))
            if attempt < self.suite.retries:
                await asyncio.sleep(wait if wait is not None else 0.5 * 2**attempt * self.random.uniform(0.5, 1))
        result.status, result.error, result.trace_id = "error", failure, trace_id

    async def score(self, result: RowResult, row: Mapping[str, Any]) -> None:
        output = result.output or ""
        for key, scorer in self.scorers:
            try:
                if type(scorer).ascore is not Scorer.ascore:  # calls a model or is async: on the loop
                    score = await scorer.ascore(output, result.expected, row)
                else:  # CPU work (embeddings, ROUGE) off the loop, so requests keep flowing
                    score = await asyncio.to_thread(scorer.score, output, result.expected, row)
            except (ValueError, TypeError, KeyError, httpx.HTTPError) as exc:
                score = Score(None, f"the scorer failed: {type(exc).__name__}: {exc}")
            result.scores[key] = {
                "value": score.value,
                "reason": score.reason,
                **({"details": score.details} if score.details else {}),
            }


def _retry_after(value: str | None) -> float | None:
    try:
        return min(30.0, max(0.0, float(value))) if value else None
    except ValueError:
        return None


async def run_experiment(
    suite: Suite,
    rows: Sequence[Mapping[str, Any]],
    sink: Sink,
    *,
    gateway_url: str,
    api_key: str | None = None,
    dataset_version: int | None = None,
    resume: str | None = None,
    allow_module_path: bool = False,
    on_row: Callable[[RowResult], None] | None = None,
    summarise_rows: Callable[[Sequence[Mapping[str, Any]], list[str]], dict[str, Any]] = summarise,
    experiment_id: str | None = None,
) -> dict[str, Any]:
    """Run (or resume) an experiment; returns its record with the summary."""
    from shipyard.gateway.pipeline import new_id

    selected = list(rows[: suite.limit] if suite.limit else rows)
    done: dict[int, dict[str, Any]] = {}
    if resume is not None:
        existing = await asyncio.to_thread(sink.get, resume)
        if existing is None:
            raise ConfigError(f"there is no experiment '{resume}' to resume")
        if existing["name"] != suite.name or existing["rows_total"] != len(selected):
            raise ConfigError(f"experiment '{resume}' ran suite '{existing['name']}' over {existing['rows_total']} "
                              f"rows; it cannot be resumed with this suite")  # fmt: skip
        experiment_id = resume
        done = {r["index"]: r for r in await asyncio.to_thread(sink.rows, resume) if r["status"] == "ok"}
    else:
        experiment_id = experiment_id or new_id()
    run = _Run(suite, experiment_id, gateway_url, api_key)
    run.scorers = [(s.key, build_scorer(s.name, s.options, allow_module_path=allow_module_path)) for s in suite.scorers]
    if resume is None:
        name, _ = suite.dataset_ref()
        record = {"id": experiment_id, "name": suite.name, "dataset": name, "dataset_version": dataset_version,
                  "target": suite.target.model_dump(), "suite": suite.model_dump(by_alias=True),
                  "rows_total": len(selected)}  # fmt: skip
        await asyncio.to_thread(sink.create, record)
    finished: list[dict[str, Any]] = []
    saver = _Saver(sink, experiment_id, finished)
    semaphore = asyncio.Semaphore(suite.concurrency)
    limits = httpx.Limits(max_connections=suite.concurrency, max_keepalive_connections=suite.concurrency)

    async def one(index: int, row: Mapping[str, Any], http: httpx.AsyncClient) -> None:
        async with semaphore:
            result = RowResult(index, row.get("input"), row.get("expected"), row.get("metadata"))
            await run.call(http, result, row)
            if result.status == "ok":
                await run.score(result, row)
            finished.append(asdict(result))
            if on_row is not None:
                on_row(result)
            await saver.maybe_save()

    status = "failed"
    try:
        async with httpx.AsyncClient(limits=limits) as http:
            await asyncio.gather(*(one(i, row, http) for i, row in enumerate(selected) if i not in done))
        status = "finished"
    finally:
        await saver.save()  # whatever happened, finished rows are kept for a resume
        if status == "finished":
            all_rows = await _with_costs(sink, experiment_id)
            summary = summarise_rows(all_rows, [key for key, _ in run.scorers])
            await asyncio.to_thread(sink.finish, experiment_id, status, summary)
        else:
            await asyncio.to_thread(sink.finish, experiment_id, "interrupted", {})
    record = await asyncio.to_thread(sink.get, experiment_id)
    assert record is not None
    return record


async def _with_costs(sink: Sink, experiment_id: str, waits: int = 4) -> list[dict[str, Any]]:
    """The experiment's rows with each call's cost copied from its trace (null where the model has no price).
    Traces are written a moment after the answer, so missing ones are asked for again a few times."""
    rows = await asyncio.to_thread(sink.rows, experiment_id)
    missing = {r["trace_id"]: r for r in rows if r["status"] == "ok" and r.get("trace_id") and r.get("cost") is None}
    updated = []
    for attempt in range(waits):
        if not missing:
            break
        if attempt:
            await asyncio.sleep(0.5 * attempt)
        found = await asyncio.to_thread(sink.costs, list(missing))
        for trace_id, cost in found.items():
            row = missing.pop(trace_id)
            if cost is not None:
                row["cost"] = cost
                updated.append({k: v for k, v in row.items() if k != "experiment_id"})
    if updated:
        await asyncio.to_thread(sink.save_rows, experiment_id, updated)
    return rows


class _Saver:
    def __init__(self, sink: Sink, experiment_id: str, finished: list[dict[str, Any]]) -> None:
        self.sink, self.id, self.finished = sink, experiment_id, finished
        self.last = time.monotonic()
        self.lock = asyncio.Lock()

    async def maybe_save(self) -> None:
        if time.monotonic() - self.last >= SAVE_EVERY:
            await self.save()

    async def save(self) -> None:
        async with self.lock:
            self.last = time.monotonic()
            batch = self.finished[:]
            del self.finished[: len(batch)]
            if batch:
                await asyncio.to_thread(self.sink.save_rows, self.id, batch)
