"""Online evaluation through the real server: rules score a sample of live calls in the background, never on
the request path, with the exact deterministic sample, stored per call and as a time series."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator

import httpx
import pytest

from shipyard.config import load_settings
from shipyard.errors import ConfigError
from shipyard.evals.online import sampled
from tests.helpers import FakeUpstreamProcess, ShipyardProcess, fake_fleet, wait_until

RULES = [
    {"name": "shape", "deployment": "live", "sample_rate": 1.0, "interval": 0.3,
     "scorers": ["json_valid", {"name": "length", "options": {"max_words": 3}}, "guardrail_flags"]},
    {"name": "half", "deployment": "live", "sample_rate": 0.5, "interval": 0.3, "scorers": ["json_valid"]},
]  # fmt: skip


@pytest.fixture(scope="module")
def online(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ShipyardProcess, FakeUpstreamProcess]]:
    def config(fake: FakeUpstreamProcess) -> dict:
        return {
            "engines": {"fake": {"kind": "openai", "base_url": fake.base_url}},
            "deployments": {
                "live": {"targets": [{"engine": "fake", "model": "fake-model"}],
                         "guardrails": {"rules": [{"scanner": "pii", "side": "input", "action": "flag"}]}},
                "other": {"targets": [{"engine": "fake", "model": "fake-model"}]},
            },
            "online_evals": RULES,
        }  # fmt: skip

    with fake_fleet(tmp_path_factory.mktemp("online"), config) as fleet:
        yield fleet


def _db(server: ShipyardProcess) -> sqlite3.Connection:
    return sqlite3.connect(server.data_dir / "shipyard.db")


def test_live_calls_are_scored_in_the_background(online) -> None:
    server, fake = online
    fake.script(*([{"text": '{"answer": 42}'}] * 10))
    for i in range(20):
        content = f"question {i}" + (" from ann@example.com" if i == 0 else "")
        body = {"model": "live", "messages": [{"role": "user", "content": content}], "stream": i % 2 == 1}
        assert httpx.post(server.url + "/v1/chat/completions", json=body, timeout=30).status_code == 200
    httpx.post(server.url + "/v1/chat/completions", json={"model": "other", "messages": [{"role": "user",
               "content": "not sampled: another deployment"}]}, timeout=30)  # fmt: skip

    def spans() -> list[tuple[str, str]]:
        with _db(server) as db:
            return db.execute(
                "SELECT trace_id, span_id FROM spans WHERE deployment = 'live' AND kind = 'llm'"
            ).fetchall()

    wait_until(lambda: len(spans()) == 20, 20, what="20 traced calls")
    calls = spans()
    expected_half = {c for c in calls if sampled(c[0], c[1], "half", 0.5)}
    assert 3 <= len(expected_half) <= 17

    def scores(rule: str) -> list[tuple]:
        with _db(server) as db:
            return db.execute("SELECT trace_id, span_id, scorer, value, reason FROM trace_scores WHERE rule = ?",
                              (rule,)).fetchall()  # fmt: skip

    wait_until(lambda: len(scores("shape")) == 60 and len(scores("half")) == len(expected_half), 30,
               what="every sampled call scored")  # fmt: skip
    shape = scores("shape")
    json_valid = [row[3] for row in shape if row[2] == "json_valid"]
    assert sorted(json_valid) == [0.0] * 10 + [1.0] * 10  # ten JSON answers, ten "hello from the fake"
    assert {(row[0], row[1]) for row in scores("half")} == expected_half
    flagged = [row for row in shape if row[2] == "guardrail_flags" and row[3] == 0.0]
    assert len(flagged) == 1 and "pii:email" in flagged[0][4]
    time.sleep(1.0)
    assert len(scores("shape")) == 60  # passes over the same calls never score them twice

    trace_id = shape[0][0]
    on_trace = httpx.get(server.url + "/api/v1/online-evals/scores", params={"trace_id": trace_id}, timeout=10)
    assert {r["rule"] for r in on_trace.json()["data"]} >= {"shape"}
    series = httpx.get(server.url + "/api/v1/online-evals/shape/series", params={"scorer": "json_valid",
                       "bucket": 3600}, timeout=10).json()["data"]  # fmt: skip
    assert sum(p["n"] for p in series) == 20 and sum(p["mean"] * p["n"] for p in series) == pytest.approx(10)
    assert httpx.get(server.url + "/api/v1/online-evals/nope/series", params={"scorer": "x"}).status_code == 404


def test_rules_are_checked_when_the_configuration_loads(tmp_path) -> None:
    import yaml

    def load(rule: dict) -> None:
        path = tmp_path / "shipyard.yaml"
        path.write_text(yaml.safe_dump({
            "engines": {"e": {"kind": "openai", "base_url": "http://127.0.0.1:9/v1"}},
            "deployments": {"d": {"targets": [{"engine": "e"}]}},
            "online_evals": [{"name": "r", "deployment": "d", "scorers": ["json_valid"], **rule}],
        }))  # fmt: skip
        load_settings(config_path=path, environ={})

    load({})
    with pytest.raises(ConfigError, match="expected answer"):
        load({"scorers": ["exact_match"]})
    with pytest.raises(ConfigError, match="unknown deployment"):
        load({"deployment": "nope"})
    with pytest.raises(ConfigError, match="module paths are only accepted"):
        load({"scorers": ["os:system"]})
