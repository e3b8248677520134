"""The `shipyard` command: chat against the real server, and clear messages for bad input."""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.helpers import ShipyardProcess, free_port

SHIPYARD = [sys.executable, "-m", "shipyard.cli.main"]


def _run(*args: str, stdin: str = "", timeout: float = 120, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*SHIPYARD, *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


@pytest.mark.model
def test_chat_streams_answers_and_keeps_history(bundled_server: ShipyardProcess) -> None:
    process = subprocess.Popen(
        [*SHIPYARD, "chat", "smollm2", "--url", bundled_server.url, "--max-tokens", "24", "--temperature", "0"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdin is not None and process.stdout is not None
    process.stdin.write(b"Tell me about the ocean.\n")
    process.stdin.flush()
    arrivals: list[tuple[float, bytes]] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([process.stdout], [], [], 0.5)
        if ready:
            data = os.read(process.stdout.fileno(), 4096)
            arrivals.append((time.monotonic(), data))
            if data.endswith(b"\n"):
                break
    answer = b"".join(d for _, d in arrivals).decode()
    assert answer.strip(), "no answer printed"
    assert len(arrivals) >= 3, "the answer arrived in one piece: tokens were not streamed"
    assert arrivals[-1][0] - arrivals[0][0] > 0.2
    out, err = process.communicate(b"/reset\nAnd the sky?\n/exit\n", timeout=60)
    assert process.returncode == 0
    assert "conversation reset" in err.decode()
    assert out.decode().strip(), "no second answer"


@pytest.mark.model
def test_chat_reports_errors_and_goes_on(bundled_server: ShipyardProcess) -> None:
    result = _run("chat", "no-such-deployment", "--url", bundled_server.url, stdin="hello\n")
    assert result.returncode == 0
    assert "HTTP 404" in result.stderr and "no-such-deployment" in result.stderr


def test_chat_against_nothing_listening_exits_1() -> None:
    result = _run("chat", "smollm2", "--url", f"http://127.0.0.1:{free_port()}", stdin="hello\n", timeout=30)
    assert result.returncode == 1
    assert "error" in result.stderr.lower()
    assert "Traceback" not in result.stderr


def test_up_with_a_bad_config_prints_a_clear_message(tmp_path: Path) -> None:
    config = tmp_path / "shipyard.yaml"
    config.write_text(yaml.safe_dump({"server": {"port": "eighty"}}))
    result = _run("up", "--config", str(config), "--data-dir", str(tmp_path / "d"), timeout=60)
    assert result.returncode == 2
    assert "server.port" in result.stderr
    assert "Traceback" not in result.stderr


def test_config_show_and_version(tmp_path: Path) -> None:
    config = tmp_path / "shipyard.yaml"
    config.write_text(yaml.safe_dump({"server": {"port": 7123}}))
    shown = yaml.safe_load(_run("config", "show", "--config", str(config)).stdout)
    assert shown["server"]["port"] == 7123
    assert shown["deployments"]["smollm2"]["targets"][0]["engine"] == "local"
    from shipyard import __version__

    assert _run("version").stdout.strip() == __version__
