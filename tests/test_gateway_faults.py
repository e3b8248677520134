"""Faults, as a trusted gateway must handle them: retries and backoff, one deadline, 429 cooling, ejection,
fallbacks, broken streams and client disconnects.

One real `shipyard up` serves the whole module; each test uses its own deployments (target state such as
cooling and ejection is per deployment), and the fake hosted providers (a third-party stand-in) are reset
before every test.
"""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest
import yaml

from shipyard.config import Settings
from tests.helpers import FakeUpstreamProcess, ShipyardProcess, free_port, start_fake_upstream, wait_until

MSG = [{"role": "user", "content": "hi"}]
GUIDE = Path(__file__).resolve().parent.parent / "docs" / "gateway.md"


@dataclass
class Fleet:
    server: ShipyardProcess
    a: FakeUpstreamProcess  # a hosted provider
    b: FakeUpstreamProcess  # another one
    h: FakeUpstreamProcess  # one whose /health the gateway polls


def _dep(*targets: str | tuple[str, float], **extra: Any) -> dict[str, Any]:
    """A deployment over engines (optionally weighted), with a short backoff unless given."""
    listed = []
    for target in targets:
        engine, weight = target if isinstance(target, tuple) else (target, 1.0)
        listed.append({"engine": engine, "model": "fake-model", "weight": weight})
    return {"targets": listed, "backoff": 0.01, **extra}


DEPLOYMENTS: dict[str, dict[str, Any]] = {
    "retry": _dep("a", retries=2),
    "conn-retry": _dep("a", retries=2),
    "backoff": _dep("a", retries=3, backoff=0.2, backoff_max=5),
    "bounded": _dep("a", retries=1),
    "no-retry-400": _dep("a", retries=3),
    "no-retry-401": _dep("a", retries=3),
    "no-retry-404": _dep("a", retries=3),
    "bad-body": _dep("a", retries=1),
    "cool": _dep(("a", 1e6), ("b", 1)),  # "a" takes the first request; after its 429, "b" takes the rest
    "limited": _dep("a", timeout=5),
    **{f"limited-now-{n}": _dep("a", retries=0) for n in ("none", "inf", "soon")},
    "limited-fb": _dep("a", timeout=5, fallbacks=["backup"]),
    "wait429": _dep("a", timeout=10),
    "deadline": _dep("a", timeout=2, retries=3),
    "attempt": _dep("a", timeout=10, attempt_timeout=0.5, retries=2),
    "eject": _dep(("a", 1e6), ("b", 1), retries=3),
    "all-bad": {"targets": [{"engine": "a", "model": "m1"}, {"engine": "a", "model": "m2"}], "retries": 1},
    "main": _dep("dead", retries=1, fallbacks=["backup"]),
    "backup": _dep("b"),
    "down": _dep("dead", retries=1),
    "health": _dep("h"),
    "relay": _dep("a"),
    "usage": _dep("a"),
    "stream-reset": _dep("a"),
    "stream-end": _dep("a"),
    "stream-retry": _dep("a"),
    "stream-long": _dep("a", timeout=1),
    "odd": _dep("a"),
    "slow-stream": _dep("a"),
    "slow-json": _dep("a"),
}


@pytest.fixture(scope="module")
def running_fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    fakes = [start_fake_upstream() for _ in range(3)]
    a, b, h = fakes
    config = {
        "ejection": {"consecutive_failures": 2, "base_seconds": 60},
        "engines": {
            "a": {"kind": "openai", "base_url": a.base_url},
            "b": {"kind": "openai", "base_url": b.base_url},
            "h": {"kind": "openai", "base_url": h.base_url, "health_path": "/health", "health_interval": 0.2},
            "dead": {"kind": "openai", "base_url": f"http://127.0.0.1:{free_port()}/v1"},  # nothing listens
        },
        "deployments": DEPLOYMENTS,
    }
    server = ShipyardProcess(tmp_path_factory.mktemp("faults"), config=config)
    try:
        server.start()
        server.wait_ready(60)
        yield Fleet(server, a, b, h)
    finally:
        server.stop()
        for fake in fakes:
            fake.stop()


@pytest.fixture()
def fleet(running_fleet: Fleet) -> Fleet:
    """The module's server, with the fakes' scripts and counters reset for this test."""
    for fake in (running_fleet.a, running_fleet.b, running_fleet.h):
        fake.reset()
    return running_fleet


def _client(fleet: Fleet, timeout: float = 30) -> openai.OpenAI:
    return openai.OpenAI(base_url=fleet.server.url + "/v1", api_key="x", max_retries=0, timeout=timeout)


