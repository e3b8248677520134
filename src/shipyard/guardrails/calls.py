"""Guardrails applied to one gateway call: the request body, a JSON answer, or a stream event by event.

Every entry point goes through here: chat and text completions, streamed or not. A prompt given as
token ids cannot be scanned, so a deployment with input rules refuses it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import orjson

from shipyard.errors import InvalidRequest
from shipyard.guardrails.base import Finding
from shipyard.guardrails.policy import GuardRule, Masks, Policy, TextVerdict, blocked_error, rewrite

__all__ = ["CallGuard", "StreamGuard"]

CONTENT_FILTER = "content_filter"


class CallGuard:
    """The guardrails of one call: what was found (never the matched text), masks to restore."""

    def __init__(self, policy: Policy, endpoint: str) -> None:
        self.policy = policy
        self.chat = endpoint == "chat.completions"
        self.masks = Masks()
        self.findings: list[dict[str, Any]] = []
        self.output_blocked = False

    def _note(self, verdict: TextVerdict, side: str, where: str) -> None:
        for rule, finding in verdict.findings:
            self.findings.append({**finding.describe(), "side": side, "action": rule.action, "where": where})

    def _check(self, text: str, where: str) -> str:
        verdict = self.policy.check_text(text, "input", self.masks)
        self._note(verdict, "input", where)
        if verdict.blocked is not None:
            raise blocked_error(*verdict.blocked, where)
        return verdict.text

    def guard_request(self, body: dict[str, Any]) -> dict[str, Any]:
        """The body the engine will see: blocked, redacted or masked by the input rules."""
        if not self.policy.input:
            return body
        if self.chat:
            messages = [self._message(m, i) for i, m in enumerate(body.get("messages") or [])]
            return {**body, "messages": messages}
        prompt = body.get("prompt")
        if isinstance(prompt, str):
            return {**body, "prompt": self._check(prompt, "prompt")}
        if isinstance(prompt, list) and all(isinstance(p, str) for p in prompt):
            return {**body, "prompt": [self._check(p, f"prompt[{i}]") for i, p in enumerate(prompt)]}
        raise InvalidRequest(
            "This deployment scans prompts with guardrails; send the prompt as text, not token ids.",
            param="prompt",
            code="guardrail_unscannable",
        )

    def _message(self, message: Any, index: int) -> Any:
        if not isinstance(message, dict):
            return message
        content = message.get("content")
        where = f"messages[{index}].content"
        if isinstance(content, str):
            return {**message, "content": self._check(content, where)}
        if isinstance(content, list):
            parts = []
            for n, part in enumerate(content):
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    part = {**part, "text": self._check(part["text"], f"{where}[{n}]")}
                parts.append(part)
            return {**message, "content": parts}
        return message

    def guard_answer(self, payload: dict[str, Any]) -> None:
        """A whole JSON answer: output rules on each choice's text, then masks restored (in place)."""
        for choice in payload.get("choices") or []:
            if not isinstance(choice, dict):
                continue
            holder, key = (choice.get("message"), "content") if self.chat else (choice, "text")
            if not isinstance(holder, dict) or not isinstance(holder.get(key), str):
                continue
            text, blocked = self.output_text(holder[key], f"choices[{choice.get('index', 0)}]")
            holder[key] = self.masks.restore(text)
            if blocked:
                choice["finish_reason"] = CONTENT_FILTER

    def output_text(self, text: str, where: str) -> tuple[str, bool]:
        """Output rules over a finished text: (text to send, whether a block rule fired)."""
        if not self.policy.output:
            return text, False
        verdict = self.policy.check_text(text, "output")
        self._note(verdict, "output", where)
        if verdict.blocked is not None:
            self.output_blocked = True
            return "", True
        return verdict.text, False

    def stream(self) -> StreamGuard | None:
        """A guard for a streamed answer, or None when there is nothing to do on the way out."""
        if not self.policy.output and not self.masks.originals:
            return None
        return StreamGuard(self, self.policy.config.stream_window)


@dataclass
class _Choice:
    pending: str = ""  # received, not yet sent
    sent_tail: str = ""  # the last `window` characters sent, scanned again as context
    sent: int = 0  # characters sent so far
    finished: bool = False
    reported: set[tuple[str, str, int]] = field(default_factory=set)


