"""Server-Sent Events relay: forwards each complete event as it arrives and reads usage on the way.

The gateway always asks streaming engines for usage (`stream_options.include_usage`), so every
call is recorded with its token counts; the usage-only event is dropped when the client did not ask.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

__all__ = ["SseSplitter", "StreamFacts"]

DONE = b"[DONE]"


class StreamFacts:
    """What the relay learnt about the stream."""

    __slots__ = ("done", "error", "events", "first_content", "usage")

    def __init__(self) -> None:
        self.done = False
        self.first_content: float | None = None  # perf_counter of the first event carrying text
        self.error: dict[str, Any] | None = None
        self.usage: dict[str, Any] | None = None
        self.events = 0


class SseSplitter:
    """Splits a byte stream into SSE events and decides which to forward."""

    def __init__(self, client_wants_usage: bool) -> None:
        self._buffer = b""
        self._wants_usage = client_wants_usage
        self.facts = StreamFacts()

    def feed(self, chunk: bytes) -> list[bytes]:
        """Return the complete events (each ending in a blank line) to forward now."""
        buffer = self._buffer
        data = buffer + chunk if buffer else chunk
        if b"\r" in chunk or buffer[-1:] == b"\r":  # CRLF line ends, maybe split between two reads
            data = data.replace(b"\r\n", b"\n")
        out: list[bytes] = []
        start = 0
        while True:
            end = data.find(b"\n\n", start)
            if end < 0:
                break
            event = data[start : end + 2]
            start = end + 2
            if self._inspect(event):
                out.append(event)
        self._buffer = data[start:]
        return out

    def _inspect(self, event: bytes) -> bool:
        facts = self.facts
        facts.events += 1
        if len(event) < 24 and event.startswith(b"data:") and event[5:].strip() == DONE:  # "data:[DONE]" too
            facts.done = True
            return True
        if facts.first_content is None and _has_text(event):
            facts.first_content = time.perf_counter()
        if b'"usage"' not in event and b'"error"' not in event:
            return True
        payload = _data_json(event)
        if payload is None:
            return True
        if isinstance(payload.get("error"), dict):
            facts.error = payload["error"]
            return True
        usage = payload.get("usage")
        if isinstance(usage, dict):
            facts.usage = usage
            if not payload.get("choices") and not self._wants_usage:
                return False
        return True

    @property
    def leftover(self) -> bytes:
        return self._buffer


def _has_text(event: bytes) -> bool:
    for key in (b'"content":"', b'"text":"'):
        at = event.find(key)
        if at >= 0 and event[at + len(key) : at + len(key) + 1] != b'"':
            return True
    return False


def _data_json(event: bytes) -> dict[str, Any] | None:
    lines = [line[5:].lstrip() for line in event.split(b"\n") if line.startswith(b"data:")]
    if not lines:
        return None
    try:
        payload = orjson.loads(b"\n".join(lines))
    except orjson.JSONDecodeError:
        return None
    return payload if isinstance(payload, dict) else None
