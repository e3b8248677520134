"""Bad input through the real server: clear OpenAI-shaped errors, never a crash or a hang, and engine keys
that go to their own engine only. Engines are the fake hosted provider (a third-party stand-in)."""

from __future__ import annotations

import os
import random
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from shipyard.gateway.routes import ROUTING_HEADERS
from shipyard.wire.openai import ROUTING_FIELDS
from tests.helpers import FakeUpstreamProcess, ShipyardProcess, start_fake_upstream, wait_until

MSG = [{"role": "user", "content": "hi"}]
SECRET = "sk-test-" + "q7Zp" * 8
CHAT = "/v1/chat/completions"


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeUpstreamProcess]:
    """A provider that answers 401 unless it gets SECRET."""
    fake = start_fake_upstream("--api-key", SECRET)
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def other() -> Iterator[FakeUpstreamProcess]:
    """A second provider, configured without a key."""
    fake = start_fake_upstream()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def server(
    fake: FakeUpstreamProcess, other: FakeUpstreamProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ShipyardProcess]:
    config = {
        "limits": {"max_body_bytes": 20_000, "max_n": 2, "max_tokens": 100, "max_stop": 2, "max_messages": 4},
        "engines": {
            "f": {"kind": "openai", "base_url": fake.base_url, "api_key_env": "FAKE_PROVIDER_KEY"},
            "other": {"kind": "openai", "base_url": other.base_url},
            "nokey": {"kind": "openai", "base_url": fake.base_url},  # the keyed provider, but no key given
        },
        "deployments": {
            "chat": {"targets": [{"engine": "f", "model": "fake-model"}]},
            "small": {"targets": [{"engine": "f"}], "max_body_bytes": 300},
            "other": {"targets": [{"engine": "other"}]},
            "nokey": {"targets": [{"engine": "nokey"}], "retries": 3},
        },
    }
    server = ShipyardProcess(tmp_path_factory.mktemp("input"), config=config, env={"FAKE_PROVIDER_KEY": SECRET})
    try:
        server.start()
        server.wait_ready(60)
        yield server
    finally:
        server.stop()


