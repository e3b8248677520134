"""Experiments end to end through the real CLI and server: a registry dataset through a deployment, scored,
stored, gated (exit codes), interrupted and resumed without redoing rows, compared; and one real run against
the bundled model with a judge.

The deterministic runs use the fake upstream (a stand-in for a hosted provider) so that scores are known.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from shipyard.sdk.client import Client
from tests.helpers import FakeUpstreamProcess, ShipyardProcess, default_sigint, fake_fleet, wait_until

GOOD = "hello from the fake"


@pytest.fixture(scope="module")
def evalbed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ShipyardProcess, FakeUpstreamProcess]]:
    def config(fake: FakeUpstreamProcess) -> dict[str, Any]:
        return {
            "engines": {"fake": {"kind": "openai", "base_url": fake.base_url}},
            "deployments": {"fake": {"targets": [{"engine": "fake", "model": "fake-model"}], "backoff": 0.01}},
            "tracing": {"prices": {"fake-model": {"input": 1.0, "output": 2.0}}},  # dollars per million tokens
        }

    with fake_fleet(tmp_path_factory.mktemp("evals"), config) as (server, fake):
        with Client(server.url) as client:
            rows = [{"input": f"question {i}", "expected": GOOD if i % 4 else "something else"} for i in range(20)]
            client.datasets.create("faq", rows, message="20 rows, 15 answerable by the fake")
        yield server, fake


def _suite(tmp_path: Path, **extra: Any) -> Path:
    suite = {
        "name": "faq-quality",
        "dataset": "faq",
        "target": {"deployment": "fake", "params": {"max_tokens": 8}},
        "scorers": ["exact_match", {"name": "contains", "options": {"substrings": ["fake"]}}, "rouge_l"],
        "concurrency": 4,
        **extra,
    }
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(suite))
    return path


def _cli(server: ShipyardProcess, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SHIPYARD_URL": server.url, "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "shipyard.cli.main", "eval", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


def _experiment(server: ShipyardProcess, path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def test_a_run_is_scored_stored_and_gated(evalbed, tmp_path) -> None:
    server, fake = evalbed
    fake.reset()
    out = tmp_path / "run.json"
    passing = _cli(server, "run", str(_suite(tmp_path)), "--gate", "exact_match.mean>=0.7", "--json", str(out))
    assert passing.returncode == 0, passing.stdout + passing.stderr
    assert "PASS  exact_match.mean>=0.7" in passing.stdout
    record = _experiment(server, out)
    scorers = record["summary"]["scorers"]
    assert scorers["exact_match"]["mean"] == pytest.approx(0.75) and scorers["contains"]["mean"] == 1.0
    assert scorers["exact_match"]["low"] <= 0.75 <= scorers["exact_match"]["high"]
    assert record["summary"]["run"]["rows"] == 20 and record["summary"]["run"]["errors"] == 0
    assert fake.stats()["requests"] == 20
    rows = httpx.get(f"{server.url}/api/v1/experiments/{record['id']}/rows", timeout=10).json()["data"]
    assert len(rows) == 20 and all(r["output"] == GOOD and len(r["trace_id"]) == 32 for r in rows)
    # The fake reports 5 prompt and 4 completion tokens: (5 × $1 + 4 × $2) per million, copied from each trace.
    assert all(r["cost"] == pytest.approx(13e-6) for r in rows)
    assert record["summary"]["run"]["cost"] == pytest.approx(20 * 13e-6)
    sent = fake.stats()["last_body"]
    assert sent["metadata"]["shipyard_experiment"] == record["id"] and sent["max_tokens"] == 8

    failing = _cli(server, "run", str(_suite(tmp_path)), "--gate", "exact_match.mean>=0.9")
    assert failing.returncode == 1 and "FAIL  exact_match.mean>=0.9" in failing.stdout
    relative = _cli(server, "run", str(_suite(tmp_path)), "--gate", "rouge_l.mean>=baseline-0.01",
                    "--baseline", record["id"])  # fmt: skip
    assert relative.returncode == 0, relative.stdout + relative.stderr


def test_bad_suites_and_gates_are_clear_errors(evalbed, tmp_path) -> None:
    server, _ = evalbed
    bad_gate = _cli(server, "run", str(_suite(tmp_path)), "--gate", "exact_match>=0.9")
    assert bad_gate.returncode == 2 and "is not of the form" in bad_gate.stderr
    bad_scorer = _cli(server, "run", str(_suite(tmp_path, scorers=["nope"])))
    assert bad_scorer.returncode != 0 and "unknown scorer 'nope'" in bad_scorer.stdout + bad_scorer.stderr
    unknown_metric = _cli(server, "run", str(_suite(tmp_path)), "--gate", "bleu.mean>=0.1")
    assert unknown_metric.returncode == 2 and "did not score" in unknown_metric.stderr
    no_dataset = _cli(server, "run", str(_suite(tmp_path, dataset="missing")))
    assert no_dataset.returncode == 1 and "missing" in no_dataset.stderr


def test_an_interrupted_run_resumes_without_redoing_rows(evalbed, tmp_path) -> None:
    server, fake = evalbed
    fake.reset()
    fake.script(*([{"delay_ms": 300}] * 20))  # slow answers, so the run can be interrupted halfway
    env = {**os.environ, "SHIPYARD_URL": server.url}
    suite = _suite(tmp_path, concurrency=2)
    process = subprocess.Popen([sys.executable, "-m", "shipyard.cli.main", "eval", "run", str(suite)], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               preexec_fn=default_sigint)  # fmt: skip
    wait_until(lambda: fake.stats()["requests"] >= 8, 60, what="8 rows sent")
    time.sleep(0.3)
    process.send_signal(signal.SIGINT)
    process.communicate(timeout=60)
    listed = httpx.get(f"{server.url}/api/v1/experiments", params={"name": "faq-quality"}, timeout=10).json()["data"]
    interrupted = listed[0]
    assert interrupted["status"] == "interrupted"
    saved = httpx.get(f"{server.url}/api/v1/experiments/{interrupted['id']}/rows", timeout=10).json()["data"]
    done = [r for r in saved if r["status"] == "ok"]
    assert 4 <= len(done) < 20
    sent_before = fake.stats()["requests"]
    resumed = _cli(server, "run", str(suite), "--resume", interrupted["id"])
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    record = httpx.get(f"{server.url}/api/v1/experiments/{interrupted['id']}", timeout=10).json()
    assert record["status"] == "finished" and record["summary"]["run"]["rows"] == 20
    # Only the rows that had not finished were sent again.
    assert fake.stats()["requests"] - sent_before == 20 - len(done)


def test_compare_two_runs(evalbed, tmp_path) -> None:
    server, fake = evalbed
    fake.reset()
    first = tmp_path / "a.json"
    assert _cli(server, "run", str(_suite(tmp_path)), "--json", str(first)).returncode == 0
    fake.script(*([{"text": "a different answer"}] * 5))  # B answers five rows worse
    second = tmp_path / "b.json"
    assert _cli(server, "run", str(_suite(tmp_path, concurrency=1)), "--json", str(second)).returncode == 0
    a, b = _experiment(server, first)["id"], _experiment(server, second)["id"]
    as_json = _cli(server, "compare", a, b, "--format", "json")
    assert as_json.returncode == 0, as_json.stderr
    result = json.loads(as_json.stdout)
    assert result["scorers"]["contains"]["delta"] == pytest.approx(-0.25)
    assert result["scorers"]["contains"]["pairs"] == 20 and result["scorers"]["contains"]["p_value"] < 0.1
    assert len(result["changed_rows"]) == 5 and all(
        r["b_output"] == "a different answer" for r in result["changed_rows"]
    )
    table = _cli(server, "compare", a, b)
    assert table.returncode == 0 and "contains" in table.stdout and "Rows that changed most" in table.stdout
    page = tmp_path / "compare.html"
    assert _cli(server, "compare", a, b, "--format", "html", "-o", str(page)).returncode == 0
    assert page.read_text().startswith("<!doctype html>") and "a different answer" in page.read_text()


@pytest.mark.model
@pytest.mark.slow
def test_a_real_experiment_on_the_bundled_model_with_a_judge(bundled_server: ShipyardProcess, tmp_path) -> None:
    with Client(bundled_server.url) as client:
        client.datasets.create("capitals", [
            {"input": "What is the capital of France? Answer in one word.", "expected": "Paris"},
            {"input": "What is the capital of Italy? Answer in one word.", "expected": "Rome"},
            {"input": "What is 2 + 2? Answer with a number.", "expected": "4"},
        ])  # fmt: skip
    suite = {
        "name": "capitals",
        "dataset": "capitals",
        "target": {"deployment": "smollm2", "params": {"max_tokens": 8, "temperature": 0}},
        "scorers": ["contains", "edit_similarity", {"name": "judge", "options": {"deployment": "smollm2",
                                                                                 "max_tokens": 24}}],
        "concurrency": 3,
    }  # fmt: skip
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(suite))
    out = tmp_path / "run.json"
    result = _cli(bundled_server, "run", str(path), "--json", str(out), timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    record = json.loads(out.read_text())
    assert record["summary"]["run"]["errors"] == 0 and record["summary"]["run"]["completion_tokens"] > 0
    rows = httpx.get(f"{bundled_server.url}/api/v1/experiments/{record['id']}/rows", timeout=10).json()["data"]
    for row in rows:
        assert row["output"] and 0 <= row["scores"]["edit_similarity"]["value"] <= 1
        judge = row["scores"]["judge"]  # a 135M judge may not give a score; then it says why, never a silent 0
        assert judge["value"] is not None or "no score" in judge["reason"] or "outside" in judge["reason"]


def test_the_python_sdk_runs_and_compares_experiments(evalbed, tmp_path) -> None:
    server, fake = evalbed
    fake.reset()
    suite = yaml.safe_load(_suite(tmp_path).read_text())
    with Client(server.url) as client:
        first = client.experiments.run(suite)
        second = client.experiments.run(_suite(tmp_path))  # a path works too
        assert first["summary"]["scorers"]["exact_match"]["mean"] == pytest.approx(0.75)
        assert len(client.experiments.rows(first["id"])) == 20
        assert {first["id"], second["id"]} <= {e["id"] for e in client.experiments.list("faq-quality")}
        result = client.experiments.compare(first["id"], second["id"])
        assert result["scorers"]["exact_match"]["delta"] == 0 and result["changed_rows"] == []


def test_a_suite_runs_on_the_server_through_rest(evalbed, tmp_path) -> None:
    server, fake = evalbed
    fake.reset()
    suite = yaml.safe_load(_suite(tmp_path).read_text())
    started = httpx.post(f"{server.url}/api/v1/experiments/run", json={"suite": suite}, timeout=10)
    assert started.status_code == 202, started.text
    experiment = started.json()
    assert experiment["status"] == "running" and experiment["rows_total"] == 20

    def status() -> str:
        return httpx.get(f"{server.url}/api/v1/experiments/{experiment['id']}", timeout=10).json()["status"]

    wait_until(lambda: status() == "finished", 60, what="the server-side run")
    record = httpx.get(f"{server.url}/api/v1/experiments/{experiment['id']}", timeout=10).json()
    assert record["summary"]["scorers"]["exact_match"]["mean"] == pytest.approx(0.75)
    assert fake.stats()["requests"] == 20  # through this server's own gateway

    for bad, message in (
        ({**suite, "scorers": ["tests.scorer_examples:starts_with_yes"]}, "module paths"),
        ({**suite, "scorers": ["nope"]}, "unknown scorer"),
        ({**suite, "concurrency": 0}, "concurrency"),
    ):
        refused = httpx.post(f"{server.url}/api/v1/experiments/run", json={"suite": bad}, timeout=10)
        assert refused.status_code == 400 and message in refused.json()["error"]["message"], refused.text
    missing = httpx.post(f"{server.url}/api/v1/experiments/run", json={"suite": {**suite, "dataset": "nope"}})
    assert missing.status_code == 404
