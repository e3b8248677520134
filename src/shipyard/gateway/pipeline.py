"""The data plane: a checked request goes to a deployment's targets, with retries and fallbacks.

One total deadline bounds every attempt of a request. Failures are classified once (upstream.py);
this module only decides what to try next, relays the answer, and records the call.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from shipyard.asgi import Send, SseStream, send_bytes
from shipyard.config import LimitsConfig
from shipyard.errors import (
    ApiError,
    NotFound,
    RateLimited,
    ServiceUnavailable,
    UpstreamError,
    UpstreamTimeout,
)
from shipyard.gateway.records import Recorder
from shipyard.gateway.relay import SseSplitter
from shipyard.gateway.routing import DeploymentRuntime, Router, TargetState
from shipyard.gateway.upstream import AttemptFailed, classify_status, failure_from_exception, malformed_answer
from shipyard.guardrails.calls import CallGuard, StreamGuard
from shipyard.wire.openai import RequestShape

__all__ = ["Call", "Gateway"]

_ERROR_READ_LIMIT = 64 * 1024


@dataclass(slots=True)
class Call:
    """One client request as it moves through the gateway, and what gets recorded about it."""

    endpoint: str  # "chat.completions" | "completions"
    path: str  # engine path, e.g. "/chat/completions"
    body: dict[str, Any]
    shape: RequestShape
    started: float = field(default_factory=time.perf_counter)
    created_at: float = field(default_factory=time.time)
    id: str = field(default_factory=lambda: new_id())
    attempts: int = 0
    status: int = 0
    error: ApiError | None = None
    target: TargetState | None = None
    served_by: str | None = None
    first_token: float | None = None
    usage: dict[str, Any] | None = None
    guard: CallGuard | None = None  # the deployment's guardrails, when it has any
    # What tracing records (shipyard.gateway.records; spans are made in the trace writer's process): only
    # references and perf_counter readings are taken on the request path.
    ended: float | None = None
    traceparent: bytes | None = None  # the caller's W3C header, parsed off the hot path
    prompt_ref: str | None = None  # the prompt version rendered into the request, when a prompt is bound
    api_key_id: str | None = None
    answer: dict[str, Any] | None = None  # the JSON answer of a non-streamed call, as parsed (and guarded)
    upstream_model: str | None = None  # the model name sent in the last attempt (an alias resolved, a version)
    chunks: list[bytes] | None = None  # the SSE events forwarded to the client, as written
    chunk_times: list[float] | None = None  # perf_counter when each of `chunks` was written
    attempt_log: list[tuple[str, str, str, float, float, ApiError | None]] | None = None
    # (deployment, engine, model, started, ended, error) for each attempt


def new_id() -> str:
    """32 hex characters, time-ordered (nanoseconds, then 64 random bits): appends stay cheap in a B-tree."""
    return f"{time.time_ns():016x}{int.from_bytes(os.urandom(8), 'big'):016x}"


class Gateway:
    def __init__(self, router: Router, limits: LimitsConfig, recorder: Recorder | None) -> None:
        self.router = router
        self.limits = limits
        self.recorder = recorder
        self.prompts: Any = None  # shipyard.registry.resolver.PromptResolver, set at start when a store is open
        self.models: Any = None  # shipyard.registry.runtime.ModelResolver, when a target names `model@alias`
        self.session: aiohttp.ClientSession | None = None
        self._random = random.Random()

    def deployment(self, name: str) -> DeploymentRuntime:
        dep = self.router.get(name)
        if dep is None:
            raise NotFound(
                f"The model '{name}' does not exist: no deployment has that name (see GET /v1/models).",
                param="model",
                code="model_not_found",
            )
        return dep

    async def serve(self, call: Call, dep: DeploymentRuntime, send: Send) -> None:
        """Answer the call (JSON or SSE) and record it, whatever happens."""
        sse = SseStream(send) if call.shape.stream else None
        if sse is not None and self.recorder is not None:
            call.chunk_times = []
            if self.recorder.capture_content:
                call.chunks = []
        try:
            if dep.policy is not None:  # input guardrails: before any engine sees the request
                call.guard = CallGuard(dep.policy, call.endpoint)
                call.body = call.guard.guard_request(call.body)
            body = await self._route(call, dep, sse)
            call.status = call.status or 200
            if body is not None:
                await send_bytes(send, 200, body)
        except ApiError as error:
            call.status, call.error = error.status, error
            if sse is not None and sse.started:
                await sse.write(b"data: " + error.body() + b"\n\n")
                await sse.close()
            else:
                raise
        except asyncio.CancelledError:
            call.status = 499
            raise
        finally:
            if self.recorder is not None:
                call.ended = time.perf_counter()
                self.recorder.add(call)

    async def _route(self, call: Call, first: DeploymentRuntime, sse: SseStream | None) -> bytes | None:
        """Try the deployment, then its fallbacks, within one deadline; return the JSON answer (None: streamed)."""
        deadline = asyncio.get_running_loop().time() + first.config.timeout
        last: AttemptFailed | None = None
        for dep in self.router.chain(first):
            tried: set[TargetState] = set()
            for attempt in range(dep.config.retries + 1):
                if asyncio.get_running_loop().time() >= deadline:
                    raise UpstreamTimeout(
                        f"The request's deadline of {first.config.timeout:g}s passed.", code="deadline_exceeded"
                    )
                target = dep.pick(Router.now(), tried)
                if target is None:  # none usable: every target cooling (429), or none healthy
                    waited = await self._wait_for_cooling(dep, deadline)
                    if not isinstance(waited, TargetState):
                        last = waited or last
                        break  # nothing usable here in time: on to the fallbacks
                    target = waited
                elif target in tried:
                    await self._backoff(dep, attempt, deadline)
                tried.add(target)
                try:
                    return await self._attempt(call, dep, target, deadline, sse)
                except AttemptFailed as failure:
                    last = failure
                    if failure.committed:
                        return None
                    if not failure.retryable:
                        raise failure.error from None
        if last is not None:
            raise last.error
        raise ServiceUnavailable(
            f"Deployment '{first.name}' has no healthy target right now (engines starting or down).",
            code="no_healthy_target",
        )

    async def _attempt(
        self, call: Call, dep: DeploymentRuntime, target: TargetState, deadline: float, sse: SseStream | None
    ) -> bytes | None:
        """One call to one target; the target's state learns the outcome."""
        call.attempts += 1
        call.target, call.served_by, call.upstream_model = target, dep.name, None
        started = time.perf_counter()
        try:
            if sse is None:
                body = await self._attempt_json(call, dep, target, deadline)
            else:
                await self._attempt_stream(call, dep, target, deadline, sse)
                body = None
        except AttemptFailed as failure:
            now = Router.now()
            if failure.cool is not None:
                target.cool(now, failure.cool)
            elif failure.counts:
                target.failed(now, self.router.ejection)
            if failure.committed:
                call.status, call.error = 200, failure.error
            _log_attempt(call, dep, target, started, failure.error)
            raise
        except asyncio.CancelledError:
            _log_attempt(call, dep, target, started, None)
            raise
        target.succeeded()
        _log_attempt(call, dep, target, started, None)
        return body

    async def _wait_for_cooling(self, dep: DeploymentRuntime, deadline: float) -> TargetState | AttemptFailed | None:
        """Every target is cooling after a 429: wait for the first to recover if the deadline allows."""
        now = Router.now()
        cool_end = dep.next_cool_end(now)
        if cool_end is None:
            return None
        wait = cool_end - now
        loop = asyncio.get_running_loop()
        if loop.time() + wait >= deadline:
            error = RateLimited(
                f"Deployment '{dep.name}' is rate limited upstream; retry later.",
                retry_after=wait,
                code="upstream_rate_limited",
            )
            return AttemptFailed(error, retryable=False, counts=False)
        await asyncio.sleep(wait)
        # The loop's clock and time.monotonic() may disagree by a millisecond: judge at the cool end at least.
        return dep.pick(max(Router.now(), cool_end), set())

    async def _backoff(self, dep: DeploymentRuntime, attempt: int, deadline: float) -> None:
        """Sleep before retrying a target: `backoff` doubled for each attempt so far, with jitter."""
        cap = min(dep.config.backoff_max, dep.config.backoff * (2 ** max(0, attempt - 1)))
        delay = self._random.uniform(cap / 2, cap) if cap > 0 else 0
        remaining = deadline - asyncio.get_running_loop().time()
        if delay > 0:
            await asyncio.sleep(min(delay, max(0.0, remaining)))

    def _payload(self, call: Call, target: TargetState) -> bytes:
        body = dict(call.body)
        body["model"] = call.upstream_model = (
            target.model if self.models is None else self.models.model_for(target.model)
        )
        if call.shape.stream:
            options = dict(body.get("stream_options") or {})
            options["include_usage"] = True  # always recorded; dropped for the client if it did not ask
            body["stream_options"] = options
        return orjson.dumps(body)

    def _timeouts(self, dep: DeploymentRuntime, deadline: float) -> tuple[aiohttp.ClientTimeout, float]:
        remaining = deadline - asyncio.get_running_loop().time()
        first_byte = min(remaining, dep.config.attempt_timeout or remaining)
        timeout = aiohttp.ClientTimeout(total=remaining, sock_connect=min(dep.config.connect_timeout, remaining))
        return timeout, first_byte

    def _headers(self, target: TargetState) -> dict[str, str]:
        return {"content-type": "application/json", **target.engine.auth_headers()}

    async def _attempt_json(self, call: Call, dep: DeploymentRuntime, target: TargetState, deadline: float) -> bytes:
        assert self.session is not None
        timeout, first_byte = self._timeouts(dep, deadline)
        url = target.engine.base_url + call.path
        try:
            async with asyncio.timeout(first_byte):
                async with self.session.post(
                    url, data=self._payload(call, target), headers=self._headers(target), timeout=timeout
                ) as response:
                    data = await response.read()
                    status = response.status
                    retry_after = response.headers.get("retry-after")
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise failure_from_exception(exc, target.engine.name) from None
        if status != 200:
            raise classify_status(status, data, retry_after, target.engine.name)
        try:
            payload = orjson.loads(data)
        except orjson.JSONDecodeError:
            payload = None
        if not isinstance(payload, dict):
            raise malformed_answer(data, target.engine.name)
        usage = payload.get("usage")
        if isinstance(usage, dict):
            call.usage = usage
        if call.guard is not None:
            call.guard.guard_answer(payload)
            data = orjson.dumps(payload)
        call.answer = payload
        return data

    async def _attempt_stream(
        self, call: Call, dep: DeploymentRuntime, target: TargetState, deadline: float, sse: SseStream
    ) -> None:
        assert self.session is not None
        timeout, first_byte = self._timeouts(dep, deadline)
        url = target.engine.base_url + call.path
        splitter = SseSplitter(call.shape.include_usage)
        guard = call.guard.stream() if call.guard is not None else None
        committed = False
        read_to_end = False
        response: aiohttp.ClientResponse | None = None
        try:
            async with asyncio.timeout(first_byte):
                response = await self.session.post(
                    url, data=self._payload(call, target), headers=self._headers(target), timeout=timeout
                )
                if response.status != 200:
                    data = await response.content.read(_ERROR_READ_LIMIT)
                    raise classify_status(
                        response.status, data, response.headers.get("retry-after"), target.engine.name
                    )
                events: list[bytes] = []
                while not events:
                    chunk = await response.content.readany()
                    if not chunk:
                        raise AttemptFailed(
                            _stream_error(f"Engine '{target.engine.name}' ended the stream before any event."),
                            retryable=True,
                            counts=True,
                        )
                    events = splitter.feed(chunk)
            committed = True
            await self._forward(call, splitter, events, sse, guard)
            while guard is None or not guard.stopped:
                chunk = await response.content.readany()
                if not chunk:
                    read_to_end = True
                    break
                await self._forward(call, splitter, splitter.feed(chunk), sse, guard)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            failure = failure_from_exception(exc, target.engine.name, committed=committed)
            if committed:
                await _end_with_error(sse, failure.error)
            raise failure from None
        finally:
            if response is not None:
                # A stream read to its end gives its connection back to the pool; anything else closes it,
                # which is also how a cancelled request reaches the engine.
                if read_to_end:
                    response.release()
                else:
                    response.close()
        facts = splitter.facts
        call.usage = facts.usage
        if guard is not None and guard.stopped:  # an output guardrail cut the stream; the engine was stopped
            await sse.close()
            return
        if facts.error is not None:
            # The engine reported an error inside the stream; it was forwarded as is.
            await sse.close()
            raise AttemptFailed(
                _stream_error(str(facts.error.get("message", facts.error))),
                retryable=False,
                counts=True,
                committed=True,
            )
        if not facts.done:
            failure = AttemptFailed(
                _stream_error(f"Engine '{target.engine.name}' ended the stream early (no [DONE])."),
                retryable=False,
                counts=True,
                committed=True,
            )
            await _end_with_error(sse, failure.error)
            raise failure
        await sse.close()

    async def _forward(
        self, call: Call, splitter: SseSplitter, events: list[bytes], sse: SseStream, guard: StreamGuard | None
    ) -> None:
        if guard is not None:
            events = guard.feed(events)
        if not events:
            return
        if call.first_token is None and splitter.facts.first_content is not None:
            call.first_token = splitter.facts.first_content
        data = events[0] if len(events) == 1 else b"".join(events)
        if call.chunk_times is not None:
            call.chunk_times.append(time.perf_counter())
            if call.chunks is not None:
                call.chunks.append(data)
        await sse.write(data)


def _log_attempt(
    call: Call, dep: DeploymentRuntime, target: TargetState, started: float, error: ApiError | None
) -> None:
    if call.attempt_log is None:
        call.attempt_log = []
    model = call.upstream_model or target.model
    call.attempt_log.append((dep.name, target.engine.name, model, started, time.perf_counter(), error))


def _stream_error(message: str) -> ApiError:
    return UpstreamError(message, code="upstream_stream_error")


async def _end_with_error(sse: SseStream, error: ApiError) -> None:
    """A stream broke after it started: a terminal error event, and no [DONE]."""
    try:
        await sse.write(b"data: " + error.body() + b"\n\n")
        await sse.close()
    except OSError:
        pass