def _post(fleet: Fleet, model: str, timeout: float = 30, **extra: Any) -> httpx.Response:
    body = {"model": model, "messages": MSG, **extra}
    return httpx.post(fleet.server.url + "/v1/chat/completions", json=body, timeout=timeout)


def _error(response: httpx.Response, status: int) -> dict[str, Any]:
    """The response is `status` with an OpenAI-shaped error; return the error object."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    return body["error"]


def _calls(fleet: Fleet, deployment: str, count: int = 1) -> list[dict[str, Any]]:
    """The newest call records of a deployment, once `count` of them are written."""
    url = fleet.server.url + "/api/v1/calls"

    def rows() -> list[dict[str, Any]]:
        return httpx.get(url, params={"deployment": deployment}, timeout=10).json()["data"]

    wait_until(lambda: len(rows()) >= count, 10, what=f"{count} call record(s) of {deployment}")
    return rows()


def _targets(fleet: Fleet, deployment: str, source: str) -> dict[str, dict[str, Any]]:
    """A deployment's targets by label, as GET /readyz or GET /api/v1/deployments shows them."""
    if source == "readyz":
        targets = httpx.get(fleet.server.url + "/readyz", timeout=5).json()["deployments"][deployment]["targets"]
    else:
        listed = httpx.get(fleet.server.url + "/api/v1/deployments", timeout=5).json()["data"]
        targets = next(d for d in listed if d["name"] == deployment)["targets"]
    return {f"{t['engine']}/{t['model']}": t for t in targets}


# -- retries and backoff ---------------------------------------------------------------------------------------


def test_5xx_then_success_is_retried(fleet: Fleet) -> None:
    fleet.a.script({"status": 500}, {"status": 503})
    answer = _client(fleet).chat.completions.create(model="retry", messages=MSG)
    assert answer.choices[0].message.content == "hello from the fake"
    assert fleet.a.stats()["requests"] == 3
    call = _calls(fleet, "retry")[0]
    assert (call["status"], call["attempts"], call["error_code"]) == (200, 3, None)


def test_connection_errors_then_success_are_retried(fleet: Fleet) -> None:
    fleet.a.script({"reset": True}, {"reset": True})  # the engine drops the connection before answering
    assert _post(fleet, "conn-retry").json()["choices"][0]["message"]["content"] == "hello from the fake"
    assert fleet.a.stats()["requests"] == 3


def test_backoff_doubles_between_retries(fleet: Fleet) -> None:
    # backoff 0.2 s: the three waits are drawn from [0.1, 0.2], [0.2, 0.4] and [0.4, 0.8] (jitter is the upper half)
    fleet.a.script({"status": 500}, {"status": 500}, {"status": 500})
    started = time.monotonic()
    assert _post(fleet, "backoff").status_code == 200
    elapsed = time.monotonic() - started
    assert fleet.a.stats()["requests"] == 4
    assert elapsed >= 0.7, f"the waits did not double: {elapsed:.2f}s in all"


def test_retries_are_bounded(fleet: Fleet) -> None:
    fleet.a.script(*[{"status": 500}] * 5)
    error = _error(_post(fleet, "bounded"), 502)
    assert error["code"] == "upstream_error" and "HTTP 500" in error["message"]
    assert fleet.a.stats()["requests"] == 2  # retries: 1


@pytest.mark.parametrize(("status", "expected"), [(400, 400), (404, 404), (401, 502)])
def test_no_retry_on_client_errors(fleet: Fleet, status: int, expected: int) -> None:
    fleet.a.script({"status": status})
    error = _error(_post(fleet, f"no-retry-{status}"), expected)
    assert fleet.a.stats()["requests"] == 1  # retries: 3, yet one attempt
    if status == 401:  # Shipyard's key for the engine is wrong, not the caller's: never a 401 to the client
        assert error["code"] == "upstream_auth_failed"
        assert "'a'" in error["message"] and "credentials" in error["message"] and "api_key_env" in error["message"]
    else:  # the engine's own answer is passed on
        assert error["message"] == f"fake failure {status}"


def test_a_200_that_is_not_json_is_retried(fleet: Fleet) -> None:
    fleet.a.script({"body": "<html>proxy error</html>"})
    assert _post(fleet, "bad-body").json()["choices"][0]["message"]["content"] == "hello from the fake"
    fleet.a.script({"body": "<html>proxy error</html>"}, {"body": "<html>proxy error</html>"})
    error = _error(_post(fleet, "bad-body"), 502)
    assert error["code"] == "upstream_bad_response" and "proxy error" in error["message"]
    assert fleet.a.stats()["requests"] == 4


