"""The load-test run repository on SQLite and PostgreSQL."""

from __future__ import annotations

from shipyard.store.db import Store


def _record(run_id: str, created: float, label: str | None = None, passed: bool | None = True) -> dict:
    return {
        "id": run_id,
        "kind": "run",
        "created_at": created,
        "label": label,
        "target": "http://127.0.0.1:9/v1/chat/completions",
        "model": "m",
        "shape": "poisson 5 req/s",
        "workers": 2,
        "passed": passed,
        "summary": {"requests": 10, "throughput_rps": 4.5, "latency_ms": {"ttft": {"p50": 12.5}}},
        "aggregate": {"hists": {"ttft": {"counts": [[1, 2]]}}},
    }


def test_runs_are_kept_listed_found_and_deleted(store_url: str) -> None:
    store = Store(store_url)
    try:
        repo = store.loadtest
        repo.add(_record("20260101-000000-aaaaaa", 100.0, "base"))
        repo.add(_record("20260101-000001-bbbbbb", 200.0, passed=None))
        repo.add(_record("20260102-000000-cccccc", 300.0, "cand_1", passed=False))
        listed = repo.list()
        assert [r["id"] for r in listed] == [
            "20260102-000000-cccccc",
            "20260101-000001-bbbbbb",
            "20260101-000000-aaaaaa",
        ]
        assert listed[0]["passed"] is False and listed[1]["passed"] is None and listed[2]["label"] == "base"
        assert listed[0]["requests"] == 10 and listed[0]["throughput_rps"] == 4.5 and "record" not in listed[0]
        assert [r["id"] for r in repo.list(limit=1)] == ["20260102-000000-cccccc"]
        assert repo.find("20260101") == ["20260101-000000-aaaaaa", "20260101-000001-bbbbbb"]
        assert repo.find("base") == ["20260101-000000-aaaaaa"]
        assert repo.find("cand_1") == ["20260102-000000-cccccc"]
        assert repo.find("2026010_") == []  # LIKE wildcards are matched literally
        record = repo.get("20260101-000000-aaaaaa")
        assert record == _record("20260101-000000-aaaaaa", 100.0, "base")
        assert repo.get("missing") is None
        assert repo.delete("20260101-000000-aaaaaa") and not repo.delete("20260101-000000-aaaaaa")
        assert len(repo.list()) == 2
    finally:
        store.close()
