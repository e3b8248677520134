"""Docs are code: the prompt example in docs/registry.md runs, command by command, against a real server."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

from tests.helpers import FakeUpstreamProcess, ShipyardProcess

GUIDE = Path(__file__).resolve().parent.parent / "docs" / "registry.md"


def _marked(name: str, language: str) -> str:
    found = re.search(rf"<!-- registry-example: {name} -->\n```{language}\n(.*?)```", GUIDE.read_text(), re.S)
    assert found, f"docs/registry.md lost its {name} example"
    return found.group(1)


def test_registry_guide_prompt_example_runs(tmp_path: Path, fake_upstream: FakeUpstreamProcess) -> None:
    (tmp_path / "support-bot.yaml").write_text(_marked("prompt-file", "yaml"))
    config = {
        "engines": {"fake": {"kind": "openai", "base_url": fake_upstream.base_url}},
        "deployments": {"chat": {"targets": [{"engine": "fake", "model": "fake-model"}]}},
    }
    server = ShipyardProcess(tmp_path / "data", config=config)
    server.start()
    try:
        server.wait_ready(60)
        outputs = []
        for line in _marked("prompt-commands", "bash").splitlines():
            words = shlex.split(line, comments=True)
            assert words[0] == "shipyard"
            command = [sys.executable, "-m", "shipyard.cli.main", *words[1:], "--url", server.url]
            result = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=tmp_path)
            assert result.returncode == 0, (line, result.stderr)
            outputs.append(result.stdout)
        assert len(outputs) == 9
        assert "You are ACME's support assistant. Answer in French." in outputs[6]
        assert outputs[-1].strip() == "support-bot@production -> v1 (was v2) [protected]"
    finally:
        server.stop()