# -- 429 and Retry-After ---------------------------------------------------------------------------------------


def test_429_cools_the_target_and_the_next_is_tried(fleet: Fleet) -> None:
    fleet.a.script({"status": 429, "retry_after": 30})
    for _ in range(5):
        assert _post(fleet, "cool").status_code == 200
    assert fleet.a.stats()["requests"] == 1  # cooling: not asked again
    assert fleet.b.stats()["requests"] == 5
    for source in ("readyz", "api"):
        targets = _targets(fleet, "cool", source)
        assert targets["a/fake-model"]["cooling"] is True and targets["b/fake-model"]["cooling"] is False


def test_429_comes_back_when_the_wait_does_not_fit(fleet: Fleet) -> None:
    fleet.a.script({"status": 429, "retry_after": 60})
    response = _post(fleet, "limited")  # timeout 5 s: a 60 s wait does not fit
    error = _error(response, 429)
    assert error["type"] == "rate_limit_error" and error["code"] == "upstream_rate_limited"
    assert 50 <= int(response.headers["retry-after"]) <= 60
    assert fleet.a.stats()["requests"] == 1  # retries were left, but a cooling target is not hammered


@pytest.mark.parametrize("retry_after", [None, "inf", "soon"])
def test_429_without_a_usable_retry_after_still_says_when(fleet: Fleet, retry_after: str | None) -> None:
    # absent or unreadable: the target cools for 1 s, and the caller is told so (never a 500)
    fleet.a.script({"status": 429} if retry_after is None else {"status": 429, "retry_after": retry_after})
    response = _post(fleet, f"limited-now-{retry_after or 'none'}")
    assert _error(response, 429)["code"] == "upstream_rate_limited"
    assert response.headers["retry-after"] == "1"


def test_429_short_wait_is_waited_out(fleet: Fleet) -> None:
    fleet.a.script({"status": 429, "retry_after": 1})
    started = time.monotonic()
    assert _post(fleet, "wait429").status_code == 200
    assert time.monotonic() - started >= 0.9
    assert fleet.a.stats()["requests"] == 2


def test_429_without_room_to_wait_falls_back(fleet: Fleet) -> None:
    fleet.a.script({"status": 429, "retry_after": 60})
    assert _post(fleet, "limited-fb").status_code == 200
    assert (fleet.a.stats()["requests"], fleet.b.stats()["requests"]) == (1, 1)
    call = _calls(fleet, "limited-fb")[0]
    assert (call["served_by"], call["engine"]) == ("backup", "b")


# -- one deadline ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
def test_one_deadline_across_retries(fleet: Fleet, stream: bool) -> None:
    fleet.a.script(*[{"hang": True}] * 4)  # timeout 2 s, retries 3: never 4 × 2 s
    started = time.monotonic()
    response = _post(fleet, "deadline", stream=stream)
    elapsed = time.monotonic() - started
    error = _error(response, 504)
    assert error["type"] == "timeout_error"
    assert 1.9 <= elapsed < 3.5, elapsed


def test_attempt_timeout_moves_on_to_the_next_try(fleet: Fleet) -> None:
    fleet.a.script({"hang": True})
    started = time.monotonic()
    assert _post(fleet, "attempt").status_code == 200
    assert time.monotonic() - started < 3  # attempt_timeout 0.5 s, not the 10 s deadline
    assert fleet.a.stats()["requests"] == 2


# -- ejection and fallbacks -------------------------------------------------------------------------------------


def test_a_failing_target_is_ejected(fleet: Fleet) -> None:
    fleet.a.script(*[{"status": 500}] * 100)
    for _ in range(10):
        assert _post(fleet, "eject").status_code == 200
    assert fleet.a.stats()["requests"] == 2  # two failures in a row eject it; then it is left alone
    assert fleet.b.stats()["requests"] == 10
    for source in ("readyz", "api"):
        targets = _targets(fleet, "eject", source)
        assert targets["a/fake-model"]["ejected"] is True and targets["b/fake-model"]["ejected"] is False


def test_a_deployment_is_never_wholly_ejected(fleet: Fleet) -> None:
    fleet.a.script(*[{"status": 500}] * 6)
    for sent in range(1, 4):  # two attempts each: after the second request both targets are ejected
        assert _error(_post(fleet, "all-bad"), 502)["code"] == "upstream_error"  # tried, not "no healthy target"
        assert fleet.a.stats()["requests"] == 2 * sent
    targets = _targets(fleet, "all-bad", "api")
    assert targets["a/m1"]["ejected"] and targets["a/m2"]["ejected"]
    assert _post(fleet, "all-bad").status_code == 200  # still tried, and the one that answered is back
    served = _calls(fleet, "all-bad", 4)[0]["model"]
    assert _targets(fleet, "all-bad", "api")[f"a/{served}"]["ejected"] is False


