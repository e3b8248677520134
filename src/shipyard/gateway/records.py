"""What the gateway records about each call: a trace whose root span holds the whole call.

On the request path the gateway only copies the finished `Call`'s plain values into a `CallRecord` tuple
(`Recorder.add`, a few µs) and hands it to the trace writer's process (`shipyard.tracing.writer_process`).
Everything else happens there, off the gateway's GIL (`SpanMaker`): the output and finish reason from the answer
(already parsed by the gateway) or the forwarded stream events, the cost from the price table, time to first
token and inter-token latency from the chunks' arrival times, a child span per attempt when there were retries
or fallbacks, and the metrics.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

import orjson

from shipyard.config import PriceConfig, TracingConfig
from shipyard.tracing.context import new_span_id, parse_traceparent
from shipyard.tracing.ingest import price_of
from shipyard.tracing.masking import PiiMasker
from shipyard.tracing.metrics import CallMetrics

if TYPE_CHECKING:
    from shipyard.errors import ApiError
    from shipyard.gateway.pipeline import Call

__all__ = ["CallRecord", "Recorder", "SpanMaker", "call_record", "call_spans", "chunk_gaps", "stream_output"]

log = logging.getLogger("shipyard.tracing")

_CONTENT_KEYS = ("messages", "prompt", "model", "user", "metadata", "stream_options")

ErrorTuple = tuple[int, str, "str | None", str]  # (status, type, code, message) of an ApiError


class CallRecord(NamedTuple):
    """The plain values of a finished call that tracing needs: what crosses to the writer's process (pickled)."""

    endpoint: str
    body: dict[str, Any]
    deployment: str
    stream: bool
    started: float
    ended: float | None
    created_at: float
    id: str
    attempts: int
    status: int
    error: ErrorTuple | None
    engine: str | None  # the target's engine, None when no target was chosen
    target_model: str | None
    served_by: str | None
    first_token: float | None
    usage: dict[str, Any] | None
    guard_findings: list[dict[str, Any]] | None
    traceparent: bytes | None
    prompt_ref: str | None
    api_key_id: str | None
    answer: dict[str, Any] | None
    upstream_model: str | None
    chunks: list[bytes] | None
    chunk_times: list[float] | None
    attempt_log: list[tuple[str, str, str, float, float, ErrorTuple | None]] | None  # only with retries


def _error(error: ApiError | None) -> ErrorTuple | None:
    return None if error is None else (error.status, error.type, error.code, error.message)


def call_record(call: Call) -> tuple[Any, ...]:
    """A `CallRecord`'s values, as a plain tuple (it pickles faster than the named one): on the event loop."""
    target = call.target
    guard = call.guard
    attempt_log = None
    if call.attempts > 1 and call.attempt_log:
        attempt_log = [(d, e, m, s, t, _error(err)) for d, e, m, s, t, err in call.attempt_log]
    return (
        call.endpoint,
        call.body,
        call.shape.model,
        call.shape.stream,
        call.started,
        call.ended,
        call.created_at,
        call.id,
        call.attempts,
        call.status,
        _error(call.error),
        None if target is None else target.engine.name,
        None if target is None else target.model,
        call.served_by,
        call.first_token,
        call.usage,
        guard.findings if guard is not None and guard.findings else None,
        call.traceparent,
        call.prompt_ref,
        call.api_key_id,
        call.answer,
        call.upstream_model,
        call.chunks,
        call.chunk_times,
        attempt_log,
    )


class Recorder:
    """The gateway's side: hands each finished call's values to the trace writer."""

    def __init__(self, config: TracingConfig, writer: Any) -> None:
        self.capture_content = config.capture_content
        self.writer = writer  # anything with `add(item)`: shipyard.tracing.writer_process.WriterProcess

    def add(self, call: Call) -> None:
        """Called on the event loop when a call is over: a tuple of its values, handed over (a few µs). Turning
        it into spans in the server (on the loop or a thread) was measured to cost the gateway more
        (docs/tracing.md#performance)."""
        self.writer.add(call_record(call))


