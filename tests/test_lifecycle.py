"""The server's lifecycle: draining on SIGTERM, exit codes, and where settings come from."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from tests.helpers import FakeUpstreamProcess, ShipyardProcess, free_port, start_fake_upstream, wait_until

MSG = [{"role": "user", "content": "hi"}]


@pytest.fixture()
def slow_fake() -> Iterator[FakeUpstreamProcess]:
    fake = start_fake_upstream("--chunks", "20", "--chunk-delay-ms", "150")  # a stream of about 3 s
    yield fake
    fake.stop()


def _server(tmp_path: Path, fake: FakeUpstreamProcess, drain: float) -> ShipyardProcess:
    config = {
        "server": {"drain_seconds": drain},
        "engines": {"f": {"kind": "openai", "base_url": fake.base_url}},
        "deployments": {"d": {"targets": [{"engine": "f", "model": "fake-model"}]}},
    }
    server = ShipyardProcess(tmp_path / "data", config=config)
    server.start()
    server.wait_ready(60)
    return server


class StreamReader(threading.Thread):
    """Reads one streamed answer through the gateway in the background."""

    def __init__(self, server: ShipyardProcess) -> None:
        super().__init__(daemon=True)
        self.server = server
        self.body = b""
        self.started = threading.Event()
        self.error: Exception | None = None

    def run(self) -> None:
        try:
            with httpx.stream(
                "POST",
                self.server.url + "/v1/chat/completions",
                timeout=30,
                json={"model": "d", "messages": MSG, "stream": True},
            ) as response:
                for chunk in response.iter_raw():
                    self.body += chunk
                    self.started.set()
        except httpx.HTTPError as exc:
            self.error = exc
            self.started.set()


def test_sigterm_drains_open_streams_then_exits_0(tmp_path: Path, slow_fake: FakeUpstreamProcess) -> None:
    server = _server(tmp_path, slow_fake, drain=20)
    reader = StreamReader(server)
    reader.start()
    assert reader.started.wait(10)
    server.signal(signal.SIGTERM)
    wait_until(lambda: httpx.get(server.url + "/readyz", timeout=2).status_code == 503, 5, what="readyz to fail")
    report = httpx.get(server.url + "/readyz", timeout=2).json()
    assert report["draining"] is True and report["error"]["code"] == "not_ready"
    assert reader.is_alive()  # the stream is still open while the server drains
    reader.join(30)
    assert reader.error is None and reader.body.rstrip().endswith(b"data: [DONE]")
    assert server.process is not None and server.process.wait(15) == 0


def test_drain_is_bounded(tmp_path: Path) -> None:
    very_slow = start_fake_upstream("--chunks", "60", "--chunk-delay-ms", "150")  # about 9 s
    try:
        _bounded_drain(tmp_path, very_slow)
    finally:
        very_slow.stop()


def _bounded_drain(tmp_path: Path, fake: FakeUpstreamProcess) -> None:
    server = _server(tmp_path, fake, drain=1)
    reader = StreamReader(server)
    reader.start()
    assert reader.started.wait(10)
    sent = time.monotonic()
    server.signal(signal.SIGTERM)
    assert server.process is not None and server.process.wait(15) == 0
    assert time.monotonic() - sent < 6  # drain 1 s + uvicorn's 2 s grace + shutdown, not the 9 s stream's end
    reader.join(10)
    assert b"[DONE]" not in reader.body


def test_second_signal_exits_at_once(tmp_path: Path, slow_fake: FakeUpstreamProcess) -> None:
    server = _server(tmp_path, slow_fake, drain=60)
    reader = StreamReader(server)
    reader.start()
    assert reader.started.wait(10)
    server.signal(signal.SIGTERM)
    wait_until(lambda: httpx.get(server.url + "/readyz", timeout=2).status_code == 503, 5, what="draining")
    sent = time.monotonic()
    server.signal(signal.SIGINT)
    assert server.process is not None
    server.process.wait(15)
    assert time.monotonic() - sent < 5


def test_idle_server_stops_quickly_with_exit_0(tmp_path: Path, slow_fake: FakeUpstreamProcess) -> None:
    server = _server(tmp_path, slow_fake, drain=30)
    sent = time.monotonic()
    server.signal(signal.SIGINT)
    assert server.process is not None and server.process.wait(15) == 0
    assert time.monotonic() - sent < 5


def test_port_and_data_dir_precedence(tmp_path: Path, slow_fake: FakeUpstreamProcess) -> None:
    file_port, env_port, flag_port = free_port(), free_port(), free_port()
    config_path = tmp_path / "shipyard.yaml"
    config_path.write_text(
        yaml.safe_dump(
            {
                "server": {"port": file_port},
                "engines": {"f": {"kind": "openai", "base_url": slow_fake.base_url}},
                "deployments": {"d": {"targets": [{"engine": "f"}]}},
            }
        )
    )
    cases = [
        ({"SHIPYARD_CONFIG": str(config_path)}, None, file_port),
        ({"SHIPYARD_CONFIG": str(config_path), "SHIPYARD_PORT": str(env_port)}, None, env_port),
        ({"SHIPYARD_CONFIG": str(config_path), "SHIPYARD_PORT": str(env_port)}, flag_port, flag_port),
    ]
    for index, (env, flag, expected) in enumerate(cases):
        data = tmp_path / f"d{index}"
        extra = ["--port", str(flag)] if flag else []
        server = ShipyardProcess(
            data, env={**env, "SHIPYARD_DATA_DIR": str(data)}, port=expected, flags=False, extra_args=extra
        )
        server.start()
        try:
            server.wait_ready(60)  # polls `expected`: only the winning source's port answers
            assert (data / "shipyard.db").exists()  # SHIPYARD_DATA_DIR took effect
        finally:
            assert server.stop() == 0
