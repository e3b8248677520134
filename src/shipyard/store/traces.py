"""Traces and spans: the tables and the repository behind tracing (issue 3). Tested on SQLite and PostgreSQL.

A span is the unit that is written; a trace row is the summary of a trace's root span (the span without a
parent), written in the same transaction as that span. Writes are idempotent (a span or trace already stored
is skipped), so replaying a journal after a crash never doubles a record.
"""

from __future__ import annotations

import base64
import contextlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import chain
from operator import itemgetter
from typing import Any

import orjson
from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    Engine,
    Float,
    Index,
    Integer,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    and_,
    bindparam,
    delete,
    func,
    or_,
    select,
    update,
)

from shipyard.store.schema import metadata

__all__ = ["SPAN_COLUMNS", "TRACE_COLUMNS", "TraceFilter", "TraceRepo", "spans", "traces"]

traces = Table(
    "traces",
    metadata,
    Column("id", String(32), primary_key=True),  # W3C trace id, 32 hex characters
    Column("created_at", Float, nullable=False),  # unix seconds: when the root span started
    Column("name", String(256)),
    Column("source", String(16), nullable=False),  # gateway | sdk | otlp
    Column("project", String(64)),
    Column("deployment", String(64)),
    Column("status", String(8), nullable=False),  # ok | error
    Column("user", String(256)),
    Column("meta", JSON),  # the caller's `metadata`
    Column("latency_ms", Float),
    Column("api_key_id", String(64)),
    Column("root_span_id", String(16), nullable=False),
    Index("ix_traces_created_at", "created_at"),
    Index("ix_traces_deployment_created_at", "deployment", "created_at"),
    Index("ix_traces_status_created_at", "status", "created_at"),
    Index("ix_traces_user_created_at", "user", "created_at"),
    Index("ix_traces_project_created_at", "project", "created_at"),
)

spans = Table(
    "spans",
    metadata,
    Column("trace_id", String(32), nullable=False),
    Column("span_id", String(16), nullable=False),
    Column("parent_id", String(16)),
    Column("name", String(256), nullable=False),
    Column("kind", String(16), nullable=False),  # llm | attempt | function | span | ...
    Column("source", String(16), nullable=False),
    Column("project", String(64)),
    Column("start_time", Float, nullable=False),  # unix seconds
    Column("end_time", Float),
    Column("duration_ms", Float),
    Column("status", String(8), nullable=False),
    Column("status_code", Integer),  # HTTP status of a gateway call
    Column("error", Text),
    Column("deployment", String(64)),
    Column("engine", String(64)),
    Column("model", String(256)),
    Column("stream", Boolean),
    Column("input", Text),  # JSON text
    Column("output", Text),  # JSON text
    Column("finish_reason", String(32)),
    Column("prompt_tokens", Integer),
    Column("completion_tokens", Integer),
    Column("cost", Float),  # null when the model has no price
    Column("ttft_ms", Float),
    Column("itl_mean_ms", Float),
    Column("itl_p95_ms", Float),
    Column("attempts", Integer),
    Column("user", String(256)),
    Column("meta", JSON),
    Column("attributes", JSON),
    Column("api_key_id", String(64)),
    Column("prompt_ref", String(256)),
    PrimaryKeyConstraint("trace_id", "span_id", name="pk_spans"),
    Index("ix_spans_start_time", "start_time"),
)

SPAN_COLUMNS = tuple(c.name for c in spans.columns)
TRACE_COLUMNS = tuple(c.name for c in traces.columns)


@dataclass(frozen=True, slots=True)
class TraceFilter:
    """What `TraceRepo.list` selects. Every field is optional."""

    since: float | None = None
    until: float | None = None
    deployment: str | None = None
    status: str | None = None
    user: str | None = None
    project: str | None = None
    meta_key: str | None = None
    meta_value: str | None = None
    min_latency_ms: float | None = None
    text: str | None = None
    source: str | None = None


def encode_cursor(created_at: float, trace_id: str) -> str:
    return base64.urlsafe_b64encode(orjson.dumps([created_at, trace_id])).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[float, str]:
    """Raises ValueError for anything that is not a cursor this module made."""
    try:
        created_at, trace_id = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        return float(created_at), str(trace_id)
    except (orjson.JSONDecodeError, TypeError, ValueError) as exc:
        raise ValueError("not a valid cursor") from exc


