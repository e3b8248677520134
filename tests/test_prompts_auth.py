"""Prompt labels with access control on: writers push and move labels, only an admin key may force a protected
label, and the label's history names the key that moved it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx

from tests.helpers import FakeUpstreamProcess, ShipyardProcess

ADMIN = "sy-" + "A" * 43


def test_forcing_a_protected_label_needs_an_admin_key(tmp_path: Path, fake_upstream: FakeUpstreamProcess) -> None:
    config = {
        "engines": {"fake": {"kind": "openai", "base_url": fake_upstream.base_url}},
        "deployments": {
            "chat": {"targets": [{"engine": "fake", "model": "fake-model"}]},
            "other": {"targets": [{"engine": "fake", "model": "fake-model"}]},
        },
    }
    server = ShipyardProcess(tmp_path / "data", config=config, env={"SHIPYARD_AUTH": "on", "SHIPYARD_ADMIN_KEY": ADMIN})
    server.start()
    try:
        server.wait_ready(60)
        api = server.url + "/api/v1"
        admin = {"authorization": f"Bearer {ADMIN}"}
        made = httpx.post(api + "/keys", json={"name": "writer", "scopes": ["prompts:write"]}, headers=admin)
        assert made.status_code == 201, made.text
        writer_key = made.json()["key"]
        prompt = tmp_path / "p.yaml"
        prompt.write_text("template: 'Hi {{ name }}'\n")

        def cli(key: str | None, *args: str) -> subprocess.CompletedProcess[str]:
            env = {"PATH": "/usr/bin:/bin", "SHIPYARD_API_KEY": key} if key else {"PATH": "/usr/bin:/bin"}
            command = [sys.executable, "-m", "shipyard.cli.main", "prompts", *args, "--url", server.url]
            return subprocess.run(command, capture_output=True, text=True, timeout=60, env=env)

        anonymous = cli(None, "push", "greet", "-f", str(prompt))
        assert anonymous.returncode == 1 and "shipyard:" in anonymous.stderr
        assert cli(writer_key, "push", "greet", "-f", str(prompt)).returncode == 0
        assert cli(writer_key, "push", "greet", "-f", str(prompt)).returncode == 0
        assert cli(writer_key, "label", "greet", "1", "production", "--protect").returncode == 0
        refused = cli(writer_key, "label", "greet", "2", "production")
        assert refused.returncode == 1 and "protected" in refused.stderr
        forced = cli(writer_key, "label", "greet", "2", "production", "--force")
        assert forced.returncode == 1 and "admin" in forced.stderr
        assert cli(ADMIN, "label", "greet", "2", "production", "--force").returncode == 0
        history = httpx.get(api + "/prompts/greet/labels/production/history", headers=admin).json()["data"]
        assert [h["version"] for h in history] == [1, 2]
        assert history[0]["actor"] != history[1]["actor"]  # the writer's key, then the admin's
        assert all(h["actor"] not in ("api", "anonymous") for h in history)

        # Through the gateway: the deployment is checked before any prompt lookup, and naming a prompt needs
        # prompts:read (a prompt bound to a deployment does not).
        def key(scopes: list[str], deployments: list[str]) -> dict[str, str]:
            spec = {"name": "app", "scopes": scopes, "deployments": deployments}
            made = httpx.post(api + "/keys", json=spec, headers=admin)
            assert made.status_code == 201, made.text
            return {"authorization": f"Bearer {made.json()['key']}"}

        def chat(headers: dict[str, str], prompt: str) -> httpx.Response:
            body = {"model": "chat", "messages": [], "prompt": prompt, "variables": {"name": "Ada"}}
            return httpx.post(server.url + "/v1/chat/completions", json=body, headers=headers, timeout=10)

        elsewhere = key(["prompts:read"], ["other"])
        for name in ("greet", "no-such-prompt"):  # the same answer whether the prompt exists or not
            refused = chat(elsewhere, name)
            assert refused.status_code == 403 and refused.json()["error"]["code"] == "deployment_not_allowed"
        no_scope = chat(key([], ["chat"]), "greet")
        assert no_scope.status_code == 403 and no_scope.json()["error"]["code"] == "missing_scope"
        assert chat(key(["prompts:read"], ["chat"]), "greet@production").status_code == 200
        assert fake_upstream.stats()["last_body"]["messages"] == [{"role": "user", "content": "Hi Ada"}]
    finally:
        server.stop()
