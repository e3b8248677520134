"""`shipyard.observe`: nested spans from application code, shipped in batches to a Shipyard server.

    from shipyard import observe

    @observe
    def answer(question: str) -> str: ...

    with observe("retrieve") as span:
        span.set_attribute("k", 5)

Works on sync and async functions and on (async) generators. The caller's thread only takes the clock,
sets a context variable and queues the finished span; inputs and outputs are serialised and sent by a
background thread (so an argument mutated after the call may be recorded as mutated). Calls through the
gateway join the current trace when they carry its W3C `traceparent` header: pass `trace_headers()` as
`extra_headers`, or build the client with `http_client()` / `async_http_client()`.
"""

from __future__ import annotations

import atexit
import contextvars
import functools
import inspect
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, TypeVar

import httpx
import orjson

from shipyard.tracing.context import format_traceparent, new_span_id, new_trace_id

__all__ = [
    "Exporter",
    "Span",
    "async_http_client",
    "configure",
    "current_span",
    "flush",
    "http_client",
    "observe",
    "trace_headers",
]

log = logging.getLogger("shipyard.sdk")

F = TypeVar("F", bound=Callable[..., Any])
_MAX_ITEMS = 1000  # most generator items kept as a span's output
_current: contextvars.ContextVar[Span | None] = contextvars.ContextVar("shipyard_span", default=None)


class Span:
    """The span of one observed step; `set_*` while it runs."""

    __slots__ = (
        "args",
        "attributes",
        "end_time",
        "error",
        "fields",
        "input",
        "kind",
        "name",
        "output",
        "params",
        "parent_id",
        "span_id",
        "start_time",
        "trace_id",
    )

    def __init__(self, name: str, kind: str, parent: Span | None) -> None:
        self.name = name
        self.kind = kind
        self.trace_id = parent.trace_id if parent is not None else new_trace_id()
        self.parent_id = parent.span_id if parent is not None else None
        self.span_id = new_span_id()
        self.start_time = time.time()
        self.end_time: float | None = None
        self.input: Any = None
        self.output: Any = None
        self.error: str | None = None
        self.attributes: dict[str, Any] | None = None
        self.fields: dict[str, Any] | None = None  # user, metadata, model, prompt_tokens, ...
        self.args: tuple[tuple[Any, ...], dict[str, Any]] | None = None
        self.params: tuple[str, ...] = ()

    def set_input(self, value: Any) -> None:
        self.input, self.args = value, None

    def set_output(self, value: Any) -> None:
        self.output = value

    def set_attribute(self, key: str, value: Any) -> None:
        if self.attributes is None:
            self.attributes = {}
        self.attributes[key] = value

    def set(self, **fields: Any) -> None:
        """Known span fields: user, metadata, model, deployment, prompt_tokens, completion_tokens."""
        if self.fields is None:
            self.fields = {}
        self.fields.update(fields)

    @property
    def traceparent(self) -> str:
        return format_traceparent(self.trace_id, self.span_id)

    def row(self, project: str | None) -> dict[str, Any]:
        """The span as the ingestion endpoint takes it (built on the exporter's thread)."""
        value = self.input
        if self.args is not None:
            args, kwargs = self.args
            value = {**dict(zip(self.params, args, strict=False)), **kwargs}
            if len(args) > len(self.params):
                value["*args"] = list(args[len(self.params) :])
        row = {
            "trace_id": self.trace_id,
            "span_id": self.span_id,
            "parent_id": self.parent_id,
            "name": self.name,
            "kind": self.kind,
            "start_time": self.start_time,
            "end_time": self.end_time,
            "status": "error" if self.error is not None else "ok",
            "error": self.error,
            "input": value,
            "output": self.output,
            "attributes": self.attributes,
            "project": project,
        }
        if self.fields:
            row.update(self.fields)
        return row


def _plain(value: Any) -> Any:
    return repr(value)[:2000]