def _error(response: httpx.Response, status: int) -> dict[str, Any]:
    """The response is `status` with an OpenAI-shaped JSON error; return the error object."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return body["error"]


def _post(server: ShipyardProcess, body: Any = None, path: str = CHAT, **kwargs: Any) -> httpx.Response:
    """POST JSON (`body`) or raw bytes (`content=`) to the server."""
    if body is not None:
        kwargs["json"] = body
    return httpx.post(server.url + path, timeout=10, **kwargs)


# -- bodies and fields -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        b"{not json",
        b'{"model": "chat", "messages": [',
        b"",
        b"   ",
        b"[1, 2]",
        b'"text"',
        b"null",
        b"42",
        b"\xff\xfe{}",
    ],
)
def test_malformed_bodies(server: ShipyardProcess, fake: FakeUpstreamProcess, raw: bytes) -> None:
    before = fake.stats()["requests"]
    error = _error(_post(server, content=raw, headers={"content-type": "application/json"}), 400)
    assert (error["type"], error["code"]) == ("invalid_request_error", "invalid_json")
    assert fake.stats()["requests"] == before


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({"messages": MSG}, "model", "missing_required_parameter"),
        ({"model": 7, "messages": MSG}, "model", "invalid_type"),
        ({"model": "chat"}, "messages", "missing_required_parameter"),
        ({"model": "chat", "messages": "hi"}, "messages", "invalid_type"),
        ({"model": "chat", "messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role", "invalid_value"),
        ({"model": "chat", "messages": [{"role": "user"}]}, "messages[0].content", "missing_required_parameter"),
        ({"model": "chat", "messages": MSG, "stream": "yes"}, "stream", "invalid_type"),
        ({"model": "chat", "messages": MSG, "temperature": 9}, "temperature", "invalid_value"),
        ({"model": "chat", "messages": MSG, "n": 3}, "n", "invalid_value"),
        ({"model": "chat", "messages": MSG, "max_tokens": 101}, "max_tokens", "invalid_value"),
        ({"model": "chat", "messages": MSG, "max_completion_tokens": 101}, "max_completion_tokens", "invalid_value"),
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
    server: ShipyardProcess, fake: FakeUpstreamProcess, body: dict[str, Any], param: str, code: str
) -> None:
    before = fake.stats()["requests"]
    error = _error(_post(server, body), 400)
    assert (error["param"], error["code"]) == (param, code)
    assert param.split("[")[0] in error["message"]
    assert fake.stats()["requests"] == before  # refused before any engine was called


def test_the_caps_leave_room_up_to_the_limit(server: ShipyardProcess) -> None:
    body = {"model": "chat", "messages": MSG * 4, "n": 2, "max_tokens": 100, "stop": ["a", "b"]}
    assert _post(server, body).status_code == 200


def test_every_routing_field_is_refused(server: ShipyardProcess, fake: FakeUpstreamProcess) -> None:
    before = fake.stats()["requests"]
    for path, body in (
        (CHAT, {"model": "chat", "messages": MSG}),
        ("/v1/completions", {"model": "chat", "prompt": "x"}),
    ):
        for name in sorted(ROUTING_FIELDS):
            error = _error(_post(server, {**body, name: "http://169.254.169.254/"}, path=path), 400)
            assert (error["param"], error["code"]) == (name, "routing_field_refused"), (path, name)
    assert fake.stats()["requests"] == before


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "chat"}, "prompt"),
        ({"model": "chat", "prompt": "x", "n": 3}, "n"),
        ({"model": "chat", "prompt": "x", "best_of": 3}, "best_of"),  # best_of candidates cost like n
        ({"model": "chat", "prompt": "x", "max_tokens": 101}, "max_tokens"),
        ({"model": "chat", "prompt": "x", "stop": ["a", "b", "c"]}, "stop"),
    ],
)
def test_completions_are_checked_too(server: ShipyardProcess, body: dict[str, Any], param: str) -> None:
    assert _error(_post(server, body, path="/v1/completions"), 400)["param"] == param


def test_unknown_deployment_is_404(server: ShipyardProcess) -> None:
    error = _error(_post(server, {"model": "gpt-9", "messages": MSG}), 404)
    assert (error["code"], error["param"]) == ("model_not_found", "model") and "gpt-9" in error["message"]
    assert _error(httpx.get(server.url + "/v1/models/gpt-9", timeout=10), 404)["code"] == "model_not_found"


def test_oversized_bodies_are_413(server: ShipyardProcess) -> None:
    def sized(size: int, model: str = "chat") -> bytes:
        head = b'{"model":"%s","messages":[{"role":"user","content":"' % model.encode()
        return head + b"x" * (size - len(head) - 4) + b'"}]}'

    assert _post(server, content=sized(19_000)).status_code == 200  # under limits.max_body_bytes (20 000)
    error = _error(_post(server, content=sized(30_000)), 413)  # refused on its Content-Length
    assert error["code"] == "body_too_large" and "20000" in error["message"]

    def chunked() -> Iterator[bytes]:  # no Content-Length: counted while reading
        yield sized(30_000)[:10_000]
        yield sized(30_000)[10_000:]

    assert _error(_post(server, content=chunked()), 413)["code"] == "body_too_large"
    assert _post(server, content=sized(290, "small")).status_code == 200  # the deployment's own cap: 300
    error = _error(_post(server, content=sized(400, "small")), 413)
    assert error["code"] == "body_too_large" and "'small'" in error["message"]


# -- routing cannot be steered by the caller --------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(h.decode() for h in ROUTING_HEADERS) + ["X-Upstream-URL"])
def test_routing_headers_are_refused(server: ShipyardProcess, fake: FakeUpstreamProcess, name: str) -> None:
    before = fake.stats()["requests"]
    response = _post(server, {"model": "chat", "messages": MSG}, headers={name: "http://169.254.169.254/latest"})
    error = _error(response, 400)
    assert error["code"] == "routing_field_refused" and name.lower() in error["message"]
    assert fake.stats()["requests"] == before


def _raw(server: ShipyardProcess, payload: bytes, half_close: bool = True) -> bytes:
    """Send raw bytes (then half-close: the server sees the client leave) and return whatever comes back
    before the server closes the connection."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(payload)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        data = b""
        try:
            while chunk := sock.recv(65536):
                data += chunk
        except (TimeoutError, ConnectionResetError):
            pass
        return data


