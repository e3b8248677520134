"""The load generator of one process: asyncio + aiohttp, streamed answers timed chunk by chunk.

Open loop: a dispatcher walks the precomputed schedule, sleeps until each arrival's absolute time and
starts the request as a task without waiting for earlier ones, so a slow server never slows arrivals
down; each request records how late it started against its schedule. Closed loop: `concurrency`
coroutines each send one request after another. Requests started during the warm-up are sent but left
out of the results (their lateness still counts: it describes the generator).
"""

from __future__ import annotations

import asyncio
import gc
import math
import time
from collections.abc import MutableSequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from shipyard.loadtest.metrics import Aggregate, RequestResult
from shipyard.loadtest.shapes import LoadShape, arrival_times, split_concurrency
from shipyard.loadtest.sources import RequestSource, SourceSpec, build_source
from shipyard.loadtest.wire import Endpoint, StreamTimer, build_body, endpoint_path

__all__ = ["COUNTERS", "RunPlan", "Runner", "run_in_process"]

# Live counters shared with whoever draws progress: indices into a mutable sequence of numbers.
COUNTERS = ("sent", "succeeded", "failed", "output_tokens", "in_flight")
SENT, OK, FAILED, TOKENS, INFLIGHT = range(5)


@dataclass(frozen=True)
class RunPlan:
    """Everything a generator process needs; picklable, so each process gets a copy."""

    base_url: str  # e.g. http://127.0.0.1:8000/v1
    model: str
    shape: LoadShape
    source: SourceSpec = field(default_factory=SourceSpec)
    endpoint: Endpoint = "chat"
    duration: float | None = 30.0  # measured seconds after the warm-up; None: until `requests` are done
    requests: int | None = None  # measured requests; None: until the duration ends
    warmup: float = 0.0
    timeout: float = 120.0  # per request, whole stream
    max_in_flight: int = 512  # open loop: arrivals beyond this many open requests are dropped (counted)
    headers: dict[str, str] = field(default_factory=dict)
    extra_body: dict[str, Any] = field(default_factory=dict)
    thresholds: dict[str, float] = field(default_factory=dict)  # per-request SLO bounds (ms) for goodput
    seed: int = 0
    max_seconds: float | None = None  # safety: no request starts after this many seconds, whatever the limits

    def __post_init__(self) -> None:
        if self.duration is None and self.requests is None:
            raise ValueError("a load test needs a duration or a request count")
        if self.shape.kind == "ramp" and self.duration is None:
            raise ValueError("a ramp needs a duration (--duration): the rate rises over the whole run")

    @property
    def url(self) -> str:
        return self.base_url.rstrip("/") + endpoint_path(self.endpoint)

    @property
    def horizon(self) -> float:
        """Seconds after the start when the last request may be sent."""
        end = self.warmup + self.duration if self.duration is not None else math.inf
        return min(end, self.max_seconds) if self.max_seconds is not None else end