class Exporter:
    """Ships finished spans in batches on a daemon thread; retries while the server is away (bounded)."""

    def __init__(
        self,
        url: str,
        project: str | None = None,
        batch: int = 100,
        interval: float = 1.0,
        max_queue: int = 100_000,
        timeout: float = 10.0,
        api_key: str | None = None,
    ) -> None:
        self.url = url.rstrip("/") + "/api/v1/spans"
        key = api_key or os.environ.get("SHIPYARD_API_KEY")
        self._headers = {"content-type": "application/json", **({"authorization": f"Bearer {key}"} if key else {})}
        self.project = project
        self._batch = batch
        self._interval = interval
        self._max_queue = max_queue
        self._queue: deque[Span] = deque()
        self._wake = threading.Event()
        self._idle = threading.Event()
        self._idle.set()
        self._client = httpx.Client(timeout=timeout)
        self._thread = threading.Thread(target=self._loop, name="shipyard-sdk-exporter", daemon=True)
        self._started = False
        self._closed = threading.Event()
        self._start_lock = threading.Lock()
        self._failing = False  # logged once per outage
        self.sent = 0
        self.dropped = 0

    def add(self, span: Span) -> None:
        """Called in the caller's thread: O(1)."""
        if not self._started:
            self._start()
        if len(self._queue) >= self._max_queue:
            self._queue.popleft()
            self.dropped += 1
        self._idle.clear()
        self._queue.append(span)
        if len(self._queue) >= self._batch:
            self._wake.set()

    def _start(self) -> None:
        with self._start_lock:
            if not self._started:
                self._started = True
                self._thread.start()

    def _loop(self) -> None:
        while not self._closed.is_set():
            self._wake.wait(self._interval)
            self._wake.clear()
            self._ship()

    def close(self) -> None:
        """Stop shipping (what is still queued is dropped); `flush` first to ship it."""
        self._closed.set()
        self._wake.set()
        if self._started:
            self._thread.join(5)
        self._client.close()

    def _failed(self, count: int, reason: object) -> None:
        if not self._failing:
            log.warning("could not ship %d spans to %s (retrying until it answers): %s", count, self.url, reason)
        self._failing = True

    def _ship(self) -> None:
        queue = self._queue
        while queue:
            spans = [queue.popleft() for _ in range(min(self._batch, len(queue)))]
            try:
                body = orjson.dumps(
                    {"spans": [s.row(self.project) for s in spans]},
                    default=_plain,
                    option=orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY,
                )
            except (TypeError, orjson.JSONEncodeError) as exc:
                self.dropped += len(spans)
                log.error("could not serialise %d spans; dropped: %s", len(spans), exc)
                continue
            try:
                response = self._client.post(self.url, content=body, headers=self._headers)
            except httpx.HTTPError as exc:
                queue.extendleft(reversed(spans))
                self._failed(len(spans), exc)
                return
            if response.status_code >= 500:
                queue.extendleft(reversed(spans))
                self._failed(len(spans), f"HTTP {response.status_code}")
                return
            if self._failing:
                log.info("shipping spans to %s again", self.url)
                self._failing = False
            if response.status_code >= 400:
                self.dropped += len(spans)
                log.error("the server rejected %d spans: %s", len(spans), response.text[:500])
            else:
                self.sent += len(spans)
        self._idle.set()

    def flush(self, timeout: float = 10.0) -> bool:
        """Ship everything queued; True when the queue emptied within `timeout`."""
        if not self._started:
            return not self._queue
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._wake.set()
            if self._idle.wait(0.05) and not self._queue:
                return True
        return not self._queue


class _Default:
    """The process-wide exporter `observe` uses (like logging's root logger), made on first use."""

    def __init__(self) -> None:
        self.exporter: Exporter | None = None
        self.lock = threading.Lock()

    def get(self) -> Exporter:
        exporter = self.exporter
        if exporter is None:
            with self.lock:
                if self.exporter is None:
                    url = os.environ.get("SHIPYARD_URL", "http://127.0.0.1:8000")
                    self.exporter = Exporter(url, os.environ.get("SHIPYARD_PROJECT") or None)
                    atexit.register(self.exporter.flush, 5)
                exporter = self.exporter
        return exporter


_default = _Default()


def configure(url: str | None = None, project: str | None = None, **options: Any) -> Exporter:
    """Point `observe` at a server (default: $SHIPYARD_URL or http://127.0.0.1:8000) and name the project.
    `api_key` (default: $SHIPYARD_API_KEY) is sent when the server requires keys; `batch`, `interval`,
    `max_queue` and `timeout` tune the shipping."""
    with _default.lock:
        if _default.exporter is not None:  # the previous one ships what it holds, then stops
            _default.exporter.flush(2)
            _default.exporter.close()
        exporter = Exporter(url or os.environ.get("SHIPYARD_URL", "http://127.0.0.1:8000"), project, **options)
        if _default.exporter is None:
            atexit.register(lambda: _default.exporter.flush(5) if _default.exporter else None)
        _default.exporter = exporter
    return exporter


def flush(timeout: float = 10.0) -> bool:
    """Ship every finished span now (e.g. before a short script exits)."""
    return _default.get().flush(timeout)


def current_span() -> Span | None:
    return _current.get()


def trace_headers() -> dict[str, str]:
    """{"traceparent": ...} for the current span (empty outside one): pass as the openai client's
    `extra_headers` so the gateway call joins the trace."""
    span = _current.get()
    return {"traceparent": span.traceparent} if span is not None else {}


def _inject(request: httpx.Request) -> None:
    span = _current.get()
    if span is not None and "traceparent" not in request.headers:
        request.headers["traceparent"] = span.traceparent


async def _ainject(request: httpx.Request) -> None:
    _inject(request)


def http_client(**kwargs: Any) -> httpx.Client:
    """An httpx client that adds the current span's `traceparent`: `openai.OpenAI(http_client=http_client())`."""
    return httpx.Client(event_hooks={"request": [_inject]}, **kwargs)