class StreamGuard:
    """Holds back `window` characters of each choice, scans what it holds with the output rules, and sends the
    rest redacted and with masks restored. A block ends the stream with `finish_reason: "content_filter"`."""

    def __init__(self, guard: CallGuard, window: int) -> None:
        self.guard = guard
        self.window = window
        self.stopped = False
        self._choices: dict[int, _Choice] = {}
        self._envelope: dict[str, Any] = {}

    def feed(self, events: list[bytes]) -> list[bytes]:
        out: list[bytes] = []
        for event in events:
            if self.stopped:
                break
            payload = _payload(event)
            if payload is None or not payload.get("choices"):
                out.append(event)  # [DONE], usage-only and error events pass as they are
                continue
            self._envelope = {k: v for k, v in payload.items() if k not in ("choices", "usage")}
            keep = [c for c in (self._choice(c) for c in payload["choices"]) if c is not None]
            if self.stopped:
                out.append(self._cut_event())
                out.append(b"data: [DONE]\n\n")
                break
            if keep or payload.get("usage"):
                out.append(b"data: " + orjson.dumps({**payload, "choices": keep}) + b"\n\n")
        return out

    def _choice(self, choice: dict[str, Any]) -> dict[str, Any] | None:
        index = int(choice.get("index", 0))
        state = self._choices.setdefault(index, _Choice())
        holder, key = (choice.get("delta") or {}, "content") if self.guard.chat else (choice, "text")
        text = holder.get(key)
        if isinstance(text, str):
            state.pending += text
        finishing = choice.get("finish_reason") is not None
        send = self._release(state, index, finishing)
        if self.stopped:
            return None
        if finishing:
            state.finished = True
        other = {k: v for k, v in (holder.items() if self.guard.chat else ()) if k != key and v is not None}
        if not send and not finishing and not other and not (self.guard.chat and "role" in holder):
            return None  # nothing to say yet: the text is held back
        if self.guard.chat:
            return {**choice, "delta": {**holder, key: send}}
        return {**choice, key: send}

    def _release(self, state: _Choice, index: int, finishing: bool) -> str:
        """Scan the held-back text (with the sent tail as context); return what may be sent now.

        Only text at least `window` characters behind the newest is settled: redactions are applied there, and
        a finding that crosses that line (a token whose rest may still be arriving) holds the line back to its
        start. So the client gets the same text whatever the chunking, given `window` characters of context.
        """
        if not self.guard.policy.output:
            cut = len(state.pending) if finishing else _safe_cut(state.pending, self.window)
            return self._send(state, state.pending[:cut], cut)
        tail = len(state.sent_tail)
        verdict = self.guard.policy.check_text(state.sent_tail + state.pending, "output")
        self._report(state, index, verdict.findings)
        if verdict.blocked is not None:
            self.stopped = True
            self.guard.output_blocked = True
            return ""
        # Redactions in held-back coordinates; a part already sent cannot be taken back.
        edits = [
            (replace(f, start=max(f.start, tail) - tail, end=f.end - tail), rule.action)
            for rule, f in verdict.findings
            if rule.action in ("redact", "mask") and f.end > tail
        ]
        cut = len(state.pending) if finishing else _safe_cut(state.pending, self.window)
        while any(f.start < cut < f.end for f, _ in edits):
            cut = min(f.start for f, _ in edits if f.start < cut < f.end)
        settled = rewrite(state.pending[:cut], [(f, a) for f, a in edits if f.end <= cut], None)
        state.pending = settled + state.pending[cut:]
        return self._send(state, settled, len(settled))

    def _report(self, state: _Choice, index: int, findings: list[tuple[GuardRule, Finding]]) -> None:
        base = state.sent - len(state.sent_tail)
        for rule, finding in findings:
            seen = (rule.scanner, finding.kind, base + finding.start)
            if seen not in state.reported:
                state.reported.add(seen)
                where = f"choices[{index}]"
                self.guard.findings.append(
                    {**finding.describe(), "side": "output", "action": rule.action, "where": where}
                )

    def _send(self, state: _Choice, text: str, cut: int) -> str:
        state.pending = state.pending[cut:]
        state.sent += len(text)
        state.sent_tail = (state.sent_tail + text)[-self.window :] if self.window else ""
        return self.guard.masks.restore(text)

    def _cut_event(self) -> bytes:
        choices = []
        for index, state in sorted(self._choices.items()):
            if state.finished:
                continue
            end: dict[str, Any] = {"index": index, "finish_reason": CONTENT_FILTER}
            end.update({"delta": {}} if self.guard.chat else {"text": ""})
            choices.append(end)
        return b"data: " + orjson.dumps({**self._envelope, "choices": choices}) + b"\n\n"


def _safe_cut(text: str, window: int) -> int:
    """Where to cut `text` so `window` characters stay held back and no `[PLACEHOLDER_n]` is split."""
    cut = max(0, len(text) - window)
    opening = text.rfind("[", max(0, cut - 40), cut)
    if opening >= 0 and "]" not in text[opening:cut]:
        cut = opening
    return cut


def _payload(event: bytes) -> dict[str, Any] | None:
    if not event.startswith(b"data:"):
        return None
    body = event[5:].strip()
    if not body.startswith(b"{"):
        return None
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None