def test_host_header_plays_no_part(server: ShipyardProcess, fake: FakeUpstreamProcess) -> None:
    for host in ("evil.example", "169.254.169.254", "localhost:1", "[::1]", "a" * 300):
        assert _post(server, {"model": "chat", "messages": MSG}, headers={"host": host}).status_code == 200, host
        assert fake.stats()["last_headers"]["host"] == f"127.0.0.1:{fake.port}"
    body = orjson.dumps({"model": "chat", "messages": MSG})
    answer = _raw(  # an absolute-form request target: the path alone routes it
        server,
        b"POST http://evil.example/v1/chat/completions HTTP/1.1\r\nhost: evil.example\r\n"
        b"content-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body),
        half_close=False,
    )
    assert answer.startswith(b"HTTP/1.1 200") and b"hello from the fake" in answer
    # A trailing slash is an unknown route, not a redirect to an address built from the Host header.
    response = _post(server, {"model": "chat", "messages": MSG}, path=CHAT + "/", headers={"host": "evil.example"})
    assert _error(response, 404)["code"] == "route_not_found" and "location" not in response.headers


def test_wrong_method_and_unknown_route(server: ShipyardProcess) -> None:
    for method, path in (("GET", CHAT), ("PUT", "/v1/completions"), ("DELETE", "/v1/models"), ("POST", "/healthz")):
        error = _error(httpx.request(method, server.url + path, timeout=10), 405)
        assert error["code"] == "method_not_allowed" and method in error["message"]
    for method, path in (("GET", "/v1/nothing"), ("POST", "/v2/chat"), ("GET", "/nothing"), ("POST", "/v1/")):
        assert _error(httpx.request(method, server.url + path, timeout=10), 404)["code"] == "route_not_found"


# -- engine keys -----------------------------------------------------------------------------------------------


def test_the_engine_key_goes_only_to_its_engine(
    server: ShipyardProcess, fake: FakeUpstreamProcess, other: FakeUpstreamProcess
) -> None:
    client_auth = {"authorization": "Bearer client-key"}
    assert _post(server, {"model": "chat", "messages": MSG}, headers=client_auth).status_code == 200
    assert fake.stats()["last_headers"]["authorization"] == f"Bearer {SECRET}"  # not the caller's key
    assert _post(server, {"model": "other", "messages": MSG}, headers=client_auth).status_code == 200
    assert "authorization" not in other.stats()["last_headers"]  # neither SECRET nor the caller's key
    for path in ("/api/v1/engines", "/api/v1/engines/f", "/api/v1/deployments", "/readyz", "/v1/models"):
        assert SECRET not in httpx.get(server.url + path, timeout=10).text, path
    calls = server.url + "/api/v1/calls"
    wait_until(lambda: len(httpx.get(calls, timeout=10).json()["data"]) >= 2, 10, what="the calls to be recorded")
    files = [p for p in Path(server.data_dir).rglob("*") if p.is_file()]
    assert {"shipyard.db", "server.log"} <= {p.name for p in files}
    for path in files:
        assert SECRET.encode() not in path.read_bytes(), path


def test_a_wrong_engine_key_is_a_502_not_a_401(server: ShipyardProcess, fake: FakeUpstreamProcess) -> None:
    before = fake.stats()["requests"]
    error = _error(_post(server, {"model": "nokey", "messages": MSG}), 502)
    assert error["code"] == "upstream_auth_failed" and "'nokey'" in error["message"]
    assert fake.stats()["requests"] == before + 1  # retries: 3, but a refused key is not retried


# -- garbage ---------------------------------------------------------------------------------------------------


def test_garbage_never_crashes_or_hangs_the_server(server: ShipyardProcess) -> None:
    rng = random.Random(7)
    nested = b'{"model":"chat","messages":[' + b'{"role":"user","content":' + b"[" * 5000 + b"]" * 5000 + b"}]}"
    payloads = [
        os.urandom(4096),
        bytes(rng.randrange(256) for _ in range(2000)),
        b"GET / HTTP/1.1\r\n",  # truncated
        b'POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n{"a"',  # short body
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * 200_000 + b"\r\n\r\n",
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n" + b"x-h: 1\r\n" * 5000 + b"\r\n",
        b"GET /" + b"a" * 100_000 + b" HTTP/1.1\r\nhost: x\r\n\r\n",
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: -5\r\n\r\n",
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n%s" % (len(nested), nested),
    ]
    for payload in payloads:
        _raw(server, payload)
    assert server.process is not None and server.process.poll() is None
    error = _error(_post(server, content=nested), 400)  # nested past what a JSON parser should follow
    assert error["code"] == "invalid_json"
    assert httpx.get(server.url + "/healthz", timeout=5).status_code == 200
    ok = _post(server, {"model": "chat", "messages": MSG})
    assert ok.status_code == 200 and ok.json()["choices"][0]["message"]["content"] == "hello from the fake"
