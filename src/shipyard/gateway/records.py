"""What the gateway records about each call: a trace whose root span holds the whole call.

On the request path the gateway only hands the finished `Call` to the trace writer (`Recorder.add`, O(1)).
Everything else happens on the writer's thread: the output and finish reason from the answer (already parsed by
the gateway) or the forwarded stream events, the cost from the price table, time to first token and
inter-token latency from the chunks' arrival times, a child span per attempt when there were retries or
fallbacks, and the metrics.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import orjson

from shipyard.config import PriceConfig, TracingConfig
from shipyard.tracing.context import new_span_id, parse_traceparent
from shipyard.tracing.ingest import price_of
from shipyard.tracing.masking import PiiMasker
from shipyard.tracing.metrics import GatewayMetrics

if TYPE_CHECKING:
    from shipyard.gateway.pipeline import Call
    from shipyard.tracing.writer import TraceWriter

__all__ = ["Recorder", "call_spans", "chunk_gaps", "stream_output"]

log = logging.getLogger("shipyard.tracing")

_CONTENT_KEYS = ("messages", "prompt", "model", "user", "metadata", "stream_options")


class Recorder:
    """Hands finished calls to the trace writer; turns them into spans and metrics on the writer's thread."""

    def __init__(self, config: TracingConfig, metrics: GatewayMetrics) -> None:
        self.capture_content = config.capture_content
        self._prices = config.prices
        self._metrics = metrics
        self._label_cache: dict[tuple[str, str | None, str | None], _Labels] = {}
        self.writer: TraceWriter | None = None
        # issue 6: traces stored with PII masked, on the writer's thread (shipyard.tracing.masking)
        self._masker = PiiMasker(config.mask_pii_entities) if config.mask_pii else None

    def add(self, call: Call) -> None:
        """Called on the event loop when a call is over: O(1). The call becomes spans on the writer's thread:
        turning it into spans on the event loop instead was measured to cost the gateway more (docs/tracing.md)."""
        if self.writer is not None:
            self.writer.add(call)

    def convert(self, item: Any) -> list[dict[str, Any]]:
        """The writer's converter: a Call becomes span rows (and metrics); span rows pass through (masked if on)."""
        rows = item if isinstance(item, list) else self._spans(item)
        return rows if self._masker is None else self._masker.rows(rows)

    def _spans(self, call: Call) -> list[dict[str, Any]]:
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

    def _count(self, call: Call, root: Mapping[str, Any], gaps: list[float]) -> None:
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
    """The label sets of one deployment and target, made once (the writer thread counts every call)."""

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


def chunk_gaps(call: Call) -> list[float]:
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


def _attempt_kinds(call: Call) -> list[str]:
    log_ = call.attempt_log or []
    kinds = []
    for index, (deployment, *_rest) in enumerate(log_):
        if deployment != call.shape.model:
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
    outputs = [c.get("message") if chat else c.get("text") for c in choices if isinstance(c, dict)]
    finish = next((c.get("finish_reason") for c in choices if isinstance(c, dict) and c.get("finish_reason")), None)
    return (outputs[0] if len(outputs) == 1 else outputs), finish


def call_spans(
    call: Call, prices: Mapping[str, PriceConfig], capture: bool = True, gaps: list[float] | None = None
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
    target = call.target
    # The name the engine was sent: a version (`smollm2:2`) when the target follows an alias or a swapping engine.
    model = call.upstream_model or (target.model if target else None)
    priced = model if target is None or model in prices else target.model  # or a price set under the target's name
    error = call.error
    if capture:
        if call.shape.stream:
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
        "error": f"{error.code or error.type}: {error.message[:2000]}" if error else None,
        "deployment": call.shape.model,
        "engine": target.engine.name if target else None,
        "model": model,
        "stream": call.shape.stream,
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
    if call.guard is not None and call.guard.findings:  # what guardrails found (never the matched text)
        root["attributes"] = {**(root["attributes"] or {}), "guardrails": call.guard.findings}
    rows = [root]
    if call.attempts > 1:
        rows.extend(_attempt_spans(call, trace_id, span_id))
    return rows


def _attributes(call: Call) -> dict[str, Any] | None:
    """The request's other parameters, and `served_by` when a fallback deployment answered."""
    attributes = {k: v for k, v in call.body.items() if k not in _CONTENT_KEYS}
    if call.served_by is not None and call.served_by != call.shape.model:
        attributes["served_by"] = call.served_by
    return attributes or None


def _attempt_spans(call: Call, trace_id: str, parent_id: str) -> list[dict[str, Any]]:
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
                "status_code": error.status if error is not None else None,
                "error": f"{error.code or error.type}: {error.message[:2000]}" if error else None,
                "deployment": deployment,
                "engine": engine,
                "model": model,
            }
        )
    return spans