def test_fallback_answers_when_every_target_fails(fleet: Fleet) -> None:
    answer = _client(fleet).chat.completions.create(model="main", messages=MSG)
    assert answer.choices[0].message.content == "hello from the fake"
    call = _calls(fleet, "main")[0]
    assert (call["deployment"], call["served_by"], call["engine"]) == ("main", "backup", "b")
    assert call["attempts"] == 3  # two on the dead engine (retries: 1), one on the fallback


# -- engines down ----------------------------------------------------------------------------------------------


def test_engine_down_is_503_with_the_reason(fleet: Fleet) -> None:
    error = _error(_post(fleet, "down"), 503)
    assert error["code"] == "upstream_unreachable"
    assert "'dead'" in error["message"] and "cannot be reached" in error["message"]


def _readyz(fleet: Fleet) -> httpx.Response:
    return httpx.get(fleet.server.url + "/readyz", timeout=5)


def test_readyz_follows_engine_health(fleet: Fleet) -> None:
    fleet.h.set_health(False)
    try:
        wait_until(lambda: _readyz(fleet).status_code == 503, 10, what="/readyz to fail")
        body = _readyz(fleet).json()
        assert body["error"]["code"] == "not_ready"
        assert body["deployments"]["health"]["ready"] is False and body["deployments"]["retry"]["ready"] is True
        assert _error(_post(fleet, "health"), 503)["code"] == "no_healthy_target"
        assert fleet.h.stats()["requests"] == 0
    finally:
        fleet.h.set_health(True)
    wait_until(lambda: _readyz(fleet).status_code == 200, 10, what="/readyz to recover")
    assert _post(fleet, "health").status_code == 200


# -- streams ---------------------------------------------------------------------------------------------------


def _stream(fleet: Fleet, model: str, **extra: Any) -> list[tuple[float, bytes]]:
    """POST a streamed chat; return (seconds since the request, bytes) as each piece arrived."""
    started = time.monotonic()
    arrivals = []
    body = {"model": model, "messages": MSG, "stream": True, **extra}
    with httpx.stream("POST", fleet.server.url + "/v1/chat/completions", json=body, timeout=30) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for chunk in response.iter_raw():
            arrivals.append((time.monotonic() - started, chunk))
    return arrivals


def _events(arrivals: list[tuple[float, bytes]]) -> list[bytes]:
    return b"".join(chunk for _, chunk in arrivals).strip().split(b"\n\n")


def _done(events: list[bytes]) -> bool:
    """Whether the stream carried its end marker (`data: [DONE]`, or `data:[DONE]`)."""
    return any(e.replace(b" ", b"") == b"data:[DONE]" for e in events)


def test_stream_is_relayed_as_it_arrives(fleet: Fleet) -> None:
    fleet.a.script({"chunks": 6, "chunk_delay_ms": 200})
    arrivals = _stream(fleet, "relay")
    events = _events(arrivals)
    assert sum(b'"content":"tok "' in e for e in events) == 6 and events[-1] == b"data: [DONE]"
    first = next(t for t, chunk in arrivals if b"tok " in chunk)
    assert arrivals[-1][0] - first >= 0.7  # five 200 ms gaps reached the client, not one buffered lump
    assert not any(b'"usage"' in e for e in events)  # the client did not ask for usage
    assert fleet.a.stats()["last_body"]["stream_options"] == {"include_usage": True}  # but the gateway did
    call = _calls(fleet, "relay")[0]
    assert (call["completion_tokens"], call["prompt_tokens"]) == (6, 5) and call["ttft_ms"] is not None


