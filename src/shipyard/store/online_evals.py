"""Online evaluation scores: one row per (span, rule, scorer), also read as a time series per rule and scorer."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import JSON, Column, Engine, Float, Index, String, Table, Text, and_, func, select
from sqlalchemy.exc import IntegrityError

from shipyard.store.schema import metadata
from shipyard.store.traces import spans

__all__ = ["OnlineScoreRepo", "trace_scores"]

trace_scores = Table(
    "trace_scores",
    metadata,
    Column("trace_id", String(32), primary_key=True),
    Column("span_id", String(16), primary_key=True),
    Column("rule", String(64), primary_key=True),
    Column("scorer", String(64), primary_key=True),
    Column("deployment", String(64)),
    Column("span_time", Float, nullable=False),  # when the scored call started (the series' time axis)
    Column("scored_at", Float, nullable=False),
    Column("value", Float),  # null: the scorer could not score this output
    Column("reason", Text),
    Column("details", JSON),
    Index("ix_trace_scores_rule_time", "rule", "scorer", "span_time"),
)


class OnlineScoreRepo:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def candidates(self, deployment: str, since: float, limit: int = 500) -> list[dict[str, Any]]:
        """Gateway calls of a deployment that started at or after `since`, oldest first, with their content."""
        query = (
            select(
                spans.c.trace_id,
                spans.c.span_id,
                spans.c.start_time,
                spans.c.input,
                spans.c.output,
                spans.c.status,
                spans.c.attributes,
                spans.c.meta,
            )  # fmt: skip
            .where(spans.c.source == "gateway", spans.c.kind == "llm", spans.c.deployment == deployment)
            .where(spans.c.start_time >= since)
            .order_by(spans.c.start_time)
            .limit(limit)
        )
        with self._engine.connect() as conn:
            return [dict(r) for r in conn.execute(query).mappings().all()]

    def scored(self, rule: str, keys: Iterable[tuple[str, str]]) -> set[tuple[str, str]]:
        """Which of these (trace_id, span_id) pairs this rule has scored already."""
        wanted = list(keys)
        if not wanted:
            return set()
        ids = {t for t, _ in wanted}
        query = select(trace_scores.c.trace_id, trace_scores.c.span_id).where(
            trace_scores.c.rule == rule, trace_scores.c.trace_id.in_(ids)
        )
        with self._engine.connect() as conn:
            return {(r[0], r[1]) for r in conn.execute(query).all()}

    def save(self, rows: list[Mapping[str, Any]]) -> int:
        """Insert scores; a row already there (another process scored it first) is skipped, not an error."""
        saved = 0
        with self._engine.begin() as conn:
            for row in rows:
                try:
                    with conn.begin_nested():
                        conn.execute(trace_scores.insert(), [dict(row)])
                    saved += 1
                except IntegrityError:
                    continue
        return saved

    def last_time(self, rule: str) -> float | None:
        with self._engine.connect() as conn:
            return conn.execute(select(func.max(trace_scores.c.span_time)).where(trace_scores.c.rule == rule)).scalar()

    def for_trace(self, trace_id: str) -> list[dict[str, Any]]:
        query = select(trace_scores).where(trace_scores.c.trace_id == trace_id).order_by(trace_scores.c.rule)
        with self._engine.connect() as conn:
            return [dict(r) for r in conn.execute(query).mappings().all()]

    def series(self, rule: str, scorer: str, since: float, until: float, bucket: float) -> list[dict[str, Any]]:
        """Mean score, count and unscored count per `bucket` seconds of call time."""
        start = func.floor(trace_scores.c.span_time / bucket) * bucket
        query = (
            select(
                start.label("start"),
                func.avg(trace_scores.c.value).label("mean"),
                func.count(trace_scores.c.value).label("n"),
                func.count().label("total"),
            )  # fmt: skip
            .where(and_(trace_scores.c.rule == rule, trace_scores.c.scorer == scorer))
            .where(trace_scores.c.span_time >= since, trace_scores.c.span_time < until)
            .group_by(start)
            .order_by(start)
        )
        with self._engine.connect() as conn:
            rows = conn.execute(query).mappings().all()
        return [{"start": float(r["start"]), "mean": None if r["mean"] is None else float(r["mean"]), "n": int(r["n"]),
                 "unscored": int(r["total"]) - int(r["n"])} for r in rows]  # fmt: skip
