"""A streaming fake upstream that records when it really wrote each chunk: the truth for loadtest_accuracy.

    .venv/bin/python -m bench.loadtest_upstream --port 9400 --first-delay-ms 50 --chunk-delay-ms 10 --chunks 8

Every POST answers an SSE stream: the first content chunk `first-delay-ms` after the request was read,
then one every `chunk-delay-ms`, then usage and [DONE]. Timers are absolute (each chunk is due at
request time + first + k * gap, never drifting), and the moment of every write is recorded with
time.monotonic(). GET /_truth returns, per finished request, [ttft, itl, itl, ...] in seconds as the
server really sent them; POST /_reset clears them.
"""

from __future__ import annotations

import argparse
import asyncio
import time

import orjson

HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def _event(payload: dict) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


class Upstream:
    def __init__(self, first: float, gap: float, chunks: int) -> None:
        self.first, self.gap, self.chunks = first, gap, chunks
        self.truth: list[list[float]] = []
        head = {"id": "x", "object": "chat.completion.chunk", "created": 1, "model": "m"}
        self.token = _chunk(_event({**head, "choices": [{"index": 0, "delta": {"content": "tok "}}]}))
        usage = {"prompt_tokens": 5, "completion_tokens": chunks, "total_tokens": 5 + chunks}
        self.tail = _chunk(_event({**head, "choices": [], "usage": usage}) + b"data: [DONE]\n\n") + b"0\r\n\r\n"


class Conn(asyncio.Protocol):
    def __init__(self, up: Upstream) -> None:
        self.up = up
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end].decode("latin-1")
            length = 0
            for line in head.split("\r\n")[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            if len(self.buffer) < end + 4 + length:
                return
            self.buffer = self.buffer[end + 4 + length :]
            self.handle(head.split(" ", 2)[:2])

    def handle(self, request_line: list[str]) -> None:
        assert self.transport is not None
        method, path = request_line
        if path == "/_truth":
            body = orjson.dumps(self.up.truth)
            self.transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(body) + body)
            return
        if path in ("/_reset", "/health"):
            if path == "/_reset":
                self.up.truth.clear()
            self.transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}")
            return
        asyncio.get_running_loop().create_task(self.stream(time.monotonic()))

    async def stream(self, received: float) -> None:
        up, transport = self.up, self.transport
        assert transport is not None
        transport.write(HEAD)
        writes = []
        for k in range(up.chunks):
            due = received + up.first + k * up.gap
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            transport.write(up.token)
            writes.append(time.monotonic())
        transport.write(up.tail)
        up.truth.append([writes[0] - received] + [b - a for a, b in zip(writes, writes[1:], strict=False)])


async def serve(up: Upstream, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Conn(up), "127.0.0.1", port, backlog=4096)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--first-delay-ms", type=float, default=50)
    parser.add_argument("--chunk-delay-ms", type=float, default=10)
    parser.add_argument("--chunks", type=int, default=8)
    args = parser.parse_args()
    up = Upstream(args.first_delay_ms / 1000, args.chunk_delay_ms / 1000, args.chunks)
    asyncio.run(serve(up, args.port))


if __name__ == "__main__":
    main()
