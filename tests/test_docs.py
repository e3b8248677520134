"""Docs are code: the README's examples run against a real server."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ShipyardProcess

README = Path(__file__).resolve().parent.parent / "README.md"
DEFAULT = "http://127.0.0.1:8000"


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README.read_text(), flags=re.S)


@pytest.mark.model
def test_readme_python_example_runs(bundled_server: ShipyardProcess, tmp_path: Path) -> None:
    marked = re.search(r"<!-- readme-example: openai-client -->\n```python\n(.*?)```", README.read_text(), re.S)
    assert marked, "the README lost its openai-client example"
    script = tmp_path / "example.py"
    script.write_text(marked.group(1).replace(DEFAULT, bundled_server.url))
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr
    assert "CompletionUsage" in result.stdout  # both the reply's and the stream's usage were printed
    assert result.stdout.count("CompletionUsage") == 2


@pytest.mark.model
def test_readme_curl_examples_run(bundled_server: ShipyardProcess) -> None:
    commands = []
    for block in _blocks("bash"):
        for command in block.replace("\\\n", " ").splitlines():
            if command.strip().startswith("curl "):
                commands.append(command.replace(DEFAULT, bundled_server.url))
    assert len(commands) >= 5
    for command in commands:
        result = subprocess.run(shlex.split(command), capture_output=True, text=True, timeout=180)
        assert result.returncode == 0, command
        assert result.stdout.strip(), command
        assert not _is_error(result.stdout), (command, result.stdout)


def _is_error(output: str) -> bool:
    """An OpenAI-shaped error answer, or a stream that carries an error event (a field named "error" in a
    recorded trace is not one)."""
    text = output.strip()
    if text.startswith("{"):
        return set(json.loads(text)) == {"error"}
    return any(line.startswith('data: {"error"') for line in text.splitlines())