class Runner:
    """One generator process's share of a run."""

    def __init__(
        self,
        plan: RunPlan,
        worker: int = 0,
        workers: int = 1,
        counters: MutableSequence[float] | None = None,
        source: RequestSource | None = None,
        stop: Any = None,
    ) -> None:
        self.plan = plan
        self.worker = worker
        self.workers = workers
        self.counters: MutableSequence[float] = counters if counters is not None else [0] * len(COUNTERS)
        self.stop = stop  # anything with a `value`; once true, no new request starts (in-flight ones finish)
        self.source = source or build_source(plan.source)
        self.aggregate = Aggregate(plan.thresholds)
        self._bodies: dict[int, bytes] = {}
        self._t0 = 0.0
        self._session: aiohttp.ClientSession | None = None
        self._timeout = aiohttp.ClientTimeout(total=plan.timeout, sock_connect=min(10.0, plan.timeout))
        self._headers = {"content-type": "application/json", "accept": "text/event-stream", **plan.headers}
        self._in_flight_cap = max(1, plan.max_in_flight // workers)  # this process's share of the cap

    def _body(self, index: int) -> bytes:
        slot = index % len(self.source)
        body = self._bodies.get(slot)
        if body is None:
            request = self.source.get(slot)
            body = self._bodies[slot] = build_body(request, self.plan.model, self.plan.endpoint, self.plan.extra_body)
        return body

    async def run(self, start_at: float | None = None) -> Aggregate:
        """Run this process's share; `start_at` is the shared time.monotonic() instant the run begins."""
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, enable_cleanup_closed=True)
        trace = aiohttp.TraceConfig()
        trace.on_request_headers_sent.append(_headers_sent)
        async with aiohttp.ClientSession(
            connector=connector, timeout=self._timeout, auto_decompress=False, trace_configs=[trace]
        ) as session:
            self._session = session
            for index in range(min(len(self.source), 10_000)):
                self._body(index)  # serialise bodies before the clock starts
            gc.collect()
            gc.freeze()  # what exists now is never scanned again: shorter collector pauses during the run
            try:
                if start_at is not None:
                    delay = start_at - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                self._t0 = start_at if start_at is not None else time.monotonic()
                if self.plan.shape.open_loop:
                    await self._open_loop()
                else:
                    await self._closed_loop()
            finally:
                gc.unfreeze()
        return self.aggregate

    # -- open loop
    def _arrival_count(self) -> int | None:
        plan = self.plan
        if plan.requests is None:
            return None
        warm = sum(1 for _ in arrival_times(plan.shape, plan.warmup, plan.seed)) if plan.warmup else 0
        return warm + plan.requests

    async def _open_loop(self) -> None:
        plan = self.plan
        tasks: set[asyncio.Task[None]] = set()
        counters = self.counters
        loop = asyncio.get_running_loop()
        t0 = self._t0
        schedule = arrival_times(plan.shape, plan.horizon, plan.seed, self._arrival_count(), self.worker, self.workers)
        stop = self.stop
        for index, offset in schedule:
            delay = t0 + offset - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            if stop is not None and stop.value:
                break
            if counters[INFLIGHT] >= self._in_flight_cap:
                self.aggregate.record_error("dropped_in_flight_cap", offset)
                counters[FAILED] += 1
                continue
            task = loop.create_task(self._send(index, offset, offset >= plan.warmup))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.gather(*tasks)

    # -- closed loop
    async def _closed_loop(self) -> None:
        plan = self.plan
        assert plan.shape.concurrency is not None
        mine = split_concurrency(plan.shape.concurrency, self.workers)[self.worker]
        budget = split_concurrency(plan.requests, self.workers)[self.worker] if plan.requests is not None else None
        state = {"next": 0, "measured": 0}
        end = self._t0 + plan.horizon

        async def user() -> None:
            while True:
                now = time.monotonic()
                if now >= end or (budget is not None and state["measured"] >= budget):
                    return
                if self.stop is not None and self.stop.value:
                    return
                measured = now - self._t0 >= plan.warmup
                if measured:
                    state["measured"] += 1
                local = state["next"]
                state["next"] += 1
                await self._send(local * self.workers + self.worker, None, measured)

        if mine:
            await asyncio.gather(*(user() for _ in range(mine)))

    # -- one request
    async def _send(self, index: int, scheduled: float | None, measured: bool) -> None:
        counters = self.counters
        body = self._body(index)
        t0 = self._t0
        start = time.monotonic()
        counters[SENT] += 1
        counters[INFLIGHT] += 1
        timer = StreamTimer()
        status: int | None = None
        error: str | None = None
        sent: list[float] = []  # when the request's headers were written (see _headers_sent)
        assert self._session is not None
        post = self._session.post
        try:
            async with post(
                self.plan.url, data=body, headers=self._headers, allow_redirects=False, trace_request_ctx=sent
            ) as r:
                status = r.status
                if status != 200:
                    await r.read()
                    error = f"http_{status}"
                elif r.content_type == "application/json":
                    _unstreamed(timer, await r.read(), time.monotonic())
                else:
                    async for data in r.content.iter_any():
                        timer.feed(data, time.monotonic())
                    if timer.error is not None:
                        error = "stream_error"
                    elif not timer.done:
                        error = "incomplete_stream"
        except TimeoutError:
            error = "timeout"
        except aiohttp.ClientConnectorError:
            error = "connect"
        except (aiohttp.ClientError, ConnectionError, orjson.JSONDecodeError):
            error = "connection"
        end = time.monotonic()
        out = timer.output_tokens
        result = RequestResult(
            index=index,
            start=(sent[0] if sent else start) - t0,
            end=end - t0,
            lateness=None if scheduled is None else start - t0 - scheduled,
            status=status,
            error=error,
            content_times=[at - t0 for at in timer.content_times],
            input_tokens=timer.input_tokens,
            output_tokens=out if out is not None else timer.chunks,
            tokens_from_usage=out is not None,
        )
        self.aggregate.add(result, measured)
        counters[INFLIGHT] -= 1
        if error is None:
            counters[OK] += 1
            counters[TOKENS] += result.output_tokens or 0
        else:
            counters[FAILED] += 1


async def _headers_sent(_session: Any, context: Any, _params: Any) -> None:
    """Latencies run from the moment the request went out, not from when aiohttp began building it."""
    context.trace_request_ctx.append(time.monotonic())


def _unstreamed(timer: StreamTimer, raw: bytes, at: float) -> None:
    """A server that ignored `stream`: one answer, its text all arriving at once."""
    data = orjson.loads(raw)
    timer.usage = data.get("usage") if isinstance(data, dict) else None
    timer.content_times.append(at)
    timer.chunks = 1
    timer.done = True


def run_in_process(plan: RunPlan, counters: MutableSequence[float] | None = None) -> Aggregate:
    """Run a whole plan in this process (one generator) and return its aggregate."""
    runner = Runner(plan, counters=counters)
    return _run_loop(runner.run())


def _run_loop(coro: Any) -> Any:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)