# A trace row is the summary of its root span: each trace column is read from this span column.
_TRACE_FROM_SPAN = {
    "id": "trace_id",
    "created_at": "start_time",
    "name": "name",
    "source": "source",
    "project": "project",
    "deployment": "deployment",
    "status": "status",
    "user": "user",
    "meta": "meta",
    "latency_ms": "duration_ms",
    "api_key_id": "api_key_id",
    "root_span_id": "span_id",
}
_trace_of_span = itemgetter(*(SPAN_COLUMNS.index(_TRACE_FROM_SPAN[c]) for c in TRACE_COLUMNS))
_PARENT = SPAN_COLUMNS.index("parent_id")
_TRACE, _DEPLOYMENT, _USER = (SPAN_COLUMNS.index(c) for c in ("trace_id", "deployment", "user"))
_ROOT_ID, _ROOT_SOURCE, _ROOT_DEPLOYMENT, _ROOT_USER = (
    TRACE_COLUMNS.index(c) for c in ("id", "source", "deployment", "user")
)
_ADOPT_FROM_CHILD = (
    update(traces)
    .where(traces.c.id == bindparam("trace"))
    .values(
        deployment=func.coalesce(traces.c.deployment, bindparam("from_deployment")),
        user=func.coalesce(traces.c.user, bindparam("from_user")),
    )
)


def _first_of_trace(column: Any) -> Any:
    return (
        select(column)
        .where(spans.c.trace_id == traces.c.id, column.is_not(None))
        .order_by(spans.c.start_time)
        .limit(1)
        .scalar_subquery()
    )


_ADOPT_FROM_SPANS = (
    update(traces)
    .where(traces.c.id == bindparam("trace"))
    .values(
        deployment=func.coalesce(traces.c.deployment, _first_of_trace(spans.c.deployment)),
        user=func.coalesce(traces.c.user, _first_of_trace(spans.c.user)),
    )
)