class SpanMaker:
    """The writer process's converter: a call's record becomes span rows (and metrics); span rows from the SDK
    and OpenTelemetry pass through. PII is masked here when the config asks for it."""

    def __init__(self, config: TracingConfig, metrics: CallMetrics) -> None:
        self.capture_content = config.capture_content
        self._prices = config.prices
        self._metrics = metrics
        self._label_cache: dict[tuple[str, str | None, str | None], _Labels] = {}
        # issue 6: traces stored with PII masked, in the writer's process (shipyard.tracing.masking)
        self._masker = PiiMasker(config.mask_pii_entities) if config.mask_pii else None

    def convert(self, item: Any) -> list[dict[str, Any]]:
        rows = item if isinstance(item, list) else self._spans(CallRecord._make(item))
        return rows if self._masker is None else self._masker.rows(rows)

    def _spans(self, call: CallRecord) -> list[dict[str, Any]]:
        gaps = chunk_gaps(call)
        rows = call_spans(call, self._prices, self.capture_content, gaps)
        self._count(call, rows[0], gaps)
        return rows

    def _labels(self, root: Mapping[str, Any]) -> _Labels:
        key = (root["deployment"], root["engine"], root["model"])
        labels = self._label_cache.get(key)
        if labels is None:
            target = f"{root['engine']}/{root['model']}" if root["engine"] else "none"
            base = (("deployment", root["deployment"]), ("target", target))
            labels = self._label_cache[key] = _Labels(base)
        return labels

    def _count(self, call: CallRecord, root: Mapping[str, Any], gaps: list[float]) -> None:
        labels = self._labels(root)
        base = labels.base
        metrics = self._metrics
        with metrics.lock:
            metrics.inc("shipyard_requests_total", labels.status(root["status_code"]))
            if root["prompt_tokens"]:
                metrics.inc("shipyard_tokens_total", labels.tokens_in, root["prompt_tokens"])
            if root["completion_tokens"]:
                metrics.inc("shipyard_tokens_total", labels.tokens_out, root["completion_tokens"])
            if root["cost"]:
                metrics.inc("shipyard_cost_dollars_total", base, root["cost"])
            if call.attempts > 1:
                for kind in _attempt_kinds(call):
                    if kind == "retry":
                        metrics.inc("shipyard_retries_total", base)
                    elif kind == "fallback":
                        metrics.inc("shipyard_fallbacks_total", base)
            metrics.latency.observe(base, root["duration_ms"] / 1000)
            if root["ttft_ms"] is not None:
                metrics.ttft.observe(base, root["ttft_ms"] / 1000)
            for gap in gaps:
                metrics.itl.observe(base, gap)


class _Labels:
    """The label sets of one deployment and target, made once (the writer counts every call)."""

    __slots__ = ("base", "by_status", "tokens_in", "tokens_out")

    def __init__(self, base: tuple[tuple[str, str], ...]) -> None:
        self.base = base
        self.tokens_in = (*base, ("direction", "input"))
        self.tokens_out = (*base, ("direction", "output"))
        self.by_status: dict[int, tuple[tuple[str, str], ...]] = {}

    def status(self, code: int) -> tuple[tuple[str, str], ...]:
        labels = self.by_status.get(code)
        if labels is None:
            labels = self.by_status[code] = (*self.base, ("status", str(code)))
        return labels


def chunk_gaps(call: CallRecord) -> list[float]:
    """Seconds between consecutive chunks carrying text, as written to the client. Without the chunks' content
    (capture off), every chunk from the first token on counts."""
    times = call.chunk_times
    if not times or call.first_token is None:
        return []
    chunks = call.chunks
    if chunks is not None and len(chunks) == len(times):
        times = [t for t, data in zip(times, chunks, strict=True) if _has_text(data)]
    else:
        times = [t for t in times if t >= call.first_token]
    return [b - a for a, b in zip(times, times[1:], strict=False)]


def _has_text(data: bytes) -> bool:
    for key in (b'"content":"', b'"text":"'):
        at = data.find(key)
        while at >= 0:
            if data[at + len(key) : at + len(key) + 1] != b'"':
                return True
            at = data.find(key, at + 1)
    return False


def _attempt_kinds(call: CallRecord) -> list[str]:
    log_ = call.attempt_log or []
    kinds = []
    for index, (deployment, *_rest) in enumerate(log_):
        if deployment != call.deployment:
            kinds.append("fallback")
        else:
            kinds.append("retry" if index else "attempt")
    return kinds