def test_stream_usage_when_asked(fleet: Fleet) -> None:
    stream = _client(fleet).chat.completions.create(
        model="usage", messages=MSG, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert (chunks[-1].usage.completion_tokens, chunks[-1].usage.total_tokens) == (8, 13)
    assert all(c.usage is None for c in chunks[:-1])


def test_reset_mid_stream_ends_with_an_error_event(fleet: Fleet) -> None:
    fleet.a.script({"reset_after_chunks": 3})
    events = _events(_stream(fleet, "stream-reset"))
    assert sum(b"tok " in e for e in events) == 3 and not _done(events)
    assert events[-1].startswith(b"data: ")
    error = orjson.loads(events[-1][6:])["error"]
    assert error["code"] == "upstream_disconnected" and "'a'" in error["message"]
    assert fleet.a.stats()["requests"] == 1  # a started stream is never retried
    fleet.a.script({"reset_after_chunks": 2})
    with pytest.raises(openai.APIError, match="dropped the connection"):
        list(_client(fleet).chat.completions.create(model="stream-reset", messages=MSG, stream=True))


def test_stream_ending_without_done_ends_with_an_error_event(fleet: Fleet) -> None:
    fleet.a.script({"end_after_chunks": 2})
    events = _events(_stream(fleet, "stream-end"))
    assert sum(b"tok " in e for e in events) == 2 and not _done(events)
    assert orjson.loads(events[-1][6:])["error"]["code"] == "upstream_stream_error"
    call = _calls(fleet, "stream-end")[0]
    assert call["error_code"] == "upstream_stream_error"


def test_a_stream_past_the_deadline_ends_with_an_error_event(fleet: Fleet) -> None:
    fleet.a.script({"chunks": 3, "chunk_delay_ms": 30_000})  # the first chunk, then silence
    arrivals = _stream(fleet, "stream-long")  # timeout: 1 s, for the whole stream
    events = _events(arrivals)
    assert sum(b"tok " in e for e in events) == 1 and not _done(events)
    assert orjson.loads(events[-1][6:])["error"]["code"] == "upstream_timeout"
    assert 0.9 <= arrivals[-1][0] < 2.5, arrivals[-1][0]
    wait_until(lambda: fleet.a.stats()["cancelled"] == 1, 10, what="the engine's stream to be closed")


def test_failure_before_the_first_chunk_is_retried(fleet: Fleet) -> None:
    fleet.a.script({"status": 500}, {"reset": True})
    chunks = list(_client(fleet).chat.completions.create(model="stream-retry", messages=MSG, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "tok " * 8
    assert fleet.a.stats()["requests"] == 3


def test_unusual_sse_framing_is_relayed(fleet: Fleet) -> None:
    # CRLF line ends split between two reads, and "data:" without a space: valid SSE, relayed whole
    fleet.a.script({"odd_framing": True, "chunks": 3})
    events = _events(_stream(fleet, "odd"))
    assert sum(b"tok " in e for e in events) == 3
    assert not any(b'"error"' in e for e in events)
    assert _done(events) and events[-1].replace(b" ", b"") == b"data:[DONE]"
    assert _calls(fleet, "odd")[0]["error_code"] is None


# -- client disconnects ----------------------------------------------------------------------------------------


def test_leaving_mid_stream_cancels_the_upstream(fleet: Fleet) -> None:
    fleet.a.script({"chunks": 50, "chunk_delay_ms": 100})
    body = {"model": "slow-stream", "messages": MSG, "stream": True}
    with httpx.stream("POST", fleet.server.url + "/v1/chat/completions", json=body, timeout=30) as response:
        for chunk in response.iter_raw():
            if b"tok " in chunk:
                break  # leave mid-stream: the context manager closes the connection
    wait_until(lambda: fleet.a.stats()["cancelled"] == 1, 10, what="the streamed upstream call to be cancelled")
    assert fleet.a.stats()["completed_streams"] == 0
    assert _calls(fleet, "slow-stream")[0]["status"] == 499


def test_leaving_a_slow_answer_cancels_the_upstream(fleet: Fleet) -> None:
    fleet.a.script({"delay_ms": 20_000})
    body = orjson.dumps({"model": "slow-json", "messages": MSG})
    with socket.create_connection(("127.0.0.1", fleet.server.port)) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\n\r\n%s" % (len(body), body)
        )
        wait_until(lambda: fleet.a.stats()["requests"] == 1, 10, what="the call to reach the engine")
        assert fleet.a.stats()["cancelled"] == 0
    wait_until(lambda: fleet.a.stats()["cancelled"] == 1, 10, what="the upstream call to be cancelled")
    assert _calls(fleet, "slow-json")[0]["status"] == 499


def test_the_guide_example_is_a_valid_configuration() -> None:
    (example,) = re.findall(r"```yaml\n(.*?)```", GUIDE.read_text(), flags=re.S)
    settings = Settings.model_validate(yaml.safe_load(example))
    assistant = settings.deployments["assistant"]
    assert [t.weight for t in assistant.targets] == [3, 1] and assistant.fallbacks == ["smollm2"]
    assert settings.engines["hosted"].api_key_env == "OPENAI_API_KEY"  # type: ignore[union-attr]