class TraceRepo:
    """The narrow interface of the tracing aggregate."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._postgres = engine.dialect.name == "postgresql"
        self._span_sql = _postgres_insert_sql(spans)
        self._trace_sql = _postgres_insert_sql(traces)
        self._sqlite_sql: dict[tuple[str, int, tuple[int, ...]], str] = {}  # statements made by _sqlite_insert

    def write(self, rows: Sequence[Mapping[str, Any]]) -> int:
        """Store spans (and the trace rows of root spans) in one transaction; returns how many were given.

        The hot write path of tracing, on the driver: JSON columns serialised by orjson (through SQLAlchemy's
        compiler and type processors it cost ~5× more). PostgreSQL gets one prepared statement run with
        executemany (psycopg pipelines it). SQLite gets multi-row INSERTs that leave out the columns every row of
        the chunk has empty: Python's sqlite3 binds a None through its adapter lookup (~0.4 µs a parameter) and
        releases and retakes the GIL once per statement, so 100 rows per statement cost the writer thread about
        half the CPU of executemany (docs/tracing.md#performance)."""
        if not rows:
            return 0
        span_rows = [_values(r, not self._postgres) for r in rows]
        roots = [_trace_of_span(r) for r in span_rows if r[_PARENT] is None]
        with self._engine.begin() as conn:
            if self._postgres:
                conn.exec_driver_sql(self._span_sql, span_rows)
                if roots:
                    conn.exec_driver_sql(self._trace_sql, roots)
            else:
                self._sqlite_insert(conn, spans.name, SPAN_COLUMNS, span_rows)
                self._sqlite_insert(conn, traces.name, TRACE_COLUMNS, roots)
            self._adopt(conn, span_rows, roots)
        return len(span_rows)

    def _adopt(self, conn: Any, span_rows: list[tuple[Any, ...]], roots: list[tuple[Any, ...]]) -> None:
        """A trace whose root has no deployment or user (an SDK or OTLP trace) takes those of the first of its
        spans that has them (a gateway call made inside it), whichever of the two arrives first, so the trace
        list's `deployment` and `user` filters find it. Gateway calls that start their own trace never get here."""
        joined = [
            {"trace": r[_TRACE], "from_deployment": r[_DEPLOYMENT], "from_user": r[_USER]}
            for r in span_rows
            if r[_PARENT] is not None and (r[_DEPLOYMENT] is not None or r[_USER] is not None)
        ]
        bare = [
            {"trace": r[_ROOT_ID]}
            for r in roots
            if r[_ROOT_SOURCE] != "gateway" and (r[_ROOT_DEPLOYMENT] is None or r[_ROOT_USER] is None)
        ]
        if joined:
            conn.execute(_ADOPT_FROM_CHILD, joined)
        if bare:
            conn.execute(_ADOPT_FROM_SPANS, bare)

    def _sqlite_insert(self, conn: Any, table: str, columns: tuple[str, ...], rows: list[tuple[Any, ...]]) -> None:
        for start in range(0, len(rows), _SQLITE_ROWS):
            chunk = rows[start : start + _SQLITE_ROWS]
            size = len(chunk)
            used = tuple(i for i, column in enumerate(zip(*chunk, strict=True)) if column.count(None) != size)
            key = (table, len(chunk), used)
            sql = self._sqlite_sql.get(key)
            if sql is None:
                names = ", ".join(f'"{columns[i]}"' for i in used)
                one = "(" + ", ".join("?" for _ in used) + ")"
                sql = f'INSERT OR IGNORE INTO "{table}" ({names}) VALUES ' + ", ".join([one] * len(chunk))
                if len(self._sqlite_sql) < 512:
                    self._sqlite_sql[key] = sql
            pick = itemgetter(*used)
            values = list(chain.from_iterable(map(pick, chunk)) if len(used) > 1 else map(pick, chunk))
            conn.exec_driver_sql(sql, tuple(values))  # through SQLAlchemy: a locked file is an OperationalError

    def count(self, deployment: str | None = None) -> int:
        query = select(func.count()).select_from(traces)
        if deployment is not None:
            query = query.where(traces.c.deployment == deployment)
        with self._engine.connect() as conn:
            return int(conn.execute(query).scalar_one())

    def count_spans(self) -> int:
        with self._engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(spans)).scalar_one())

    def list(self, where: TraceFilter, limit: int = 50, cursor: str | None = None) -> tuple[list[dict], str | None]:
        """Newest first. Returns the page and the cursor of the next page (None at the end)."""
        query = _filtered(select(traces), where).order_by(traces.c.created_at.desc(), traces.c.id.desc())
        if cursor is not None:
            at, last_id = decode_cursor(cursor)
            query = query.where(or_(traces.c.created_at < at, and_(traces.c.created_at == at, traces.c.id < last_id)))
        with self._engine.connect() as conn:
            rows = [dict(r) for r in conn.execute(query.limit(limit + 1)).mappings().all()]
        more = len(rows) > limit
        rows = rows[:limit]
        return rows, (encode_cursor(rows[-1]["created_at"], rows[-1]["id"]) if more and rows else None)

    def gateway_calls(
        self, deployment: str | None = None, limit: int = 50, before: float | None = None
    ) -> list[dict[str, Any]]:
        """The spans of gateway calls (one per call, whatever trace it joined), newest first."""
        query = select(spans).where(spans.c.source == "gateway", spans.c.kind == "llm")
        if deployment is not None:
            query = query.where(spans.c.deployment == deployment)
        if before is not None:
            query = query.where(spans.c.start_time < before)
        query = query.order_by(spans.c.start_time.desc(), spans.c.span_id.desc()).limit(limit)
        with self._engine.connect() as conn:
            return [dict(r) for r in conn.execute(query).mappings().all()]

    def get(self, trace_id: str) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
        """The trace row (None if its root has not arrived) and all its spans, oldest first."""
        with self._engine.connect() as conn:
            trace = conn.execute(select(traces).where(traces.c.id == trace_id)).mappings().first()
            rows = conn.execute(
                select(spans).where(spans.c.trace_id == trace_id).order_by(spans.c.start_time, spans.c.span_id)
            ).mappings()
            return (dict(trace) if trace else None), [decode_span(r) for r in rows]

    def export(self, where: TraceFilter, page: int = 500) -> Iterator[dict[str, Any]]:
        """Every matching trace with its spans, oldest first, read page by page."""
        after: tuple[float, str] | None = None
        while True:
            query = _filtered(select(traces), where).order_by(traces.c.created_at, traces.c.id).limit(page)
            if after is not None:
                query = query.where(
                    or_(traces.c.created_at > after[0], and_(traces.c.created_at == after[0], traces.c.id > after[1]))
                )
            with self._engine.connect() as conn:
                rows = [dict(r) for r in conn.execute(query).mappings().all()]
                ids = [r["id"] for r in rows]
                by_trace: dict[str, list[dict[str, Any]]] = {i: [] for i in ids}
                if ids:
                    found = conn.execute(
                        select(spans).where(spans.c.trace_id.in_(ids)).order_by(spans.c.start_time)
                    ).mappings()
                    for span in found:
                        by_trace[span["trace_id"]].append(decode_span(span))
            for row in rows:
                yield {**row, "spans": by_trace[row["id"]]}
            if len(rows) < page:
                return
            after = (rows[-1]["created_at"], rows[-1]["id"])

    def delete_batch(
        self, cutoff: float, project: str | None = None, exclude: Iterable[str] = (), batch: int = 500
    ) -> int:
        """Delete at most `batch` traces older than `cutoff` (of `project`, or of every project not in
        `exclude`), with their spans, and at most `batch` orphan spans that old; returns the rows deleted."""
        ids_query = select(traces.c.id).where(traces.c.created_at < cutoff).limit(batch)
        if project is not None:
            ids_query = ids_query.where(traces.c.project == project)
        else:
            excluded = list(exclude)
            if excluded:
                ids_query = ids_query.where(or_(traces.c.project.is_(None), traces.c.project.not_in(excluded)))
        with self._engine.begin() as conn:
            ids = list(conn.execute(ids_query).scalars())
            deleted = 0
            if ids:
                conn.execute(delete(spans).where(spans.c.trace_id.in_(ids)))
                deleted += conn.execute(delete(traces).where(traces.c.id.in_(ids))).rowcount or 0
            if project is None:
                # Spans whose root never arrived (a gateway call joined to a trace that was never sent).
                orphan = (
                    select(spans.c.trace_id)
                    .where(spans.c.start_time < cutoff, ~spans.c.trace_id.in_(select(traces.c.id)))
                    .limit(batch)
                )
                orphans = list(conn.execute(orphan).scalars())
                if orphans:
                    deleted += conn.execute(delete(spans).where(spans.c.trace_id.in_(orphans))).rowcount or 0
        return deleted