def _p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[max(0, -(-95 * len(ordered) // 100) - 1)]  # nearest rank


def stream_output(chunks: list[bytes], chat: bool) -> tuple[Any, str | None]:
    """The assembled output of a stream (text per choice) and the first finish reason, from the SSE events."""
    texts: dict[int, list[str]] = {}
    finish: str | None = None
    for data in chunks:
        for line in data.split(b"\n"):
            if not line.startswith(b"data:"):
                continue
            payload = line[5:].strip()
            if not payload or payload == b"[DONE]":
                continue
            try:
                event = orjson.loads(payload)
            except orjson.JSONDecodeError:
                continue
            for choice in event.get("choices") or () if isinstance(event, dict) else ():
                index = choice.get("index", 0)
                piece = (choice.get("delta") or {}).get("content") if chat else choice.get("text")
                if piece:
                    texts.setdefault(index, []).append(piece)
                if finish is None and choice.get("finish_reason"):
                    finish = choice["finish_reason"]
    joined = ["".join(texts[i]) for i in sorted(texts)]
    text: Any = joined[0] if len(joined) == 1 else (joined or "")
    return ({"role": "assistant", "content": text} if chat else text), finish


def _json_output(payload: dict[str, Any] | None, chat: bool) -> tuple[Any, str | None]:
    """The output (the message or text of each choice) and the first finish reason of a parsed JSON answer."""
    if payload is None:
        return None, None
    choices = payload.get("choices")
    if not isinstance(choices, list):
        return [], None
    outputs = []
    finish = None
    for choice in choices:
        if isinstance(choice, dict):
            outputs.append(choice.get("message") if chat else choice.get("text"))
            finish = finish or choice.get("finish_reason") or None
    return (outputs[0] if len(outputs) == 1 else outputs), finish


def call_spans(
    call: CallRecord, prices: Mapping[str, PriceConfig], capture: bool = True, gaps: list[float] | None = None
) -> list[dict[str, Any]]:
    """The span rows of one gateway call: the root span, then one child per attempt after a retry/fallback.
    `gaps`: the call's `chunk_gaps`, when the caller has them already."""
    parent = parse_traceparent(call.traceparent)
    trace_id, parent_id = parent if parent else (call.id, None)
    span_id = call.id[16:]
    ended = call.ended if call.ended is not None else call.started
    body = call.body
    chat = call.endpoint == "chat.completions"
    usage = call.usage or {}
    # The name the engine was sent: a version (`smollm2:2`) when the target follows an alias or a swapping engine.
    model = call.upstream_model or call.target_model
    priced = model if call.engine is None or model in prices else call.target_model  # or the target's name's price
    error = call.error
    if capture:
        if call.stream:
            output, finish = stream_output(call.chunks or [], chat)
        else:
            output, finish = _json_output(call.answer, chat)
        content_in = body.get("messages") if chat else body.get("prompt")
    else:
        output, finish, content_in = None, None, None
    if gaps is None:
        gaps = chunk_gaps(call)
    user = body.get("user")
    meta = body.get("metadata")
    root = {
        "trace_id": trace_id,
        "span_id": span_id,
        "parent_id": parent_id,
        "name": call.endpoint,
        "kind": "llm",
        "source": "gateway",
        "start_time": call.created_at,
        "end_time": call.created_at + (ended - call.started),
        "duration_ms": (ended - call.started) * 1000,
        "status": "ok" if call.status == 200 and error is None else "error",
        "status_code": call.status,
        "error": _error_text(error),
        "deployment": call.deployment,
        "engine": call.engine,
        "model": model,
        "stream": call.stream,
        "input": orjson.dumps(content_in).decode() if content_in is not None else None,
        "output": orjson.dumps(output).decode() if output is not None else None,
        "finish_reason": finish,
        "prompt_tokens": usage.get("prompt_tokens"),
        "completion_tokens": usage.get("completion_tokens"),
        "cost": price_of(prices, priced, usage),
        "ttft_ms": (call.first_token - call.started) * 1000 if call.first_token else None,
        "itl_mean_ms": sum(gaps) / len(gaps) * 1000 if gaps else None,
        "itl_p95_ms": _p95(gaps) * 1000 if gaps else None,
        "attempts": call.attempts,
        "user": user if isinstance(user, str) else None,
        "meta": meta if isinstance(meta, dict) else None,
        "attributes": _attributes(call),
        "api_key_id": call.api_key_id,
        "prompt_ref": call.prompt_ref,
    }
    if call.guard_findings:  # what guardrails found (never the matched text)
        root["attributes"] = {**(root["attributes"] or {}), "guardrails": call.guard_findings}
    rows = [root]
    if call.attempts > 1:
        rows.extend(_attempt_spans(call, trace_id, span_id))
    return rows


def _error_text(error: ErrorTuple | None) -> str | None:
    if error is None:
        return None
    _status, type_, code, message = error
    return f"{code or type_}: {message[:2000]}"


def _attributes(call: CallRecord) -> dict[str, Any] | None:
    """The request's other parameters, and `served_by` when a fallback deployment answered."""
    attributes = {k: v for k, v in call.body.items() if k not in _CONTENT_KEYS}
    if call.served_by is not None and call.served_by != call.deployment:
        attributes["served_by"] = call.served_by
    return attributes or None


def _attempt_spans(call: CallRecord, trace_id: str, parent_id: str) -> list[dict[str, Any]]:
    spans = []
    kinds = _attempt_kinds(call)
    for index, (deployment, engine, model, started, ended, error) in enumerate(call.attempt_log or []):
        start = call.created_at + (started - call.started)
        spans.append(
            {
                "trace_id": trace_id,
                "span_id": new_span_id(),
                "parent_id": parent_id,
                "name": f"attempt {index + 1}",
                "kind": kinds[index],
                "source": "gateway",
                "start_time": start,
                "end_time": start + (ended - started),
                "duration_ms": (ended - started) * 1000,
                "status": "error" if error is not None else "ok",
                "status_code": error[0] if error is not None else None,
                "error": _error_text(error),
                "deployment": deployment,
                "engine": engine,
                "model": model,
            }
        )
    return spans
