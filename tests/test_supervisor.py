"""The supervisor with real processes: `launch` engines started, health-checked, restarted, stopped."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.helpers import ShipyardProcess, wait_until

MSG = [{"role": "user", "content": "hi"}]
FAKE = [sys.executable, "-m", "shipyard.testing.fake_upstream", "--port", "{port}"]


def _slow_fake(delay: float) -> list[str]:
    """The fake upstream, started only after `delay` seconds (an engine that takes time to load)."""
    code = (
        f"import time, runpy, sys; time.sleep({delay}); sys.argv = ['fake', '--port', sys.argv[1]]; "
        "runpy.run_module('shipyard.testing.fake_upstream', run_name='__main__')"
    )
    return [sys.executable, "-c", code, "{port}"]


def _with_grandchild(pid_file: Path) -> list[str]:
    """An engine that spawns a child of its own (like vLLM's workers), then serves."""
    code = (
        "import os, subprocess, sys; "
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']); "
        f"open({str(pid_file)!r}, 'w').write(str(child.pid)); "
        "os.execv(sys.executable, [sys.executable, '-m', 'shipyard.testing.fake_upstream', '--port', sys.argv[1]])"
    )
    return [sys.executable, "-c", code, "{port}"]


def _config(command: list[str], **engine: object) -> dict:
    return {
        "engines": {"eng": {"kind": "launch", "command": command, "restart_backoff": 0.2, **engine}},
        "deployments": {"d": {"targets": [{"engine": "eng", "model": "fake-model"}]}},
    }


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead for our purposes
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


@pytest.fixture()
def start(tmp_path: Path) -> Iterator:
    servers: list[ShipyardProcess] = []

    def run(config: dict, **kwargs: object) -> ShipyardProcess:
        server = ShipyardProcess(tmp_path / f"data{len(servers)}", config=config, **kwargs)  # type: ignore[arg-type]
        servers.append(server)
        server.start()
        server.wait_listening(60)
        return server

    yield run
    for server in servers:
        server.stop()


def engine_info(server: ShipyardProcess) -> dict:
    return httpx.get(server.url + "/api/v1/engines/eng", timeout=5).json()


def test_launch_engine_waits_for_health_then_serves(start) -> None:
    server = start(_config(_slow_fake(2.0)))
    assert httpx.get(server.url + "/readyz", timeout=5).status_code == 503  # still loading
    server.wait_ready(30)
    info = engine_info(server)
    assert info["healthy"] is True and info["pid"] and info["restarts"] == 0
    assert info["base_url"].startswith("http://127.0.0.1:") and info["base_url"].endswith("/v1")
    response = httpx.post(server.url + "/v1/chat/completions", json={"model": "d", "messages": MSG}, timeout=10)
    assert response.status_code == 200


def test_a_killed_engine_is_restarted(start) -> None:
    server = start(_config(FAKE))
    server.wait_ready(30)
    first = engine_info(server)
    os.kill(first["pid"], signal.SIGKILL)
    wait_until(
        lambda: engine_info(server)["restarts"] >= 1 and engine_info(server)["healthy"],
        20,
        what="the engine to come back",
    )
    second = engine_info(server)
    assert second["pid"] != first["pid"] and alive(second["pid"])
    assert second["base_url"] == first["base_url"]  # same port across restarts
    assert "exited with code" in second["last_error"]
    response = httpx.post(server.url + "/v1/chat/completions", json={"model": "d", "messages": MSG}, timeout=10)
    assert response.status_code == 200


def test_restart_backoff_grows(start) -> None:
    crash = [sys.executable, "-c", "import sys; sys.exit(3)"]
    server = start(_config(crash, restart_backoff=0.2, restart_backoff_max=1.6))
    time.sleep(4.0)
    info = engine_info(server)
    # Delays 0.2, 0.4, 0.8, 1.6, 1.6 ... give about 4-5 restarts in 4 s; a fixed 0.2 s delay would give ~15.
    assert 2 <= info["restarts"] <= 7, info
    assert info["last_error"] == "exited with code 3 while starting"
    assert info["healthy"] is False
    assert httpx.get(server.url + "/readyz", timeout=5).status_code == 503


def test_an_unhealthy_live_engine_is_restarted(start) -> None:
    server = start(_config(FAKE, health_interval=0.2, unhealthy_restart_after=3))
    server.wait_ready(30)
    first = engine_info(server)
    engine_root = first["base_url"].removesuffix("/v1")
    httpx.post(engine_root + "/_fake/health", json={"ok": False}, timeout=5).raise_for_status()
    wait_until(lambda: engine_info(server)["restarts"] >= 1, 20, what="a restart of the unhealthy engine")
    assert "health checks" in engine_info(server)["last_error"]
    wait_until(lambda: engine_info(server)["healthy"], 20, what="the new engine process to be healthy")
    assert not alive(first["pid"])


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_shutdown_leaves_no_process_behind(start, tmp_path: Path, sig: int) -> None:
    pid_file = tmp_path / "grandchild.pid"
    server = start(_config(_with_grandchild(pid_file)))
    server.wait_ready(30)
    engine_pid = engine_info(server)["pid"]
    wait_until(pid_file.exists, 10, what="the grandchild pid")
    grandchild = int(pid_file.read_text())
    assert alive(engine_pid) and alive(grandchild)
    server.signal(sig)
    assert server.process is not None
    assert server.process.wait(30) == 0
    wait_until(lambda: not alive(engine_pid) and not alive(grandchild), 10, what="engine and grandchild to exit")


def test_engines_die_with_a_killed_gateway(start) -> None:
    server = start(_config(FAKE))
    server.wait_ready(30)
    engine_pid = engine_info(server)["pid"]
    server.signal(signal.SIGKILL)
    assert server.process is not None
    server.process.wait(10)
    wait_until(lambda: not alive(engine_pid), 10, what="the engine to follow its parent (PR_SET_PDEATHSIG)")


def test_missing_key_variable_is_a_clear_startup_error(tmp_path: Path) -> None:
    config = {
        "engines": {
            "hosted": {
                "kind": "openai",
                "base_url": "https://example.invalid/v1",
                "api_key_env": "SHIPYARD_TEST_UNSET_KEY",
            }
        },
        "deployments": {"d": {"targets": [{"engine": "hosted", "model": "m"}]}},
    }
    assert "SHIPYARD_TEST_UNSET_KEY" not in os.environ
    server = ShipyardProcess(tmp_path / "data", config=config)
    server.start()
    assert server.process is not None
    assert server.process.wait(60) == 2
    log = server.log()
    assert "SHIPYARD_TEST_UNSET_KEY" in log and "Traceback" not in log
