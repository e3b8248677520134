"""Tracing inside one server: the writer's process, the gateway's recorder, metrics, retention and the raw
endpoints (/metrics, OTLP's POST /v1/traces)."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import orjson
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from sqlalchemy.exc import SQLAlchemyError

from shipyard.asgi import Receive, Scope, Send, header, read_body, send_bytes
from shipyard.config import Settings, TracingConfig
from shipyard.gateway.records import Recorder
from shipyard.store import Store
from shipyard.tracing.ingest import decode_otlp, otlp_rows
from shipyard.tracing.metrics import CallMetrics, MetricsPage
from shipyard.tracing.writer_process import WriterProcess

__all__ = ["Tracing", "retention_cutoffs"]

log = logging.getLogger("shipyard.tracing")

_MAX_OTLP_BYTES = 16 * 1024 * 1024
_DAY = 86_400.0


def retention_cutoffs(config: TracingConfig, now: float) -> list[tuple[str | None, float]]:
    """(project, cutoff) pairs: each project with its own period, then None for every other trace."""
    cutoffs: list[tuple[str | None, float]] = [
        (project, now - days * _DAY) for project, days in config.project_retention_days.items()
    ]
    if config.retention_days is not None:
        cutoffs.append((None, now - config.retention_days * _DAY))
    return cutoffs


class Tracing:
    """Built when the store is open; `start` on the event loop, `stop` at shutdown."""

    def __init__(self, settings: Settings, store: Store) -> None:
        config = self.config = settings.tracing
        self.repo = store.traces
        journal_dir = config.journal_dir or Path(settings.data_dir) / "journal"
        self.writer = WriterProcess(
            store.url, journal_dir, config.model_dump(mode="json"), log_level=settings.server.log_level
        )
        self.recorder = Recorder(config, self.writer)
        self.deleted = 0
        self._retention: asyncio.Task[None] | None = None
        writer = self.writer
        empty = CallMetrics().render()  # the names, before the writer's first report
        self.metrics = MetricsPage(lambda: writer.metrics_text or empty)
        self.metrics.gauge("shipyard_trace_queue_depth", "Trace records not yet written.", lambda: writer.queue_depth)
        self.metrics.gauge(
            "shipyard_trace_journal_bytes",
            "Bytes of trace records waiting in the local journal.",
            lambda: writer.journal_pending_bytes,
        )
        for name, attribute, help_text in (
            ("shipyard_trace_records_written_total", "written", "Trace records written to the store."),
            ("shipyard_trace_records_journaled_total", "journaled", "Trace records sent to the local journal."),
            ("shipyard_trace_records_replayed_total", "replayed", "Trace records replayed from the journal."),
            ("shipyard_trace_records_failed_total", "failed", "Trace records that could not be turned into spans."),
            (
                "shipyard_trace_records_dropped_total",
                "dropped",
                "Trace records lost: the writer's process died holding them, or fell 256 MB behind.",
            ),
        ):
            self.metrics.gauge(name, help_text, lambda a=attribute: getattr(writer, a), kind="counter")
        self.metrics.gauge(
            "shipyard_trace_store_up", "1 while the store accepts trace records.", lambda: float(writer.store_up)
        )
        self.metrics.gauge(
            "shipyard_trace_retention_deleted_total",
            "Traces (and orphan spans) deleted by the retention job.",
            lambda: self.deleted,
            kind="counter",
        )

    async def start(self) -> None:
        await self.writer.start()
        if retention_cutoffs(self.config, time.time()):
            self._retention = asyncio.create_task(self._retain())

    async def stop(self) -> None:
        if self._retention is not None:
            self._retention.cancel()
        await self.writer.stop()

    async def enforce_retention(self) -> int:
        """Delete every trace past its retention, in small batches on a worker thread; returns rows deleted."""
        total = 0
        for project, cutoff in retention_cutoffs(self.config, time.time()):
            exclude = list(self.config.project_retention_days) if project is None else []
            while True:
                try:
                    deleted = await asyncio.to_thread(self.repo.delete_batch, cutoff, project, exclude, 500)
                except SQLAlchemyError as exc:
                    log.warning("retention: the store refused a delete (next run retries): %s", exc)
                    return total
                total += deleted
                self.deleted += deleted
                if deleted == 0:
                    break
                await asyncio.sleep(0.05)  # let writes in between batches
        return total

    async def _retain(self) -> None:
        while True:
            deleted = await self.enforce_retention()
            if deleted:
                log.info("retention: deleted %d trace rows", deleted)
            await asyncio.sleep(self.config.retention_interval)

    # --- raw endpoints ------------------------------------------------------------------------------------

    async def metrics_endpoint(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = self.metrics.render()
        await send_bytes(send, 200, body, b"text/plain; version=0.0.4; charset=utf-8")

    async def otlp_endpoint(self, scope: Scope, receive: Receive, send: Send) -> None:
        content_type = (header(scope, b"content-type") or b"application/x-protobuf").decode("latin-1").lower()
        body = await read_body(scope, receive, _MAX_OTLP_BYTES)
        rows = otlp_rows(decode_otlp(body, content_type), self.config.prices)
        if rows:
            self.writer.add(rows)
        response = ExportTraceServiceResponse()
        if content_type.startswith("application/json"):
            await send_bytes(send, 200, orjson.dumps({}), b"application/json")
        else:
            await send_bytes(send, 200, response.SerializeToString(), b"application/x-protobuf")

    def ingest(self, rows: list[dict[str, Any]]) -> None:
        """Spans from the SDK's endpoint: queued like the gateway's, written by the same writer."""
        if rows:
            self.writer.add(rows)
