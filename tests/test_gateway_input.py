"""Bad input through the real server: clear OpenAI-shaped errors, never a crash or a hang."""

from __future__ import annotations

import os
import random
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.helpers import FakeUpstreamProcess, ShipyardProcess, start_fake_upstream

MSG = [{"role": "user", "content": "hi"}]
SECRET = "sk-test-" + "q7Zp" * 8


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeUpstreamProcess]:
    fake = start_fake_upstream("--api-key", SECRET)
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def server(fake: FakeUpstreamProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ShipyardProcess]:
    config = {
        "limits": {"max_body_bytes": 20_000, "max_n": 2, "max_tokens": 100, "max_stop": 2, "max_messages": 4},
        "engines": {"f": {"kind": "openai", "base_url": fake.base_url, "api_key_env": "FAKE_PROVIDER_KEY"}},
        "deployments": {
            "chat": {"targets": [{"engine": "f", "model": "fake-model"}]},
            "small": {"targets": [{"engine": "f"}], "max_body_bytes": 300},
        },
    }
    server = ShipyardProcess(tmp_path_factory.mktemp("input"), config=config, env={"FAKE_PROVIDER_KEY": SECRET})
    server.start()
    server.wait_ready(60)
    yield server
    server.stop()


def _error(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["message"]
    return body["error"]


def _post(
    server: ShipyardProcess, content: bytes | None = None, path: str = "/v1/chat/completions", **kwargs: object
) -> httpx.Response:
    return httpx.post(server.url + path, content=content, timeout=10, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("raw", "code"),
    [(b"{not json", "invalid_json"), (b"[1, 2]", "invalid_json"), (b"", "invalid_json"), (b'"text"', "invalid_json")],
)
def test_malformed_bodies(server: ShipyardProcess, raw: bytes, code: str) -> None:
    assert _error(_post(server, raw, headers={"content-type": "application/json"}), 400)["code"] == code


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({"messages": MSG}, "model", "missing_required_parameter"),
        ({"model": "chat"}, "messages", "missing_required_parameter"),
        ({"model": "chat", "messages": MSG, "temperature": 9}, "temperature", "invalid_value"),
        ({"model": "chat", "messages": MSG, "n": 3}, "n", "invalid_value"),
        ({"model": "chat", "messages": MSG, "max_tokens": 101}, "max_tokens", "invalid_value"),
        ({"model": "chat", "messages": MSG, "stop": ["a", "b", "c"]}, "stop", "invalid_value"),
        ({"model": "chat", "messages": MSG * 5}, "messages", "invalid_value"),
        (
            {"model": "chat", "messages": MSG, "stream_options": {"include_usage": True}},
            "stream_options",
            "invalid_value",
        ),
        ({"model": "chat", "messages": MSG, "api_base": "http://169.254.169.254"}, "api_base", "routing_field_refused"),
        ({"model": "chat", "messages": MSG, "base_url": "http://evil"}, "base_url", "routing_field_refused"),
        ({"model": "chat", "messages": MSG, "api_key": "sk-steal"}, "api_key", "routing_field_refused"),
        ({"model": "chat", "messages": MSG, "bogus": 1}, "bogus", "unknown_parameter"),
    ],
)
def test_invalid_fields_name_the_parameter(
    server: ShipyardProcess, fake: FakeUpstreamProcess, body: dict, param: str, code: str
) -> None:
    before = fake.stats()["requests"]
    error = _error(httpx.post(server.url + "/v1/chat/completions", json=body, timeout=10), 400)
    assert (error["param"], error["code"]) == (param, code)
    assert fake.stats()["requests"] == before  # refused before any engine was called


def test_unknown_deployment_is_404(server: ShipyardProcess) -> None:
    error = _error(
        httpx.post(server.url + "/v1/chat/completions", json={"model": "gpt-9", "messages": MSG}, timeout=10), 404
    )
    assert error["code"] == "model_not_found" and "gpt-9" in error["message"]
    assert _error(httpx.get(server.url + "/v1/models/gpt-9", timeout=10), 404)["code"] == "model_not_found"


