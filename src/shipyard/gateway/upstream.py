"""Calling one engine once, and classifying what went wrong in a way the retry loop can act on."""

from __future__ import annotations

import email.utils
import math
import time
from typing import Any

import aiohttp
import orjson

from shipyard.errors import (
    ApiError,
    InvalidRequest,
    RateLimited,
    ServiceUnavailable,
    UpstreamError,
    UpstreamTimeout,
)

__all__ = [
    "AttemptFailed",
    "classify_status",
    "client_session",
    "failure_from_exception",
    "malformed_answer",
    "retry_after_seconds",
]


class AttemptFailed(Exception):
    """One attempt failed. `retryable`: another attempt may help. `counts`: toward ejecting the target."""

    def __init__(
        self,
        error: ApiError,
        *,
        retryable: bool,
        counts: bool,
        cool: float | None = None,
        committed: bool = False,
    ) -> None:
        super().__init__(error.message)
        self.error = error
        self.retryable = retryable and not committed
        self.counts = counts
        self.cool = cool
        self.committed = committed


def client_session() -> aiohttp.ClientSession:
    """One pooled session for all engines; no per-request client setup on the hot path."""
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, keepalive_timeout=60, ttl_dns_cache=300)
    return aiohttp.ClientSession(
        connector=connector, auto_decompress=True, skip_auto_headers=("User-Agent",), raise_for_status=False
    )


MAX_RETRY_AFTER = 86_400.0  # a day: a longer Retry-After is taken as this


def retry_after_seconds(value: str | None) -> float | None:
    """Retry-After as seconds in [0, a day]: a number, or an HTTP date; None if absent or unreadable."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError, OverflowError):
            return None
    if not math.isfinite(seconds):
        return None
    return min(max(0.0, seconds), MAX_RETRY_AFTER)


def _upstream_error(data: bytes) -> dict[str, Any] | None:
    try:
        payload = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    if isinstance(payload, dict) and isinstance(payload.get("error"), dict):
        return payload["error"]
    if isinstance(payload, dict) and isinstance(payload.get("error"), str):
        return {"message": payload["error"]}
    if isinstance(payload, dict) and isinstance(payload.get("detail"), str):
        return {"message": payload["detail"]}
    return None


def _snippet(data: bytes) -> str:
    text = data[:300].decode(errors="replace").strip()
    return text or "(empty body)"


def classify_status(status: int, data: bytes, retry_after: str | None, engine: str) -> AttemptFailed:
    """Turn an engine's non-200 answer into a failure the retry loop understands."""
    upstream = _upstream_error(data)
    message = str(upstream.get("message")) if upstream else _snippet(data)
    if status == 429:
        seconds = retry_after_seconds(retry_after)
        cool = seconds if seconds is not None else 1.0  # the target cools this long; the caller is told so
        error = RateLimited(
            f"Engine '{engine}' is rate limited: {message}", retry_after=cool, code="upstream_rate_limited"
        )
        return AttemptFailed(error, retryable=True, counts=False, cool=cool)
    if status in (401, 403):
        error = UpstreamError(
            f"Engine '{engine}' refused Shipyard's credentials (HTTP {status}); the operator should check the "
            "engine's api_key_env or api_key_secret.",
            code="upstream_auth_failed",
        )
        return AttemptFailed(error, retryable=False, counts=True)
    if status == 408:
        return AttemptFailed(
            UpstreamTimeout(f"Engine '{engine}' timed out (HTTP 408).", code="upstream_timeout"),
            retryable=True,
            counts=True,
        )
    if 400 <= status < 500:
        # The request itself was refused: pass the engine's answer on, and do not retry.
        error = InvalidRequest(
            message, status=status, code=(upstream or {}).get("code"), param=(upstream or {}).get("param")
        )
        if upstream and isinstance(upstream.get("type"), str):
            error.type = upstream["type"]
        return AttemptFailed(error, retryable=False, counts=False)
    if status == 503:
        error: ApiError = ServiceUnavailable(
            f"Engine '{engine}' is unavailable: {message}", code="upstream_unavailable"
        )
    elif status == 504:
        error = UpstreamTimeout(f"Engine '{engine}' timed out: {message}", code="upstream_timeout")
    else:
        error = UpstreamError(f"Engine '{engine}' failed with HTTP {status}: {message}", code="upstream_error")
    return AttemptFailed(error, retryable=True, counts=True)


def malformed_answer(data: bytes, engine: str) -> AttemptFailed:
    """A 200 whose body is not a JSON object (a proxy's HTML page, a truncated body): the engine's fault."""
    error = UpstreamError(
        f"Engine '{engine}' answered 200 with a body that is not a JSON object: {_snippet(data)}",
        code="upstream_bad_response",
    )
    return AttemptFailed(error, retryable=True, counts=True)


def failure_from_exception(exc: BaseException, engine: str, *, committed: bool = False) -> AttemptFailed:
    if isinstance(exc, TimeoutError):
        error: ApiError = UpstreamTimeout(f"Engine '{engine}' did not answer in time.", code="upstream_timeout")
    elif isinstance(exc, aiohttp.ClientConnectorError):
        error = ServiceUnavailable(
            f"Engine '{engine}' cannot be reached: {exc.os_error or exc}", code="upstream_unreachable"
        )
    elif isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientPayloadError | aiohttp.ClientOSError):
        error = UpstreamError(f"Engine '{engine}' dropped the connection: {exc}", code="upstream_disconnected")
    else:
        error = UpstreamError(f"Engine '{engine}' failed: {exc!r}", code="upstream_error")
    return AttemptFailed(error, retryable=True, counts=True, committed=committed)
