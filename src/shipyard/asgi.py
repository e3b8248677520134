"""Small raw-ASGI helpers shared by the gateway and the local engine.

The hot paths skip framework Request/Response objects: they read the body with a cap, answer
with prebuilt bytes, and watch for the client going away so that work can be cancelled.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from shipyard.errors import ApiError, InvalidRequest, NotFound, PayloadTooLarge, ServerError

log = logging.getLogger("shipyard.http")

__all__ = [
    "Receive",
    "Scope",
    "Send",
    "SseStream",
    "api_endpoint",
    "header",
    "read_body",
    "send_bytes",
    "send_error",
    "wait_disconnect",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

JSON = b"application/json"
SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


class ClientGone(Exception):
    """The client disconnected before the request body was read."""


def header(scope: Scope, name: bytes) -> bytes | None:
    """First value of a request header (name in lower case)."""
    for key, value in scope["headers"]:
        if key == name:
            return value
    return None


async def read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """Read the whole request body, refusing more than `limit` bytes with 413."""
    declared = header(scope, b"content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise InvalidRequest("The Content-Length header is not a number.") from None
        if size > limit:
            raise PayloadTooLarge(
                f"The request body is {size} bytes; the limit is {limit} bytes.", code="body_too_large"
            )
    chunks: list[bytes] = []
    total = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        if chunk:
            total += len(chunk)
            if total > limit:
                raise PayloadTooLarge(f"The request body is over the limit of {limit} bytes.", code="body_too_large")
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def send_bytes(
    send: Send,
    status: int,
    body: bytes,
    content_type: bytes = JSON,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    raw = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    if headers:
        raw.extend(headers)
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


async def send_error(send: Send, error: ApiError) -> None:
    extra = [(k.encode(), v.encode()) for k, v in error.headers.items()]
    await send_bytes(send, error.status, error.body(), headers=extra)


async def wait_disconnect(receive: Receive) -> None:
    """Return when the client disconnects (call only after the body has been read)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


class SseStream:
    """Writes a Server-Sent Events response; remembers whether headers went out."""

    def __init__(self, send: Send, extra_headers: list[tuple[bytes, bytes]] | None = None) -> None:
        self._send = send
        self._headers = SSE_HEADERS + (extra_headers or [])
        self.started = False

    async def start(self) -> None:
        if not self.started:
            self.started = True
            await self._send({"type": "http.response.start", "status": 200, "headers": self._headers})

    async def write(self, data: bytes) -> None:
        if not self.started:
            await self.start()
        await self._send({"type": "http.response.body", "body": data, "more_body": True})

    async def close(self) -> None:
        if not self.started:
            await self.start()
        await self._send({"type": "http.response.body", "body": b"", "more_body": False})


Handler = Callable[[Scope, Receive, Send], Awaitable[None]]


class api_endpoint:
    """Wrap a raw handler: method check, ApiError → OpenAI JSON, unexpected errors → logged 500.

    An instance (not a function) so that Starlette's Route treats it as a plain ASGI app.
    `methods=None` accepts every method.
    """

    def __init__(self, handler: Handler, methods: tuple[str, ...] | None = ("POST",)) -> None:
        self.handler = handler
        self.methods = methods

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.methods is not None and scope["method"] not in self.methods:
            error = InvalidRequest(
                f"Method {scope['method']} is not allowed here; use {', '.join(self.methods)}.",
                status=405,
                code="method_not_allowed",
            )
            await send_error(send, error)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.handler(scope, receive, tracking_send)
        except ClientGone:
            return
        except ApiError as error:
            if not started:
                await send_error(send, error)
        except Exception:
            log.exception("unexpected error while serving %s", scope.get("path"))
            if not started:
                await send_error(send, ServerError("Internal error; the server log has the details."))


async def not_found(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    await send_error(send, NotFound(f"No route for {scope['method']} {scope['path']}.", code="route_not_found"))
