"""`tracing.mask_pii`: traces stored with personal data redacted, while callers get the unmasked answer.

A real server with the fake provider (a third-party stand-in) scripted to answer text holding an email and a
card number; the request holds others. The stored spans (read back through /api/v1/traces/{id}) must hold
`[REDACTED_...]` and none of the values; the HTTP answers must hold them unchanged.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from shipyard.tracing.masking import PiiMasker
from tests.helpers import FakeUpstreamProcess, ShipyardProcess, start_fake_upstream, wait_until

IN_EMAIL, IN_CARD = "alice.smith@example.org", "4111 1111 1111 1111"
OUT_EMAIL, OUT_CARD = "bob@corp.example.com", "5555-5555-5555-4444"
ANSWER = f"Write to {OUT_EMAIL} and pay with {OUT_CARD}."
QUESTION = f"I am {IN_EMAIL}; charge card {IN_CARD} please"
VALUES = (IN_EMAIL, IN_CARD, OUT_EMAIL, OUT_CARD)


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeUpstreamProcess]:
    upstream = start_fake_upstream()
    try:
        yield upstream
    finally:
        upstream.stop()


def start(data_dir: Path, fake: FakeUpstreamProcess, tracing: dict[str, Any]) -> ShipyardProcess:
    config = {
        "engines": {"up": {"kind": "openai", "base_url": fake.base_url}},
        "deployments": {"d1": {"targets": [{"engine": "up", "model": "fake-model"}], "retries": 0}},
        "tracing": {"flush_interval": 0.1, **tracing},
    }
    server = ShipyardProcess(data_dir, config)
    server.start()
    server.wait_ready(60)
    return server


def stored_spans(server: ShipyardProcess, count: int) -> list[dict[str, Any]]:
    def listed() -> list[dict[str, Any]]:
        return httpx.get(server.url + "/api/v1/traces", params={"limit": 100}, timeout=10).json()["data"]

    wait_until(lambda: len(listed()) >= count, 20, what=f"{count} traces")
    spans = []
    for row in listed():
        found = httpx.get(f"{server.url}/api/v1/traces/{row['id']}", timeout=10)
        assert found.status_code == 200, found.text
        spans.extend(found.json()["spans"])
    return spans


def calls(server: ShipyardProcess, fake: FakeUpstreamProcess) -> list[str]:
    """A chat call, a streamed chat call and a completion, each answered with ANSWER; their HTTP bodies."""
    bodies = []
    for path, body in (
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": QUESTION}], "user": IN_EMAIL}),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": QUESTION}], "stream": True}),
        ("/v1/completions", {"prompt": QUESTION}),
    ):
        fake.script({"text": ANSWER})
        response = httpx.post(server.url + path, json={"model": "d1", **body}, timeout=30)
        assert response.status_code == 200, response.text
        bodies.append(response.text)
    return bodies


def test_masker_redacts_every_string_of_json_content() -> None:
    masker = PiiMasker()
    content = orjson.dumps([{"role": "user", "content": f"line\n{IN_EMAIL}", "name": IN_CARD}]).decode()
    masked = orjson.loads(masker.json_text(content))
    assert masked == [{"role": "user", "content": "line\n[REDACTED_EMAIL]", "name": "[REDACTED_CREDIT_CARD]"}]
    assert masker.json_text("plain " + OUT_EMAIL) == "plain [REDACTED_EMAIL]"
    rows = masker.rows([{"user": IN_EMAIL, "error": f"upstream_error: unknown account {IN_EMAIL}", "input": None}])
    masked_error = "upstream_error: unknown account [REDACTED_EMAIL]"
    assert rows == [{"user": "[REDACTED_EMAIL]", "error": masked_error, "input": None}]
    only_cards = PiiMasker(["credit_card"])
    assert only_cards.text(f"{IN_EMAIL} {IN_CARD}") == f"{IN_EMAIL} [REDACTED_CREDIT_CARD]"


def test_traces_are_stored_masked_and_answers_are_not(tmp_path: Path, fake: FakeUpstreamProcess) -> None:
    server = start(tmp_path, fake, {"mask_pii": True})
    try:
        bodies = calls(server, fake)
        sdk_span = {
            "trace_id": "a" * 32,
            "span_id": "b" * 16,
            "name": "sdk step",
            "start_time": 100.0,
            "end_time": 100.5,
            "input": {"question": QUESTION},
            "output": ANSWER,
        }
        accepted = httpx.post(server.url + "/api/v1/spans", json={"spans": [sdk_span]}, timeout=10)
        assert accepted.status_code == 202, accepted.text
        spans = stored_spans(server, 4)
    finally:
        server.stop()
    for body in bodies[:1] + bodies[2:]:
        assert OUT_EMAIL in body and OUT_CARD in body  # the caller's answer is unmasked
    streamed = "".join(
        orjson.loads(line[5:])["choices"][0]["delta"].get("content") or ""
        for line in bodies[1].splitlines()
        if line.startswith("data:") and "[DONE]" not in line
    )
    assert streamed == ANSWER
    assert len(spans) == 4
    stored = orjson.dumps(spans).decode()
    for value in VALUES:
        assert value not in stored, value
    for span in spans:
        assert "[REDACTED_EMAIL]" in str(span["input"]) and "[REDACTED_CREDIT_CARD]" in str(span["input"])
        assert "[REDACTED_EMAIL]" in str(span["output"]) and "[REDACTED_CREDIT_CARD]" in str(span["output"])
    chat = next(s for s in spans if s["name"] == "chat.completions" and not s["stream"])
    assert chat["output"] == {
        "role": "assistant",
        "content": "Write to [REDACTED_EMAIL] and pay with [REDACTED_CREDIT_CARD].",
    }
    assert chat["input"][0]["content"] == "I am [REDACTED_EMAIL]; charge card [REDACTED_CREDIT_CARD] please"
    assert chat["user"] == "[REDACTED_EMAIL]"


def test_without_the_setting_traces_keep_the_content(tmp_path: Path, fake: FakeUpstreamProcess) -> None:
    server = start(tmp_path, fake, {})
    try:
        calls(server, fake)
        stored = orjson.dumps(stored_spans(server, 3)).decode()
    finally:
        server.stop()
    for value in VALUES:
        assert value in stored, value