def test_oversized_bodies_are_413(server: ShipyardProcess) -> None:
    big = b'{"model":"chat","messages":[{"role":"user","content":"' + b"x" * 30_000 + b'"}]}'
    assert _error(_post(server, big), 413)["code"] == "body_too_large"

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted while reading
        for _ in range(40):
            yield b" " * 1000

    assert _error(_post(server, chunks()), 413)["code"] == "body_too_large"  # type: ignore[arg-type]
    body = {"model": "small", "messages": [{"role": "user", "content": "y" * 400}]}
    assert _error(httpx.post(server.url + "/v1/chat/completions", json=body, timeout=10), 413)["code"] == (
        "body_too_large"
    )


@pytest.mark.parametrize("name", ["x-api-base", "api-base", "x-base-url", "x-upstream-url"])
def test_routing_headers_are_refused(server: ShipyardProcess, name: str) -> None:
    response = httpx.post(
        server.url + "/v1/chat/completions",
        json={"model": "chat", "messages": MSG},
        headers={name: "http://169.254.169.254/latest"},
        timeout=10,
    )
    assert _error(response, 400)["code"] == "routing_field_refused"


def test_host_header_plays_no_part(server: ShipyardProcess, fake: FakeUpstreamProcess) -> None:
    for host in ("evil.example", "localhost:1", "[::1]", "a" * 300):
        response = httpx.post(
            server.url + "/v1/chat/completions",
            json={"model": "chat", "messages": MSG},
            headers={"host": host},
            timeout=10,
        )
        assert response.status_code == 200, host
    assert fake.stats()["last_headers"]["host"].startswith("127.0.0.1")


def test_wrong_method_and_unknown_route(server: ShipyardProcess) -> None:
    assert _error(httpx.get(server.url + "/v1/chat/completions", timeout=10), 405)["code"] == "method_not_allowed"
    assert _error(httpx.get(server.url + "/v1/nothing", timeout=10), 404)["code"] == "route_not_found"
    assert _error(httpx.post(server.url + "/v2/chat", json={}, timeout=10), 404)["code"] == "route_not_found"


def test_the_engine_key_goes_only_to_its_engine(server: ShipyardProcess, fake: FakeUpstreamProcess) -> None:
    response = httpx.post(
        server.url + "/v1/chat/completions",
        json={"model": "chat", "messages": MSG},
        timeout=10,
        headers={"authorization": "Bearer client-key"},
    )
    assert response.status_code == 200  # the fake answers 401 unless it got SECRET
    assert fake.stats()["last_headers"]["authorization"] == f"Bearer {SECRET}"
    engines = httpx.get(server.url + "/api/v1/engines", timeout=10).text
    deployments = httpx.get(server.url + "/api/v1/deployments", timeout=10).text
    assert SECRET not in engines and SECRET not in deployments
    for path in Path(server.data_dir).rglob("*"):
        if path.is_file():
            assert SECRET[8:24].encode() not in path.read_bytes(), path


def _raw(server: ShipyardProcess, payload: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        data = b""
        try:
            while chunk := sock.recv(65536):
                data += chunk
        except (TimeoutError, ConnectionResetError):
            pass
        return data


def test_garbage_never_crashes_or_hangs_the_server(server: ShipyardProcess, fake: FakeUpstreamProcess) -> None:
    rng = random.Random(7)
    nested = b'{"model":"chat","messages":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    payloads = [
        os.urandom(4096),
        b"GET / HTTP/1.1\r\n",  # truncated
        b'POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n{"a"',  # short body
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * 200_000 + b"\r\n\r\n",
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: -5\r\n\r\n",
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n%s" % (len(nested), nested),
        bytes(rng.randrange(256) for _ in range(2000)),
    ]
    for payload in payloads:
        _raw(server, payload)
    deep = httpx.post(
        server.url + "/v1/chat/completions",
        content=b'{"model":"chat","messages":[' + b'{"role":"user","content":' + b"[" * 5000 + b"]" * 5000 + b"}]}",
        timeout=10,
    )
    assert deep.status_code == 400
    assert httpx.get(server.url + "/healthz", timeout=5).status_code == 200
    ok = httpx.post(server.url + "/v1/chat/completions", json={"model": "chat", "messages": MSG}, timeout=10)
    assert ok.status_code == 200 and ok.json()["choices"][0]["message"]["content"] == "hello from the fake"
