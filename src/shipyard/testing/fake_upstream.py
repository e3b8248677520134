"""A fast, scriptable stand-in for a hosted OpenAI-compatible provider.

Used by the test suite (faults a real provider cannot be made to produce on demand) and by bench/
(an upstream fast enough that only the gateway is measured). It is never used as a stand-in for
Shipyard's own parts.

    python -m shipyard.testing.fake_upstream --port 9100 [--first-delay-ms 50 --chunk-delay-ms 10]

Control endpoints:
    POST /_fake/script   a JSON list of behaviours, consumed one per completion request:
                         {"status": 500} · {"status": 429, "retry_after": 2} · {"hang": true}
                         {"reset_after_chunks": 2} · {"reset": true} (drop the connection at once)
                         {"delay_ms": 300} · {"ok": true} · {"body": "<html>"} (this raw body, status 200
                         unless given) · {"text": "...", "piece": 4} (answer with this text, streamed
                         `piece` characters per event; chat or completion shape by the request)
                         streams also take {"chunks": 3} · {"first_delay_ms": 50} · {"chunk_delay_ms": 100}
                         {"end_after_chunks": 2} (end cleanly, without [DONE])
                         {"odd_framing": true} (valid but unusual SSE: CRLF line ends, "data:" without
                         a space, each event written in two pieces split inside its final CR LF)
    POST /_fake/health   {"ok": false} makes /health answer 503
    GET  /_fake/stats    requests seen, requests whose client went away, the last body and headers
    POST /_fake/reset    clear script and stats
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from collections import deque
from typing import Any

import httptools
import orjson

__all__ = ["FakeUpstream", "main"]

_REASONS = {
    200: b"OK",
    400: b"Bad Request",
    401: b"Unauthorized",
    404: b"Not Found",
    429: b"Too Many Requests",
    500: b"Internal Server Error",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
}


def _response(status: int, body: bytes, extra: bytes = b"", content_type: bytes = b"application/json") -> bytes:
    reason = _REASONS.get(status, b"Status")
    return (
        b"HTTP/1.1 %d %s\r\ncontent-type: %s\r\ncontent-length: %d\r\n%s\r\n"
        % (status, reason, content_type, len(body), extra)
    ) + body


class FakeUpstream:
    """Configuration and state shared by every connection."""

    def __init__(
        self,
        model: str = "fake-model",
        chunks: int = 8,
        first_delay_ms: float = 0.0,
        chunk_delay_ms: float = 0.0,
        latency_ms: float = 0.0,
        api_key: str | None = None,
    ) -> None:
        self.model = model
        self.chunks = chunks
        self.first_delay = first_delay_ms / 1000
        self.chunk_delay = chunk_delay_ms / 1000
        self.latency = latency_ms / 1000
        self.api_key = api_key
        self.script: deque[dict[str, Any]] = deque()
        self.healthy = True
        self.requests = 0
        self.cancelled = 0
        self.completed_streams = 0
        self.last_body: Any = None
        self.last_headers: dict[str, str] = {}
        completion = {
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "created": 1,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "hello from the fake"},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9},
        }
        self.ok_response = _response(200, orjson.dumps(completion))
        head = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1, "model": model}
        self.stream_head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
        self.role_event = _event(
            {
                **head,
                "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}],
            }
        )
        self.token_event = _event(
            {**head, "choices": [{"index": 0, "delta": {"content": "tok "}, "finish_reason": None}]}
        )
        self.final_event = _event({**head, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        self._head = head
        self.usage_event = self.usage_for(chunks)

    def usage_for(self, chunks: int) -> bytes:
        """The usage-only event of a stream of `chunks` content chunks (5 prompt tokens, one per chunk)."""
        usage = {"prompt_tokens": 5, "completion_tokens": chunks, "total_tokens": 5 + chunks}
        return _event({**self._head, "choices": [], "usage": usage})

    def stats(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "cancelled": self.cancelled,
            "completed_streams": self.completed_streams,
            "last_body": self.last_body,
            "last_headers": self.last_headers,
            "script_left": len(self.script),
        }


def _usage(characters: int) -> dict[str, int]:
    completion = max(1, characters // 4)
    return {"prompt_tokens": 5, "completion_tokens": completion, "total_tokens": 5 + completion}


def _event(payload: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


class _Connection(asyncio.Protocol):
    def __init__(self, fake: FakeUpstream) -> None:
        self.fake = fake
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.headers: dict[bytes, bytes] = {}
        self.body: list[bytes] = []
        self.task: asyncio.Task[None] | None = None
        self.closed = False

    # -- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.task is not None and not self.task.done():
            self.fake.cancelled += 1
            self.task.cancel()

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            assert self.transport is not None
            self.transport.write(_response(400, b'{"error":{"message":"bad http"}}'))
            self.transport.close()

    # -- httptools callbacks
    def on_message_begin(self) -> None:
        self.url, self.headers, self.body = b"", {}, []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.lower()] = value

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        assert self.transport is not None
        path = self.url.split(b"?", 1)[0]
        method = self.parser.get_method()
        if path.startswith(b"/_fake/") or path in (b"/health", b"/v1/models"):
            self.transport.write(self._control(method, path))
            return
        fake = self.fake
        fake.requests += 1
        raw = b"".join(self.body)
        try:
            body = orjson.loads(raw) if raw else {}
        except orjson.JSONDecodeError:
            body = None
        fake.last_body = body
        fake.last_headers = {k.decode(): v.decode(errors="replace") for k, v in self.headers.items()}
        if fake.api_key is not None and self.headers.get(b"authorization") != b"Bearer " + fake.api_key.encode():
            self.transport.write(_response(401, b'{"error":{"message":"bad key","type":"authentication_error"}}'))
            return
        behaviour = fake.script.popleft() if fake.script else {}
        simple = not behaviour and not fake.latency and not (isinstance(body, dict) and body.get("stream"))
        if simple:
            self.transport.write(fake.ok_response)  # the fast path: no task, no timer
            return
        self.task = asyncio.get_running_loop().create_task(self._answer(behaviour, body))

    # -- behaviours
    def _control(self, method: bytes, path: bytes) -> bytes:
        fake = self.fake
        payload = orjson.loads(b"".join(self.body) or b"null")
        if path == b"/health":
            return _response(200 if fake.healthy else 503, b'{"status":"ok"}' if fake.healthy else b"{}")
        if path == b"/v1/models":
            return _response(200, orjson.dumps({"object": "list", "data": [{"id": fake.model, "object": "model"}]}))
        if path == b"/_fake/script" and method == b"POST":
            fake.script.extend(payload or [])
        elif path == b"/_fake/health" and method == b"POST":
            fake.healthy = bool((payload or {}).get("ok", True))
        elif path == b"/_fake/reset" and method == b"POST":
            fake.script.clear()
            fake.requests = fake.cancelled = fake.completed_streams = 0
            fake.healthy = True
        return _response(200, orjson.dumps(fake.stats()))

    async def _answer(self, behaviour: dict[str, Any], body: Any) -> None:
        fake = self.fake
        transport = self.transport
        assert transport is not None
        if behaviour.get("hang"):
            await asyncio.sleep(3600)
            return
        if behaviour.get("reset"):
            transport.abort()
            return
        delay = behaviour.get("delay_ms", fake.latency * 1000) / 1000
        status = int(behaviour.get("status", 200))
        if "body" in behaviour:
            if delay:
                await asyncio.sleep(delay)
            transport.write(_response(status, str(behaviour["body"]).encode(), content_type=b"text/html"))
            return
        if status != 200:
            if delay:
                await asyncio.sleep(delay)
            extra = (
                b"retry-after: %s\r\n" % str(behaviour["retry_after"]).encode() if "retry_after" in behaviour else b""
            )
            message = orjson.dumps(
                {
                    "error": {
                        "message": f"fake failure {status}",
                        "type": "fake_error",
                        "code": behaviour.get("code"),
                    }
                }
            )
            transport.write(_response(status, message, extra))
            return
        if "text" in behaviour and isinstance(body, dict):
            await self._text(str(behaviour["text"]), int(behaviour.get("piece", 4)), body, delay)
            return
        if not (isinstance(body, dict) and body.get("stream")):
            if delay:
                await asyncio.sleep(delay)
            transport.write(fake.ok_response)
            return
        await self._stream(behaviour, body)

    async def _text(self, text: str, piece: int, body: dict[str, Any], delay: float) -> None:
        """Answer with this text: whole, or streamed `piece` characters per event (chat or completion shape)."""
        transport = self.transport
        assert transport is not None
        chat = "messages" in body
        head = {"id": "fake-text", "object": "chat.completion" if chat else "text_completion", "created": 1}
        head["model"] = self.fake.model
        if delay:
            await asyncio.sleep(delay)
        if not body.get("stream"):
            choice = (
                {"index": 0, "message": {"role": "assistant", "content": text}} if chat else {"index": 0, "text": text}
            )
            answer = {**head, "choices": [{**choice, "finish_reason": "stop"}], "usage": _usage(len(text))}
            transport.write(_response(200, orjson.dumps(answer)))
            return
        if chat:
            head["object"] = "chat.completion.chunk"
        transport.write(self.fake.stream_head)
        for at in range(0, len(text), max(1, piece)):
            part = text[at : at + piece]
            choice = {"index": 0, "delta": {"content": part}} if chat else {"index": 0, "text": part}
            transport.write(_chunk(_event({**head, "choices": [{**choice, "finish_reason": None}]})))
            await asyncio.sleep(0.002)
        end = {"index": 0, "delta": {}} if chat else {"index": 0, "text": ""}
        tail = _event({**head, "choices": [{**end, "finish_reason": "stop"}]})
        tail += _event({**head, "choices": [], "usage": _usage(len(text))}) + b"data: [DONE]\n\n"
        transport.write(_chunk(tail) + b"0\r\n\r\n")
        self.fake.completed_streams += 1

    async def _stream(self, behaviour: dict[str, Any], body: dict[str, Any]) -> None:
        fake = self.fake
        transport = self.transport
        assert transport is not None
        reset_after = behaviour.get("reset_after_chunks")
        end_after = behaviour.get("end_after_chunks")
        first = behaviour.get("first_delay_ms")
        gap = behaviour.get("chunk_delay_ms")
        gap = fake.chunk_delay if gap is None else gap / 1000
        chunks = int(behaviour.get("chunks", fake.chunks))
        odd = bool(behaviour.get("odd_framing"))
        transport.write(fake.stream_head)
        await asyncio.sleep(fake.first_delay if first is None else first / 1000)
        if odd:
            await self._send_odd(fake.role_event + fake.token_event)
        else:
            transport.write(_chunk(fake.role_event + fake.token_event))
        for index in range(1, chunks):
            if reset_after is not None and index >= reset_after:
                transport.abort()
                return
            if end_after is not None and index >= end_after:
                transport.write(b"0\r\n\r\n")
                return
            if gap:
                await asyncio.sleep(gap)
            if odd:
                await self._send_odd(fake.token_event)
            else:
                transport.write(_chunk(fake.token_event))
        tail = fake.final_event
        if (body.get("stream_options") or {}).get("include_usage"):
            tail += fake.usage_event if chunks == fake.chunks else fake.usage_for(chunks)
        tail += b"data: [DONE]\n\n"
        if odd:
            await self._send_odd(tail)
            transport.write(b"0\r\n\r\n")
        else:
            transport.write(_chunk(tail) + b"0\r\n\r\n")
        fake.completed_streams += 1

    async def _send_odd(self, events: bytes) -> None:
        transport = self.transport
        assert transport is not None
        for event in events.split(b"\n\n")[:-1]:
            raw = event.replace(b"data: ", b"data:", 1).replace(b"\n", b"\r\n") + b"\r\n\r"
            transport.write(_chunk(raw))
            await asyncio.sleep(0.01)  # the final \n arrives in a later read
            transport.write(_chunk(b"\n"))


async def serve(fake: FakeUpstream, host: str, port: int, ready: asyncio.Event | None = None) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Connection(fake), host, port, backlog=2048, reuse_address=True)
    if ready is not None:
        ready.set()
    async with server:
        with contextlib.suppress(asyncio.CancelledError):
            await server.serve_forever()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="A fake OpenAI-compatible upstream for tests and benchmarks.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model", default="fake-model")
    parser.add_argument("--chunks", type=int, default=8, help="content chunks per streamed answer")
    parser.add_argument("--first-delay-ms", type=float, default=0.0)
    parser.add_argument("--chunk-delay-ms", type=float, default=0.0)
    parser.add_argument("--latency-ms", type=float, default=0.0, help="delay of non-streamed answers")
    parser.add_argument("--api-key", help="require this bearer key")
    args = parser.parse_args(argv)
    fake = FakeUpstream(
        args.model, args.chunks, args.first_delay_ms, args.chunk_delay_ms, args.latency_ms, args.api_key
    )
    try:
        import uvloop

        uvloop.run(serve(fake, args.host, args.port))
    except ImportError:
        asyncio.run(serve(fake, args.host, args.port))


if __name__ == "__main__":
    main()
