"""Tracing: every gateway call and every application step recorded as spans, written durably off the hot path.

- `shipyard.store.traces`: the tables and repository
- `writer` / `journal`: the asynchronous batched writer and its local journal
- `shipyard.gateway.records`: what the gateway records about each call
- `ingest`: SDK JSON and OTLP (protobuf, JSON) to span rows
- `metrics`: Prometheus text for /metrics
- `service`: all of it inside one server (plus retention)
- `shipyard.sdk.tracing`: `observe` for application code
"""

from shipyard.tracing.context import format_traceparent, new_span_id, new_trace_id, parse_traceparent

__all__ = ["format_traceparent", "new_span_id", "new_trace_id", "parse_traceparent"]
