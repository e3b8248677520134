"""Prompts end to end through a real server: the CLI, REST, the gateway rendering prompts, a deployment bound to
a label that follows label moves without a restart, and the SDK's cache surviving a server outage.

The engine is the fake upstream (a stand-in for a hosted provider) so the test can see exactly what the gateway
sent after rendering.
"""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest

from shipyard import Client
from shipyard.errors import ServiceUnavailable
from tests.helpers import FakeUpstreamProcess, PostgresServer, ShipyardProcess, wait_until

pytestmark = pytest.mark.postgres

V1 = """\
messages:
  - role: system
    content: "You are {{ company }}'s support bot. Answer in {{ language }}."
params:
  temperature: 0.2
  max_tokens: 16
message: first version
"""
V2 = V1.replace("support bot", "friendly support bot").replace("first version", "friendlier")


def _cli(server: ShipyardProcess, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "shipyard.cli.main", "prompts", *args, "--url", server.url]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


def _ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture(params=["sqlite", "postgresql"])
def server(request: pytest.FixtureRequest, tmp_path: Path, fake_upstream: FakeUpstreamProcess) -> ShipyardProcess:
    env = {}
    if request.param == "postgresql":
        env["SHIPYARD_DATABASE_URL"] = PostgresServer.fresh_database(request.getfixturevalue("postgres_url"))
    config = {
        "engines": {"fake": {"kind": "openai", "base_url": fake_upstream.base_url}},
        "deployments": {
            "chat": {"targets": [{"engine": "fake", "model": "fake-model"}]},
            "support": {"targets": [{"engine": "fake", "model": "fake-model"}], "prompt": "support-bot@production"},
        },
    }
    proc = ShipyardProcess(tmp_path / "data", config=config, env=env)
    proc.start()
    proc.wait_ready(60)
    request.addfinalizer(proc.stop)
    return proc


def test_prompts_cli_rest_gateway_and_sdk(server: ShipyardProcess, fake_upstream: FakeUpstreamProcess, tmp_path):
    v1, v2 = tmp_path / "v1.yaml", tmp_path / "v2.yaml"
    v1.write_text(V1)
    v2.write_text(V2)
    assert "support-bot:1 pushed" in _ok(_cli(server, "push", "support-bot", "-f", str(v1), "--label", "production"))
    assert "support-bot:2 pushed" in _ok(_cli(server, "push", "support-bot", "-f", str(v2)))
    assert _ok(_cli(server, "list")).split() == ["support-bot", "v2", "latest=2", "production=1"]
    shown = _ok(_cli(server, "show", "support-bot@production"))
    assert "version: 1" in shown and "variables:\n- company\n- language" in shown
    diff = _ok(_cli(server, "diff", "support-bot", "production", "2"))
    assert "-  content: You are {{ company }}'s support bot." in diff
    assert "friendly support bot" in diff
    rendered = _ok(_cli(server, "render", "support-bot:2", "--var", "company=ACME", "--var", "language=French"))
    assert "You are ACME's friendly support bot. Answer in French." in rendered
    missing = _cli(server, "render", "support-bot", "--var", "company=ACME")
    assert missing.returncode == 1 and "language" in missing.stderr and "Traceback" not in missing.stderr

    client = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
    # A request names a prompt version plus variables; the caller's messages follow the rendered ones.
    client.chat.completions.create(
        model="chat",
        messages=[{"role": "user", "content": "Where is my parcel?"}],
        extra_body={"prompt": "support-bot:2", "variables": {"company": "ACME", "language": "German"}},
    )
    sent = fake_upstream.stats()["last_body"]
    assert sent["messages"] == [
        {"role": "system", "content": "You are ACME's friendly support bot. Answer in German."},
        {"role": "user", "content": "Where is my parcel?"},
    ]
    assert sent["temperature"] == 0.2 and sent["max_tokens"] == 16
    assert "prompt" not in sent and "variables" not in sent
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model="chat", messages=[], extra_body={"prompt": "support-bot", "variables": {}})
    assert bad.value.code == "missing_prompt_variables" and "company, language" in bad.value.message
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="chat", messages=[], extra_body={"prompt": "nope@production"})

    # The bound deployment follows the production label; a move applies to the next request, no restart.
    ask = {"variables": {"company": "ACME", "language": "Dutch"}}
    client.chat.completions.create(model="support", messages=[{"role": "user", "content": "hi"}], extra_body=ask)
    assert "support bot" in fake_upstream.stats()["last_body"]["messages"][0]["content"]
    assert "support-bot@production -> v2 (was v1)" in _ok(_cli(server, "label", "support-bot", "2", "production"))
    client.chat.completions.create(model="support", messages=[{"role": "user", "content": "hi"}], extra_body=ask)
    assert "friendly support bot" in fake_upstream.stats()["last_body"]["messages"][0]["content"]

    # The trace of each call records the prompt version that was rendered into it (tracing, issue 3).
    def traced(deployment: str, ref: str) -> bool:
        export = httpx.get(server.url + "/api/v1/traces/export", params={"deployment": deployment}, timeout=10)
        return f'"prompt_ref":"{ref}"' in export.text

    wait_until(lambda: traced("chat", "support-bot:2") and traced("support", "support-bot:1"), 20, 0.2, "traces")

    # Protection: a protected label moves only with --force (admin scope once API keys exist).
    _ok(_cli(server, "label", "support-bot", "2", "production", "--protect"))
    refused = _cli(server, "label", "support-bot", "1", "production")
    assert refused.returncode == 1 and "protected" in refused.stderr
    assert "v1 (was v2) [protected]" in _ok(_cli(server, "label", "support-bot", "1", "production", "--force"))
    latest = httpx.put(server.url + "/api/v1/prompts/support-bot/labels/latest", json={"version": 1}, timeout=5)
    assert latest.status_code == 400

    # Concurrent label moves through the API: every move answers 200 and the history is one unbroken chain.
    def move(index: int) -> int:
        url = server.url + "/api/v1/prompts/support-bot/labels/staging"
        return httpx.put(url, json={"version": 1 + index % 2, "actor": f"t{index}"}, timeout=30).status_code

    with ThreadPoolExecutor(8) as pool:
        assert set(pool.map(move, range(24))) == {200}
    history = httpx.get(server.url + "/api/v1/prompts/support-bot/labels/staging/history", timeout=5).json()["data"]
    assert len(history) == 24 and history[0]["previous"] is None
    assert all(b["previous"] == a["version"] for a, b in zip(history, history[1:], strict=False))

    # The SDK: fetch, render locally, and keep working from the cache while the server is down.
    sdk = Client(server.url, cache_ttl=0.0)
    prompt = sdk.prompts.get("support-bot", label="production")
    assert prompt.version == 1 and not prompt.stale
    assert prompt.render(company="ACME", language="Irish")[0]["content"].endswith("Answer in Irish.")
    pinned = sdk.prompts.get("support-bot", version=2)
    server.stop()
    fallback = sdk.prompts.get("support-bot", label="production")
    assert fallback.stale and fallback.version == 1
    assert sdk.prompts.get("support-bot", version=2) is pinned  # versions are immutable: cached for good
    with pytest.raises(ServiceUnavailable):
        sdk.prompts.get("support-bot", label="staging")  # never fetched: nothing to fall back on
    sdk.close()