def async_http_client(**kwargs: Any) -> httpx.AsyncClient:
    """The same for `openai.AsyncOpenAI`."""
    return httpx.AsyncClient(event_hooks={"request": [_ainject]}, **kwargs)


class observe:
    """A decorator (`@observe`, `@observe(name=..., kind=...)`) and a context manager (`with observe("x")`)."""

    def __new__(cls, name: Any = None, *, kind: str = "function", capture: bool = True) -> Any:
        if callable(name):  # bare @observe
            return cls(None, kind=kind, capture=capture)(name)
        return super().__new__(cls)

    def __init__(self, name: str | None = None, *, kind: str = "function", capture: bool = True) -> None:
        self.name = name
        self.kind = kind
        self.capture = capture
        self._spans: list[tuple[Span, contextvars.Token]] = []

    # --- context manager --------------------------------------------------------------------------------
    def __enter__(self) -> Span:
        span = Span(self.name or "span", self.kind, _current.get())
        self._spans.append((span, _current.set(span)))
        return span

    def __exit__(self, kind: Any, error: BaseException | None, tb: Any) -> None:
        span, token = self._spans.pop()
        _current.reset(token)
        _finish(span, error)

    async def __aenter__(self) -> Span:
        return self.__enter__()

    async def __aexit__(self, kind: Any, error: BaseException | None, tb: Any) -> None:
        self.__exit__(kind, error, tb)

    # --- decorator ---------------------------------------------------------------------------------------
    def __call__(self, fn: F) -> F:
        name = self.name or getattr(fn, "__qualname__", "function")
        params = tuple(inspect.signature(fn).parameters)
        start = functools.partial(_start, name, self.kind, params, self.capture)
        capture = self.capture
        if inspect.isasyncgenfunction(fn):
            return functools.wraps(fn)(_async_gen_wrapper(fn, start, capture))  # type: ignore[return-value]
        if inspect.isgeneratorfunction(fn):
            return functools.wraps(fn)(_gen_wrapper(fn, start, capture))  # type: ignore[return-value]
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def run_async(*args: Any, **kwargs: Any) -> Any:
                span, token = start(args, kwargs)
                try:
                    result = await fn(*args, **kwargs)
                except BaseException as error:
                    _current.reset(token)
                    _finish(span, error)
                    raise
                _current.reset(token)
                if capture:
                    span.output = result
                _finish(span, None)
                return result

            return run_async  # type: ignore[return-value]

        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> Any:
            span, token = start(args, kwargs)
            try:
                result = fn(*args, **kwargs)
            except BaseException as error:
                _current.reset(token)
                _finish(span, error)
                raise
            _current.reset(token)
            if capture:
                span.output = result
            _finish(span, None)
            return result

        return run  # type: ignore[return-value]


def _start(
    name: str, kind: str, params: tuple[str, ...], capture: bool, args: tuple, kwargs: dict
) -> tuple[Span, contextvars.Token]:
    span = Span(name, kind, _current.get())
    if capture:
        span.args, span.params = (args, kwargs), params
    return span, _current.set(span)


def _finish(span: Span, error: BaseException | None) -> None:
    span.end_time = time.time()
    if error is not None and not isinstance(error, GeneratorExit | StopIteration | StopAsyncIteration):
        span.error = f"{type(error).__name__}: {error}"[:4000]
    _default.get().add(span)


def _gen_wrapper(fn: Callable[..., Any], start: Callable[..., Any], capture: bool) -> Callable[..., Any]:
    def run(*args: Any, **kwargs: Any) -> Any:
        span, token = start(args, kwargs)
        _current.reset(token)  # the span is current only while the generator body runs
        items: list[Any] = []
        error: BaseException | None = None
        inner = fn(*args, **kwargs)
        try:
            while True:
                token = _current.set(span)
                try:
                    item = next(inner)
                except StopIteration:
                    break
                finally:
                    _current.reset(token)
                if capture and len(items) < _MAX_ITEMS:
                    items.append(item)
                yield item
        except BaseException as exc:
            error = exc
            raise
        finally:
            inner.close()
            if capture:
                span.output = items
            _finish(span, error)

    return run


def _async_gen_wrapper(fn: Callable[..., Any], start: Callable[..., Any], capture: bool) -> Callable[..., Any]:
    async def run(*args: Any, **kwargs: Any) -> Any:
        span, token = start(args, kwargs)
        _current.reset(token)
        items: list[Any] = []
        error: BaseException | None = None
        inner = fn(*args, **kwargs)
        try:
            while True:
                token = _current.set(span)
                try:
                    item = await inner.__anext__()
                except StopAsyncIteration:
                    break
                finally:
                    _current.reset(token)
                if capture and len(items) < _MAX_ITEMS:
                    items.append(item)
                yield item
        except BaseException as exc:
            error = exc
            raise
        finally:
            await inner.aclose()
            if capture:
                span.output = items
            _finish(span, error)

    return run
