"""Wire format of a load test, apart from transport: request bodies and streamed answers.

`build_body` turns one `LoadRequest` into the JSON the target receives; `StreamTimer` is fed the raw
bytes of a streamed answer as they arrive, each read with the moment it arrived, and learns the time
of every content-bearing event, the usage the server reported and how the stream ended. Both are pure
and tested without HTTP.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

__all__ = ["Endpoint", "LoadRequest", "StreamTimer", "build_body", "endpoint_path"]

Endpoint = Literal["chat", "completions"]


@dataclass(frozen=True, slots=True)
class LoadRequest:
    """One request of a load test, independent of the endpoint it is sent to."""

    messages: list[dict[str, Any]] | None = None
    prompt: str | None = None
    max_tokens: int | None = None
    input_tokens: int | None = None  # what the source believes the prompt holds (None: unknown)
    params: dict[str, Any] = field(default_factory=dict)  # other body fields (temperature, ...)

    def __post_init__(self) -> None:
        if (self.messages is None) == (self.prompt is None):
            raise ValueError("a load request has either messages or a prompt")


def endpoint_path(endpoint: Endpoint) -> str:
    return "/chat/completions" if endpoint == "chat" else "/completions"


def build_body(request: LoadRequest, model: str, endpoint: Endpoint, extra: dict[str, Any] | None = None) -> bytes:
    """The streamed request body; usage is always asked for so token counts come from the server."""
    body: dict[str, Any] = {"model": model}
    if endpoint == "chat":
        body["messages"] = request.messages or [{"role": "user", "content": request.prompt}]
    else:
        body["prompt"] = request.prompt if request.prompt is not None else _flatten(request.messages or [])
    if request.max_tokens is not None:
        body["max_tokens"] = request.max_tokens
    body.update(request.params)
    body.update(extra or {})
    body["stream"] = True
    body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
    return orjson.dumps(body)


def _flatten(messages: list[dict[str, Any]]) -> str:
    parts = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, list):
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        parts.append(str(content or ""))
    return "\n".join(parts)


class StreamTimer:
    """Splits an SSE byte stream into events and times the ones that carry generated text.

    `content_times` holds one arrival time per content event (several events delivered by one read share
    that read's time, which is what the client saw). `chunks` counts content events; `usage` is the
    server's usage object when it sent one; `done` is True once `[DONE]` arrived; `error` holds the error
    object of an error event.
    """

    __slots__ = ("_buffer", "chunks", "content_times", "done", "error", "usage")

    def __init__(self) -> None:
        self._buffer = b""
        self.content_times: list[float] = []
        self.chunks = 0
        self.usage: dict[str, Any] | None = None
        self.done = False
        self.error: dict[str, Any] | None = None

    def feed(self, data: bytes, at: float) -> None:
        buffer = self._buffer + data if self._buffer else data
        if b"\r" in buffer:
            if buffer.endswith(b"\r"):  # a CR LF may be split across reads: wait for the rest
                self._buffer = buffer
                return
            buffer = buffer.replace(b"\r\n", b"\n")
        start = 0
        while True:
            end = buffer.find(b"\n\n", start)
            if end < 0:
                break
            self._event(buffer[start:end], at)
            start = end + 2
        self._buffer = buffer[start:]

    def _event(self, event: bytes, at: float) -> None:
        for line in event.split(b"\n"):
            if not line.startswith(b"data:"):
                continue  # comments, `event:` and `id:` lines carry no text
            payload = line[5:].strip()
            if payload == b"[DONE]":
                self.done = True
                continue
            try:
                obj = orjson.loads(payload)
            except orjson.JSONDecodeError:
                self.error = {"message": "unparseable event", "type": "invalid_response"}
                continue
            if not isinstance(obj, dict):
                continue
            if "error" in obj:
                self.error = obj["error"] if isinstance(obj["error"], dict) else {"message": str(obj["error"])}
                continue
            if obj.get("usage"):
                self.usage = obj["usage"]
            if _has_text(obj.get("choices")):
                self.chunks += 1
                self.content_times.append(at)

    @property
    def output_tokens(self) -> int | None:
        """Completion tokens as the server counted them, else None."""
        if self.usage and isinstance(self.usage.get("completion_tokens"), int):
            return self.usage["completion_tokens"]
        return None

    @property
    def input_tokens(self) -> int | None:
        if self.usage and isinstance(self.usage.get("prompt_tokens"), int):
            return self.usage["prompt_tokens"]
        return None


def _has_text(choices: Any) -> bool:
    if not choices or not isinstance(choices, list):
        return False
    for choice in choices:
        if not isinstance(choice, dict):
            continue
        delta = choice.get("delta")
        if isinstance(delta, dict):
            if delta.get("content") or delta.get("reasoning_content") or delta.get("tool_calls"):
                return True
        elif choice.get("text"):
            return True
    return False
