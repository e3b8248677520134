"""Turning a growing list of token ids into text deltas, and cutting at stop sequences. Pure code."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

__all__ = ["Detokenizer", "IncrementalDecoder", "StopMatcher"]


class Detokenizer(Protocol):
    def decode(self, token_ids: Sequence[int], skip_special_tokens: bool = ...) -> str: ...


class IncrementalDecoder:
    """Emits only text that is final: a multi-byte character split across tokens waits for its end.

    Decoding a window that starts a few tokens back keeps the leading-space rules of
    SentencePiece/BPE tokenizers right without re-decoding the whole output each step.
    """

    def __init__(self, tokenizer: Detokenizer) -> None:
        self._tokenizer = tokenizer
        self._tokens: list[int] = []
        self._prefix = 0  # start of the decoding window
        self._read = 0  # tokens already turned into emitted text

    def push(self, tokens: Sequence[int]) -> str:
        """Give the full list of generated tokens so far; get the new text."""
        if len(tokens) <= len(self._tokens):
            return ""
        self._tokens = list(tokens)
        decode = self._tokenizer.decode
        before = decode(self._tokens[self._prefix : self._read], skip_special_tokens=True)
        after = decode(self._tokens[self._prefix :], skip_special_tokens=True)
        if after.endswith("\ufffd") or len(after) <= len(before):
            return ""
        self._prefix = self._read
        self._read = len(self._tokens)
        return after[len(before) :]

    def flush(self) -> str:
        """At the end: whatever is left, even an incomplete character."""
        decode = self._tokenizer.decode
        before = decode(self._tokens[self._prefix : self._read], skip_special_tokens=True)
        after = decode(self._tokens[self._prefix :], skip_special_tokens=True)
        self._prefix = self._read = len(self._tokens)
        return after[len(before) :] if len(after) > len(before) else ""


class StopMatcher:
    """Holds back text that might be the start of a stop sequence; reports when one is complete."""

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = [s for s in stops if s]
        self._longest = max((len(s) for s in self._stops), default=0)
        self._pending = ""
        self.stopped = False

    def feed(self, text: str) -> str:
        """Add new text; return what can be sent now (everything before any stop sequence)."""
        if self.stopped:
            return ""
        if not self._stops:
            return text
        buffer = self._pending + text
        first = min((i for i in (buffer.find(s) for s in self._stops) if i >= 0), default=-1)
        if first >= 0:
            self.stopped = True
            self._pending = ""
            return buffer[:first]
        # Keep the longest tail of the buffer that is a prefix of some stop sequence.
        keep = 0
        for size in range(min(self._longest - 1, len(buffer)), 0, -1):
            tail = buffer[-size:]
            if any(s.startswith(tail) for s in self._stops):
                keep = size
                break
        self._pending = buffer[len(buffer) - keep :] if keep else ""
        return buffer[: len(buffer) - keep]

    def flush(self) -> str:
        """The generation ended without a stop sequence: release what was held back."""
        pending, self._pending = self._pending, ""
        return "" if self.stopped else pending
