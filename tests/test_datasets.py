"""Datasets: row checks that name the bad row, content hashes, versions on SQLite and PostgreSQL, and the CLI and
REST end to end through a real server."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest

from shipyard import Client
from shipyard.errors import InvalidRequest, ServerError
from shipyard.registry.artifacts import ArtifactStore
from shipyard.registry.datasets import DatasetService, canonical_jsonl, parse_rows, rows_from_records
from shipyard.store import Store
from tests.helpers import PostgresServer, ShipyardProcess, wait_until


def test_jsonl_and_csv_rows() -> None:
    jsonl = b'{"input": "2+2?", "expected": "4"}\n\n{"input": {"q": "x"}, "metadata": {"src": "a"}}\n'
    assert parse_rows(jsonl, "jsonl") == [
        {"input": "2+2?", "expected": "4"},
        {"input": {"q": "x"}, "metadata": {"src": "a"}},
    ]
    csv = b'input,expected,metadata\n"Hello, world",hi,"{""lang"": ""en""}"\nbye,,\n'
    assert parse_rows(csv, "csv") == [
        {"input": "Hello, world", "expected": "hi", "metadata": {"lang": "en"}},
        {"input": "bye"},
    ]


@pytest.mark.parametrize(
    ("data", "fmt", "words"),
    [
        (b'{"input": "a"}\n{"expected": "b"}\n', "jsonl", "line 2: 'input' is missing"),
        (b'{"input": "a"}\n{"input": "b"\n', "jsonl", "line 2: not valid JSON"),
        (b'{"input": "a"}\n\n[1, 2]\n', "jsonl", "line 3: expected an object"),
        (b'{"input": "a", "answer": "b"}\n', "jsonl", "line 1: unknown field(s) answer"),
        (b'{"input": "a", "metadata": [1]}\n', "jsonl", "line 1: 'metadata' must be an object"),
        (b"input,expected\na,b\n,c\n", "csv", "line 3: 'input' is missing"),
        (b'input,metadata\na,"{not json"\n', "csv", "line 2: 'metadata' must be a JSON object"),
        (b"input,label\na,b\n", "csv", "unknown column(s) label"),
        (b"question\na\n", "csv", "needs an 'input' column"),
        (b"", "jsonl", "no rows"),
        (b"x", "xml", "Unsupported dataset format"),
        (b"not parquet", "parquet", "Not a readable Parquet file"),
    ],
)
def test_bad_rows_are_named(data: bytes, fmt: str, words: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_rows(data, fmt)
    assert words in info.value.message


def _parquet(path: Path, columns: dict) -> Path:
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    pq.write_table(pa.table(columns), path)
    return path


GOOD_PARQUET = {"input": ["a", "b"], "expected": ["A", None], "metadata": ['{"k": 1}', ""]}


def test_parquet_rows(tmp_path: Path) -> None:
    good = _parquet(tmp_path / "good.parquet", GOOD_PARQUET)
    assert parse_rows(good.read_bytes(), "parquet") == [
        {"input": "a", "expected": "A", "metadata": {"k": 1}},
        {"input": "b"},
    ]
    bad = _parquet(tmp_path / "bad.parquet", {"input": ["a", None, "c"]})
    with pytest.raises(InvalidRequest, match="row 2: 'input' is missing"):
        parse_rows(bad.read_bytes(), "parquet")


def test_canonical_form_and_trace_hook() -> None:
    assert canonical_jsonl([{"input": "a", "expected": "b"}]) == canonical_jsonl([{"expected": "b", "input": "a"}])
    rows = rows_from_records([{"input": "hi", "output": "hello", "model": "m", "latency_ms": None}])
    assert rows == [{"input": "hi", "expected": "hello", "metadata": {"model": "m"}}]


@pytest.mark.postgres
def test_versions_hashes_and_appends(store_url: str, tmp_path: Path) -> None:
    store = Store(store_url)
    artifacts = ArtifactStore(tmp_path / "artifacts")
    svc = DatasetService(store.registry.datasets, artifacts)
    one = svc.create("qa", [{"input": "a"}, {"input": "b", "expected": "B"}], message="first")
    assert (one["version"], one["rows"], one["parent"]) == (1, 2, None)
    assert hashlib.sha256(artifacts.get_bytes(one["uri"])).hexdigest() == one["sha256"]
    two = svc.create("qa", [{"input": "c"}], append=True)
    assert (two["version"], two["rows"], two["parent"]) == (2, 3, 1)
    assert [r["input"] for r in svc.rows("qa")[1]] == ["a", "b", "c"]
    assert [r["input"] for r in svc.rows("qa", 1)[1]] == ["a", "b"]  # versions are immutable
    same = svc.create("qa", [{"input": "a"}, {"input": "b", "expected": "B"}])
    assert same["version"] == 3 and same["sha256"] == one["sha256"] and same["uri"] == one["uri"]
    with pytest.raises(Exception, match="No dataset"):
        svc.rows("qa", 9)

    # Concurrent appends each build on the one before: no row is lost.
    errors: list[BaseException] = []

    def appender(worker: int) -> None:
        try:
            for step in range(3):
                svc.create("qa", [{"input": f"w{worker}-{step}"}], append=True)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=appender, args=(w,)) for w in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    latest, rows = svc.rows("qa")
    assert latest["version"] == 12 and len(rows) == 2 + 9

    artifacts.put_bytes(one["uri"], b'{"input": "tampered"}\n')  # changed behind the registry's back
    with pytest.raises(ServerError, match="content hash"):
        svc.rows("qa", 1)
    store.close()


@pytest.mark.postgres
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_datasets_cli_and_rest(backend: str, tmp_path: Path, fake_upstream, request: pytest.FixtureRequest) -> None:
    env = {}
    if backend == "postgresql":
        env["SHIPYARD_DATABASE_URL"] = PostgresServer.fresh_database(request.getfixturevalue("postgres_url"))
    config = {
        "engines": {"fake": {"kind": "openai", "base_url": fake_upstream.base_url}},
        "deployments": {"chat": {"targets": [{"engine": "fake", "model": "fake-model"}]}},
    }
    server = ShipyardProcess(tmp_path / "data", config=config, env=env)
    server.start()
    try:
        server.wait_ready(60)

        def cli(*args: str) -> subprocess.CompletedProcess[str]:
            command = [sys.executable, "-m", "shipyard.cli.main", "datasets", *args, "--url", server.url]
            return subprocess.run(command, capture_output=True, text=True, timeout=60)

        first = tmp_path / "qa.jsonl"
        first.write_text('{"input": "2+2?", "expected": "4"}\n{"input": "capital of France?", "expected": "Paris"}\n')
        more = tmp_path / "more.csv"
        more.write_text("input,expected\nHi,Hello\n")
        broken = tmp_path / "broken.jsonl"
        broken.write_text('{"input": "ok"}\n{"inptu": "typo"}\n')
        created = cli("create", "qa", "-f", str(first), "-m", "seed")
        assert created.returncode == 0, created.stderr
        assert "qa:1 created: 2 rows" in created.stdout
        assert "qa:2 created: 3 rows" in cli("append", "qa", "-f", str(more)).stdout
        bad = cli("create", "qa", "-f", str(broken))
        assert bad.returncode == 1 and "line 2" in bad.stderr and "inptu" in bad.stderr
        assert cli("list").stdout.split() == ["qa", "v2"]  # the refused file made no version
        listing = cli("show", "qa").stdout.splitlines()
        assert listing[0].startswith("v1\t2 rows") and "file:qa.jsonl" in listing[0]
        assert "(appended to v1)" in listing[1]
        parquet = _parquet(tmp_path / "more.parquet", GOOD_PARQUET)
        assert "qa:3 created: 5 rows" in cli("append", "qa", "-f", str(parquet)).stdout
        last = cli("show", "qa:2").stdout.splitlines()[-1]
        assert last == '{"expected": "Hello", "input": "Hi"}'  # canonical: keys sorted

        with Client(server.url) as client:
            made = client.datasets.create("api-made", [{"input": "x", "metadata": {"k": 1}}], message="via sdk")
            assert made["version"] == 1 and made["source"] == "api"
            assert client.datasets.rows("api-made") == [{"input": "x", "metadata": {"k": 1}}]
        # Filter traces -> dataset: three recorded calls become three rows.
        for text in ("one", "two", "three"):
            body = {"model": "chat", "messages": [{"role": "user", "content": text}]}
            assert httpx.post(server.url + "/v1/chat/completions", json=body, timeout=10).status_code == 200

        def traced() -> bool:
            found = httpx.get(server.url + "/api/v1/traces", params={"deployment": "chat"}, timeout=5).json()
            return len(found["data"]) >= 3

        wait_until(traced, 20, 0.2, "three traces")
        made = cli("from-traces", "calls", "--deployment", "chat", "-m", "from production")
        assert made.returncode == 0, made.stderr
        assert "calls:1 created: 3 rows from traces (traces:deployment=chat)" in made.stdout
        rows = httpx.get(server.url + "/api/v1/datasets/calls/rows", timeout=5).json()["data"]
        assert [r["input"] for r in rows] == [[{"role": "user", "content": t}] for t in ("one", "two", "three")]
        assert all(r["expected"] is not None and len(r["metadata"]["trace_id"]) == 32 for r in rows)
        assert cli("from-traces", "none", "--deployment", "nope").returncode == 1
        refused = httpx.post(server.url + "/api/v1/datasets/x/versions", json={"rows": [{"nope": 1}]}, timeout=5)
        assert refused.status_code == 400 and "row 1" in refused.json()["error"]["message"]
        traversal = httpx.post(server.url + "/api/v1/datasets/..%2f..%2fetc/versions", json={"rows": [{"input": 1}]})
        assert traversal.status_code in (400, 404)
        assert not (tmp_path / "data" / "etc").exists()
        missing = httpx.get(server.url + "/api/v1/datasets/nope/rows", timeout=5)
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "dataset_not_found"
    finally:
        server.stop()
    assert list((tmp_path / "data" / "artifacts" / "datasets").iterdir())  # the default artifact store