_JSON_COLUMNS = frozenset({"meta", "attributes"})
_JSON_INDEXES = tuple(i for i, name in enumerate(SPAN_COLUMNS) if name in _JSON_COLUMNS)
_STREAM = SPAN_COLUMNS.index("stream")
_SQLITE_ROWS = 100  # rows per INSERT statement: 100 × 33 columns stays far below SQLite's 32,766 parameters


def _postgres_insert_sql(table: Table) -> str:
    """PostgreSQL INSERT that skips rows already stored (a replayed journal), with psycopg placeholders.
    (SQLite's statements are made per chunk by `TraceRepo._sqlite_insert`.)"""
    names = [c.name for c in table.columns]
    quoted = ", ".join(f'"{n}"' for n in names)
    marks = ", ".join("%s::json" if n in _JSON_COLUMNS else "%s" for n in names)
    return f'INSERT INTO "{table.name}" ({quoted}) VALUES ({marks}) ON CONFLICT DO NOTHING'


def _values(row: Mapping[str, Any], sqlite: bool) -> tuple[Any, ...]:
    """A span row as the driver's parameters, in SPAN_COLUMNS order."""
    values = list(map(row.get, SPAN_COLUMNS))
    for index in _JSON_INDEXES:
        if values[index] is not None:
            values[index] = orjson.dumps(values[index], default=str).decode()
    if sqlite and values[_STREAM] is not None:
        values[_STREAM] = int(values[_STREAM])  # a bool would take sqlite3's slow adapter path
    return tuple(values)


def decode_span(row: Mapping[str, Any]) -> dict[str, Any]:
    """A stored span as the API returns it: input and output decoded from their JSON text."""
    span = dict(row)
    for key in ("input", "output"):
        if span[key] is not None:
            with contextlib.suppress(orjson.JSONDecodeError):  # written by us as JSON; kept as text if not
                span[key] = orjson.loads(span[key])
    return span


def _filtered(query: Any, where: TraceFilter) -> Any:
    c = traces.c
    conditions = []
    if where.since is not None:
        conditions.append(c.created_at >= where.since)
    if where.until is not None:
        conditions.append(c.created_at < where.until)
    for column, value in (
        (c.deployment, where.deployment),
        (c.status, where.status),
        (c.user, where.user),
        (c.project, where.project),
        (c.source, where.source),
    ):
        if value is not None:
            conditions.append(column == value)
    if where.meta_key is not None:
        value = c.meta[where.meta_key].as_string()
        conditions.append(value.is_not(None) if where.meta_value is None else value == where.meta_value)
    if where.min_latency_ms is not None:
        conditions.append(c.latency_ms >= where.min_latency_ms)
    if where.text:
        pattern = "%" + where.text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        matching = select(spans.c.trace_id).where(
            or_(spans.c.input.ilike(pattern, escape="\\"), spans.c.output.ilike(pattern, escape="\\"))
        )
        conditions.append(c.id.in_(matching))
    return query.where(*conditions) if conditions else query
