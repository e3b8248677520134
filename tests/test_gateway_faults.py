"""Faults, as a trusted gateway must handle them: retries, deadlines, 429 cooling, ejection, fallbacks,
broken streams and client disconnects. Engines are the fake hosted provider (a third-party stand-in)."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import orjson
import pytest

from tests.helpers import FakeUpstreamProcess, ShipyardProcess, free_port, start_fake_upstream, wait_until

MSG = [{"role": "user", "content": "hi"}]


def _engine(fake: FakeUpstreamProcess | str, **extra: object) -> dict:
    url = fake if isinstance(fake, str) else fake.base_url
    return {"kind": "openai", "base_url": url, **extra}


def _deployment(*engines: str, weights: tuple[float, ...] = (), **extra: object) -> dict:
    targets = [{"engine": e, "model": "fake-model"} for e in engines]
    for target, weight in zip(targets, weights, strict=False):
        target["weight"] = weight
    return {"targets": targets, "backoff": 0.01, **extra}


@pytest.fixture()
def gateway(tmp_path: Path) -> Iterator:
    """Factory: start `shipyard up` with a given config; every server is stopped at the end."""
    started: list[ShipyardProcess] = []

    def start(config: dict, ready: bool = True) -> ShipyardProcess:
        server = ShipyardProcess(tmp_path / f"data{len(started)}", config=config)
        started.append(server)
        server.start()
        if ready:
            server.wait_ready(60)
        else:
            server.wait_listening(60)
        return server

    yield start
    for server in started:
        server.stop()


def _client(server: ShipyardProcess, timeout: float = 30) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0, timeout=timeout)


def _post(server: ShipyardProcess, body: dict, timeout: float = 30) -> httpx.Response:
    return httpx.post(server.url + "/v1/chat/completions", json=body, timeout=timeout)


def _calls(server: ShipyardProcess) -> list[dict]:
    return httpx.get(server.url + "/api/v1/calls", timeout=10).json()["data"]


def test_retries_5xx_and_then_succeeds(gateway, fake_upstream: FakeUpstreamProcess) -> None:
    server = gateway({"engines": {"f": _engine(fake_upstream)}, "deployments": {"d": _deployment("f", retries=2)}})
    fake_upstream.script({"status": 500}, {"status": 503})
    answer = _client(server).chat.completions.create(model="d", messages=MSG)
    assert answer.choices[0].message.content == "hello from the fake"
    assert fake_upstream.stats()["requests"] == 3
    wait_until(lambda: _calls(server), 5)
    assert _calls(server)[0]["attempts"] == 3


def test_retries_are_bounded(gateway, fake_upstream: FakeUpstreamProcess) -> None:
    server = gateway({"engines": {"f": _engine(fake_upstream)}, "deployments": {"d": _deployment("f", retries=1)}})
    fake_upstream.script(*[{"status": 500}] * 5)
    response = _post(server, {"model": "d", "messages": MSG})
    assert response.status_code == 502
    assert "HTTP 500" in response.json()["error"]["message"]
    assert fake_upstream.stats()["requests"] == 2


@pytest.mark.parametrize(("status", "expected"), [(400, 400), (404, 404), (401, 502)])
def test_no_retry_on_client_errors(gateway, fake_upstream: FakeUpstreamProcess, status: int, expected: int) -> None:
    server = gateway({"engines": {"f": _engine(fake_upstream)}, "deployments": {"d": _deployment("f", retries=3)}})
    fake_upstream.script({"status": status})
    response = _post(server, {"model": "d", "messages": MSG})
    assert response.status_code == expected
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    if status == 401:
        assert error["code"] == "upstream_auth_failed" and "credentials" in error["message"]
    assert fake_upstream.stats()["requests"] == 1


def test_429_cools_the_target_and_the_next_is_tried(gateway) -> None:
    first, second = start_fake_upstream(), start_fake_upstream()
    try:
        # "a" weighs so much that the first request goes there; after its 429 it cools for 30 s
        config = {
            "engines": {"a": _engine(first), "b": _engine(second)},
            "deployments": {"d": _deployment("a", "b", weights=(1e6, 1))},
        }
        server = gateway(config)
        first.script({"status": 429, "retry_after": 30})
        for _ in range(5):
            assert _post(server, {"model": "d", "messages": MSG}).status_code == 200
        assert first.stats()["requests"] == 1
        assert second.stats()["requests"] == 5
        report = httpx.get(server.url + "/readyz", timeout=5).json()
        cooling = {t["engine"]: t["cooling"] for t in report["deployments"]["d"]["targets"]}
        assert cooling == {"a": True, "b": False}
    finally:
        first.stop()
        second.stop()


def test_429_comes_back_when_the_wait_does_not_fit(gateway, fake_upstream: FakeUpstreamProcess) -> None:
    server = gateway({"engines": {"f": _engine(fake_upstream)}, "deployments": {"d": _deployment("f", timeout=5)}})
    fake_upstream.script({"status": 429, "retry_after": 60})
    response = _post(server, {"model": "d", "messages": MSG})
    assert response.status_code == 429
    assert int(response.headers["retry-after"]) >= 50
    assert response.json()["error"]["type"] == "rate_limit_error"


def test_429_short_wait_is_waited_out(gateway, fake_upstream: FakeUpstreamProcess) -> None:
    server = gateway({"engines": {"f": _engine(fake_upstream)}, "deployments": {"d": _deployment("f", timeout=10)}})
    fake_upstream.script({"status": 429, "retry_after": 1})
    started = time.monotonic()
    assert _post(server, {"model": "d", "messages": MSG}).status_code == 200
    assert time.monotonic() - started >= 0.9
    assert fake_upstream.stats()["requests"] == 2


def test_one_deadline_across_retries(gateway, fake_upstream: FakeUpstreamProcess) -> None:
    server = gateway(
        {"engines": {"f": _engine(fake_upstream)}, "deployments": {"d": _deployment("f", timeout=2, retries=3)}}
    )
    fake_upstream.script(*[{"hang": True}] * 4)
    started = time.monotonic()
    response = _post(server, {"model": "d", "messages": MSG})
    elapsed = time.monotonic() - started
    assert response.status_code == 504
    assert 1.8 <= elapsed < 3.5, elapsed  # not retries × timeout (8 s)


def test_attempt_timeout_moves_on_to_the_next_try(gateway, fake_upstream: FakeUpstreamProcess) -> None:
    server = gateway(
        {
            "engines": {"f": _engine(fake_upstream)},
            "deployments": {"d": _deployment("f", timeout=10, attempt_timeout=0.5, retries=2)},
        }
    )
    fake_upstream.script({"hang": True})
    started = time.monotonic()
    assert _post(server, {"model": "d", "messages": MSG}).status_code == 200
    assert time.monotonic() - started < 3
    assert fake_upstream.stats()["requests"] == 2


def test_ejection_but_never_every_target(gateway) -> None:
    good, bad = start_fake_upstream(), start_fake_upstream()
    try:
        config = {
            "engines": {"good": _engine(good), "bad": _engine(bad)},
            "ejection": {"consecutive_failures": 2, "base_seconds": 60},
            "deployments": {"d": _deployment("good", "bad", weights=(1, 1e6), retries=3)},
        }
        server = gateway(config)
        bad.script(*[{"status": 500}] * 100)
        for _ in range(10):
            assert _post(server, {"model": "d", "messages": MSG}).status_code == 200
        assert bad.stats()["requests"] == 2  # ejected after two failures in a row, then left alone
        assert good.stats()["requests"] == 10
        targets = httpx.get(server.url + "/api/v1/deployments/d", timeout=5).json()["targets"]
        assert {t["engine"]: t["ejected"] for t in targets} == {"good": False, "bad": True}
    finally:
        good.stop()
        bad.stop()


def test_a_deployment_is_never_wholly_ejected(gateway, fake_upstream: FakeUpstreamProcess) -> None:
    config = {
        "engines": {"bad": _engine(fake_upstream)},
        "ejection": {"consecutive_failures": 1, "base_seconds": 60},
        "deployments": {
            "d": {"targets": [{"engine": "bad", "model": "m1"}, {"engine": "bad", "model": "m2"}], "retries": 0}
        },
    }
    server = gateway(config)
    fake_upstream.script(*[{"status": 500}] * 100)
    for attempt in range(1, 5):
        response = _post(server, {"model": "d", "messages": MSG})
        assert response.status_code == 502  # tried and failed, not refused as "no healthy target"
        assert fake_upstream.stats()["requests"] == attempt
    targets = httpx.get(server.url + "/api/v1/deployments/d", timeout=5).json()["targets"]
    assert all(t["ejected"] for t in targets)


def test_fallback_deployment_answers(gateway, fake_upstream: FakeUpstreamProcess) -> None:
    dead = f"http://127.0.0.1:{free_port()}/v1"
    config = {
        "engines": {"dead": _engine(dead), "f": _engine(fake_upstream)},
        "deployments": {"main": _deployment("dead", retries=1, fallbacks=["backup"]), "backup": _deployment("f")},
    }
    server = gateway(config)
    answer = _client(server).chat.completions.create(model="main", messages=MSG)
    assert answer.choices[0].message.content == "hello from the fake"
    wait_until(lambda: _calls(server), 5)
    call = _calls(server)[0]
    assert call["deployment"] == "main" and call["served_by"] == "backup" and call["attempts"] == 3


def test_engine_down_is_503_with_the_reason(gateway) -> None:
    dead = f"http://127.0.0.1:{free_port()}/v1"
    server = gateway({"engines": {"dead": _engine(dead)}, "deployments": {"d": _deployment("dead", retries=1)}})
    response = _post(server, {"model": "d", "messages": MSG})
    assert response.status_code == 503
    assert "cannot be reached" in response.json()["error"]["message"]


def test_readyz_follows_engine_health(gateway, fake_upstream: FakeUpstreamProcess) -> None:
    engine = _engine(fake_upstream, health_path="/health", health_interval=0.2)  # a path on the engine's origin
    server = gateway({"engines": {"f": engine}, "deployments": {"d": _deployment("f")}})
    fake_upstream.set_health(False)
    wait_until(lambda: httpx.get(server.url + "/readyz", timeout=2).status_code == 503, 10, what="not ready")
    body = httpx.get(server.url + "/readyz", timeout=2).json()
    assert body["error"]["code"] == "not_ready" and body["deployments"]["d"]["ready"] is False
    fake_upstream.set_health(True)
    wait_until(lambda: httpx.get(server.url + "/readyz", timeout=2).status_code == 200, 10, what="ready again")


def _stream_events(server: ShipyardProcess, body: dict) -> tuple[list[tuple[float, bytes]], float]:
    started = time.monotonic()
    arrivals = []
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=30) as response:
        assert response.status_code == 200
        for chunk in response.iter_raw():
            arrivals.append((time.monotonic() - started, chunk))
    return arrivals, started


def test_stream_is_relayed_as_it_arrives(gateway) -> None:
    fake = start_fake_upstream("--chunks", "6", "--chunk-delay-ms", "250")
    try:
        server = gateway({"engines": {"f": _engine(fake)}, "deployments": {"d": _deployment("f")}})
        arrivals, _ = _stream_events(server, {"model": "d", "messages": MSG, "stream": True})
        text = b"".join(c for _, c in arrivals)
        assert text.count(b'"content":"tok "') == 6
        assert text.rstrip().endswith(b"data: [DONE]")
        first_token = next(t for t, c in arrivals if b"tok " in c)
        assert arrivals[-1][0] - first_token >= 1.0  # five 250 ms gaps were not buffered away
        assert b'"usage"' not in text  # asked upstream, stripped for a client that did not ask
    finally:
        fake.stop()


def test_stream_usage_when_asked(gateway, fake_upstream: FakeUpstreamProcess) -> None:
    server = gateway({"engines": {"f": _engine(fake_upstream)}, "deployments": {"d": _deployment("f")}})
    chunks = list(
        _client(server).chat.completions.create(
            model="d", messages=MSG, stream=True, stream_options={"include_usage": True}
        )
    )
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 8
    assert fake_upstream.stats()["last_body"]["stream_options"] == {"include_usage": True}


def test_reset_mid_stream_ends_with_an_error_event(gateway, fake_upstream: FakeUpstreamProcess) -> None:
    server = gateway({"engines": {"f": _engine(fake_upstream)}, "deployments": {"d": _deployment("f", retries=2)}})
    fake_upstream.script({"reset_after_chunks": 3})
    arrivals, _ = _stream_events(server, {"model": "d", "messages": MSG, "stream": True})
    text = b"".join(c for _, c in arrivals)
    assert b"[DONE]" not in text
    last = text.strip().split(b"\n\n")[-1]
    assert last.startswith(b"data: ") and orjson.loads(last[6:])["error"]["code"] == "upstream_disconnected"
    assert fake_upstream.stats()["requests"] == 1  # a started stream is never retried
    fake_upstream.script({"reset_after_chunks": 2})
    with pytest.raises(openai.APIError):
        list(_client(server).chat.completions.create(model="d", messages=MSG, stream=True))


def test_failure_before_the_first_chunk_is_retried(gateway, fake_upstream: FakeUpstreamProcess) -> None:
    server = gateway({"engines": {"f": _engine(fake_upstream)}, "deployments": {"d": _deployment("f")}})
    fake_upstream.script({"status": 500}, {"reset": True})
    chunks = list(_client(server).chat.completions.create(model="d", messages=MSG, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "tok " * 8
    assert fake_upstream.stats()["requests"] == 3


def test_client_disconnect_cancels_the_upstream(gateway) -> None:
    fake = start_fake_upstream("--chunks", "40", "--chunk-delay-ms", "100", "--latency-ms", "5000")
    try:
        server = gateway({"engines": {"f": _engine(fake)}, "deployments": {"d": _deployment("f")}})
        with httpx.stream(
            "POST",
            server.url + "/v1/chat/completions",
            timeout=30,
            json={"model": "d", "messages": MSG, "stream": True},
        ) as response:
            for chunk in response.iter_raw():
                if b"tok " in chunk:
                    break  # leave mid-stream
        wait_until(lambda: fake.stats()["cancelled"] == 1, 10, what="the streamed upstream call to be cancelled")
        with socket.create_connection(("127.0.0.1", server.port)) as sock:  # a slow non-streamed call, abandoned
            body = orjson.dumps({"model": "d", "messages": MSG})
            sock.sendall(
                b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                b"content-length: %d\r\n\r\n%s" % (len(body), body)
            )
            wait_until(lambda: fake.stats()["requests"] == 2, 10, what="the second call upstream")
        wait_until(lambda: fake.stats()["cancelled"] == 2, 10, what="the non-streamed upstream call to be cancelled")
        wait_until(lambda: any(c["status"] == 499 for c in _calls(server)), 5, what="a 499 call record")
    finally:
        fake.stop()
