"""The stream guard against the whole-text guard: however an answer is cut into chunks, the client receives the
same redacted text, a block always cuts before the secret, and masks are restored across chunk borders."""

from __future__ import annotations

import random
from typing import Any

import orjson
import pytest

from shipyard.guardrails.calls import CallGuard
from shipyard.guardrails.policy import GuardrailsConfig, Policy

AWS = "AKIAQWERTYUIOPASDF12"
GITHUB = "ghp_" + "aB3dE5fG7hJ9kL1mN3pQ5rS7tU9vW1xY3zA5"
PEM = "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA7bq9\nZm9vYmFy\n-----END RSA PRIVATE KEY-----"
TEXTS = [
    f"Your key is {AWS}, keep it safe. Also {GITHUB} and mail bob@example.org please.",
    f"{GITHUB}",
    f"Start. {PEM} end of the key. Then password = 'hunter2!xyz' and more words follow here.",
    "Nothing secret here at all, just a long and perfectly ordinary answer about ships and the sea. " * 3,
    f"Two keys: {AWS} {AWS} and a token "
    "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U!",
]


def _policy(action: str, window: int = 64) -> Policy:
    rules = [
        {"scanner": "secrets", "side": "output", "action": action},
        {"scanner": "pii", "side": "output", "action": action},
    ]
    return Policy(GuardrailsConfig.model_validate({"rules": rules, "stream_window": window}))


def _events(text: str, sizes: list[int]) -> list[bytes]:
    head = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m"}
    out = [
        b"data: "
        + orjson.dumps({**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]})
        + b"\n\n"
    ]
    at = 0
    for size in sizes:
        if at >= len(text):
            break
        piece = text[at : at + size]
        at += size
        out.append(
            b"data: "
            + orjson.dumps({**head, "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]})
            + b"\n\n"
        )
    out.append(
        b"data: " + orjson.dumps({**head, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}) + b"\n\n"
    )
    out.append(b"data: [DONE]\n\n")
    return out


def _run(guard: CallGuard, events: list[bytes], batch: int) -> tuple[str, list[Any], bool]:
    stream = guard.stream()
    assert stream is not None
    sent: list[bytes] = []
    for at in range(0, len(events), batch):
        sent += stream.feed(events[at : at + batch])
        if stream.stopped:
            break
    payloads = [orjson.loads(e[6:]) for e in sent if e.startswith(b"data: {")]
    text = "".join((c.get("delta") or {}).get("content") or "" for p in payloads for c in p["choices"])
    reasons = [c.get("finish_reason") for p in payloads for c in p["choices"] if c.get("finish_reason")]
    return text, reasons, sent[-1] == b"data: [DONE]\n\n"


@pytest.mark.parametrize("text", TEXTS)
def test_stream_redaction_matches_whole_text_redaction_for_any_chunking(text: str) -> None:
    expected = _policy("redact").check_text(text, "output").text
    rng = random.Random(7)
    for trial in range(60):
        sizes = [rng.randint(1, 9) for _ in range(len(text))]
        got, reasons, done = _run(CallGuard(_policy("redact"), "chat.completions"), _events(text, sizes), 1 + trial % 3)
        assert got == expected, (sizes[:20], got)
        assert reasons == ["stop"] and done


@pytest.mark.parametrize("text", TEXTS[:3] + TEXTS[4:])
def test_a_block_never_lets_any_part_of_the_secret_out(text: str) -> None:
    rng = random.Random(11)
    for _ in range(40):
        sizes = [rng.randint(1, 7) for _ in range(len(text))]
        guard = CallGuard(_policy("block"), "chat.completions")
        got, reasons, done = _run(guard, _events(text, sizes), 1)
        assert reasons == ["content_filter"] and done and guard.output_blocked
        for secret in (AWS, GITHUB, "MIIEowIBAAKCAQEA7bq9", "hunter2!xyz", "bob@example.org"):
            if secret in text:
                assert secret[:8] not in got and secret[-8:] not in got, got


def test_nothing_is_found_in_ordinary_text_and_it_all_arrives() -> None:
    guard = CallGuard(_policy("block"), "chat.completions")
    got, reasons, _ = _run(guard, _events(TEXTS[3], [5] * 400), 2)
    assert got == TEXTS[3] and reasons == ["stop"] and guard.findings == []


def test_masks_are_restored_whatever_the_chunking() -> None:
    policy = Policy(GuardrailsConfig.model_validate({"rules": [{"scanner": "pii", "side": "input", "action": "mask"}]}))
    guard = CallGuard(policy, "chat.completions")
    body = guard.guard_request({"messages": [{"role": "user", "content": "mail ann@example.com and bo@example.net"}]})
    assert body["messages"][0]["content"] == "mail [EMAIL_1] and [EMAIL_2]"
    answer = "Done: [EMAIL_2] first, then [EMAIL_1], then [EMAIL_2] again."
    for size in range(1, 9):
        got, _, _ = _run(guard, _events(answer, [size] * 100), 1)
        assert got == "Done: bo@example.net first, then ann@example.com, then bo@example.net again."
