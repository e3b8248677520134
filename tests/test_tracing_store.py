"""The trace repository on SQLite and PostgreSQL, the local journal, the span tree, and retention (issue 3,
items 2, 5 and 7)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx

from shipyard.config import TracingConfig
from shipyard.store import Store
from shipyard.store.traces import TraceFilter
from shipyard.tracing.context import format_traceparent, parse_traceparent
from shipyard.tracing.journal import Journal
from shipyard.tracing.service import retention_cutoffs
from shipyard.tracing.tree import span_tree
from shipyard.tracing.writer import TraceWriter
from shipyard.tracing.writer_process import _lock_journal
from tests.helpers import ShipyardProcess, wait_until


def _span(trace: str, span: str, parent: str | None = None, **fields: object) -> dict:
    return {
        "trace_id": trace * 32 if len(trace) == 1 else trace,
        "span_id": span * 16,
        "parent_id": parent * 16 if parent else None,
        "name": fields.pop("name", "s"),
        "kind": "span",
        "source": "sdk",
        "start_time": fields.pop("start_time", 1000.0),
        "duration_ms": fields.pop("duration_ms", 10.0),
        "status": fields.pop("status", "ok"),
        **fields,
    }


def test_repo_writes_once_filters_pages_exports_and_deletes(store_url: str) -> None:
    store = Store(store_url)
    repo = store.traces
    try:
        rows = [
            _span("a", "1", start_time=100.0, deployment="d1", user="u1", meta={"k": "v"}, input='"Needle here"'),
            _span("a", "2", parent="1", start_time=100.1, output='"inner text"'),
            _span("b", "1", start_time=200.0, deployment="d2", status="error", duration_ms=900.0, project="p"),
            _span("c", "3", parent="9", start_time=50.0),  # its root never arrives: a span without a trace row
        ]
        assert repo.write(rows) == 4
        assert repo.write(rows[:2]) == 2  # replayed: skipped, not doubled
        assert repo.count() == 2 and repo.count_spans() == 4

        def ids(**where: object) -> list[str]:
            return [r["id"][0] for r in repo.list(TraceFilter(**where))[0]]

        assert ids() == ["b", "a"]
        assert ids(deployment="d1") == ["a"] and ids(status="error") == ["b"] and ids(user="u1") == ["a"]
        assert ids(meta_key="k", meta_value="v") == ["a"] and ids(meta_key="k", meta_value="w") == []
        assert ids(min_latency_ms=500) == ["b"] and ids(since=150) == ["b"] and ids(until=150) == ["a"]
        assert ids(text="needle") == ["a"] and ids(text="INNER") == ["a"] and ids(text="50%_") == []
        assert ids(project="p") == ["b"]
        first, cursor = repo.list(TraceFilter(), limit=1)
        second, end = repo.list(TraceFilter(), limit=1, cursor=cursor)
        assert [first[0]["id"][0], second[0]["id"][0]] == ["b", "a"] and end is None
        trace, spans = repo.get("a" * 32)
        assert trace["root_span_id"] == "1" * 16 and [s["span_id"][0] for s in spans] == ["1", "2"]
        assert spans[0]["input"] == "Needle here"  # stored as JSON text, returned decoded
        exported = list(repo.export(TraceFilter(), page=1))
        assert [t["id"][0] for t in exported] == ["a", "b"] and len(exported[0]["spans"]) == 2

        assert repo.delete_batch(150.0, exclude=["p"], batch=10) == 2  # trace a + c's orphan span
        assert repo.count() == 1 and repo.count_spans() == 1
        assert repo.delete_batch(1e12, exclude=["p"]) == 0  # b belongs to project p: its own retention
        assert repo.delete_batch(1e12, project="p") == 1 and repo.count_spans() == 0
    finally:
        store.close()


def test_sdk_trace_takes_the_deployment_and_user_of_its_gateway_call(store_url: str) -> None:
    """An application's trace (root from the SDK, no deployment) is listed under the deployment and user of the
    gateway call made inside it, whether the call's span is stored before or after the root; a root that has its
    own deployment keeps it, and gateway calls that start their own trace are untouched."""
    store = Store(store_url)
    repo = store.traces
    try:

        def call(trace: str, span: str, deployment: str, user: str | None) -> dict:
            return _span(trace, span, parent="1", source="gateway", kind="llm", deployment=deployment, user=user)

        repo.write([call("a", "2", "d1", "u1")])  # the call's span first (the SDK sends its root when it ends)
        repo.write([_span("a", "1")])
        repo.write([_span("b", "1")])  # the root first, then two calls: the first one's deployment is kept
        repo.write([call("b", "2", "d2", None), call("b", "3", "d3", "u3")])
        repo.write([_span("c", "1", deployment="own"), call("c", "2", "d1", None)])
        repo.write([_span("d", "1", source="gateway", deployment="d4")])

        def ids(**where: object) -> list[str]:
            return sorted(r["id"][0] for r in repo.list(TraceFilter(**where))[0])

        assert ids(deployment="d1") == ["a"] and ids(user="u1") == ["a"]
        assert ids(deployment="d2") == ["b"] and ids(deployment="d3") == [] and ids(user="u3") == ["b"]
        assert ids(deployment="own") == ["c"] and ids(deployment="d4") == ["d"]
    finally:
        store.close()


def test_writer_writes_whole_batches_and_the_rest_on_its_interval(tmp_path: Path) -> None:
    """Under load the writer must not shrink its transactions to what arrived during the last write: between
    intervals it writes whole batches only; what is left waits for the interval (or the stop)."""
    store = Store(f"sqlite:///{tmp_path / 'store.db'}")
    sizes: list[int] = []

    class Spy:  # the real repository, with the size of each batch it is given noted
        def write(self, rows: list[dict]) -> int:
            sizes.append(len(rows))
            return store.traces.write(rows)

    writer = TraceWriter(Spy(), Journal(tmp_path / "journal"), interval=3600, batch=10)
    writer.start()
    try:
        for index in range(25):
            writer.add([_span(f"{index:032x}", "1", start_time=float(index))])
        wait_until(lambda: sizes == [10, 10], 10, 0.01, "two whole batches")
        time.sleep(0.2)
        assert sizes == [10, 10] and writer.queue_depth == 5  # the rest waits: the interval is an hour
    finally:
        writer.stop()
    assert sizes == [10, 10, 5] and store.traces.count() == 25 and writer.written == 25
    store.close()


def test_journal_keeps_order_survives_reopen_and_empties(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    journal.append([[{"n": 1}], [{"n": 2}]])
    journal.append([[{"n": 3}]])
    records, offset = journal.read(2)
    assert records == [[{"n": 1}], [{"n": 2}]]
    journal.commit(offset)
    journal.close()
    with (tmp_path / "traces.jsonl").open("ab") as file:
        file.write(b'[{"n": 4')  # a record cut short by kill -9 while being written
    reopened = Journal(tmp_path)  # a restart resumes after what was replayed, without the torn record
    reopened.append([[{"n": 4}]])
    records, offset = reopened.read(10)
    assert records == [[{"n": 3}], [{"n": 4}]]
    reopened.commit(offset)
    assert reopened.pending_bytes == 0
    reopened.close()
    (tmp_path / "traces.jsonl").write_bytes(b"")
    emptied = Journal(tmp_path)
    assert emptied.pending_bytes == 0 and emptied.read(10) == ([], 0)
    emptied.append([[{"n": 5}]])
    records, offset = emptied.read(10)
    emptied.commit(offset)
    assert records == [[{"n": 5}]] and emptied.pending_bytes == 0 and emptied.path.stat().st_size == 0
    emptied.close()


def test_span_tree_and_traceparent() -> None:
    spans = [
        {"span_id": "r", "parent_id": None, "start_time": 1.0},
        {"span_id": "b", "parent_id": "r", "start_time": 3.0},
        {"span_id": "a", "parent_id": "r", "start_time": 2.0},
        {"span_id": "x", "parent_id": "a", "start_time": 2.5},
        {"span_id": "o", "parent_id": "missing", "start_time": 0.5},
    ]
    roots = span_tree(spans)
    assert [r["span_id"] for r in roots] == ["o", "r"]
    assert [c["span_id"] for c in roots[1]["children"]] == ["a", "b"]
    assert roots[1]["children"][0]["children"][0]["span_id"] == "x"
    header = format_traceparent("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7")
    assert header == "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    assert parse_traceparent(header.upper().encode()) == ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7")
    for bad in ("", "00-" + "0" * 32 + "-00f067aa0ba902b7-01", "ff-" + "a" * 32 + "-" + "b" * 16 + "-01", "00-x-y-01"):
        assert parse_traceparent(bad) is None
    assert parse_traceparent("01-" + "a" * 32 + "-" + "b" * 16 + "-01-future") == ("a" * 32, "b" * 16)


def test_retention_cutoffs() -> None:
    config = TracingConfig(retention_days=1, project_retention_days={"keep": 30})
    assert retention_cutoffs(config, 10 * 86400.0) == [("keep", -20 * 86400.0), (None, 9 * 86400.0)]
    assert retention_cutoffs(TracingConfig(), 0.0) == []


def test_retention_job_deletes_old_traces_in_the_background(tmp_path: Path) -> None:
    config = {
        "engines": {"none": {"kind": "openai", "base_url": "http://127.0.0.1:9/v1"}},
        "deployments": {"x": {"targets": [{"engine": "none"}]}},
        "tracing": {
            "flush_interval": 0.1,
            "retention_days": 1,
            "project_retention_days": {"keep": 30},
            "retention_interval": 0.2,
        },
    }
    server = ShipyardProcess(tmp_path / "data", config=config)
    server.start()
    try:
        server.wait_listening(60)
        now = time.time()
        old = now - 10 * 86400
        spans = [
            {"trace_id": "1" * 32, "span_id": "1" * 16, "start_time": old, "end_time": old + 1},
            {"trace_id": "2" * 32, "span_id": "2" * 16, "start_time": old, "end_time": old + 1, "project": "keep"},
            {"trace_id": "3" * 32, "span_id": "3" * 16, "start_time": now, "end_time": now + 1},
        ]
        assert httpx.post(server.url + "/api/v1/spans", json={"spans": spans}, timeout=10).status_code == 202

        def remaining() -> list[str]:
            return sorted(t["id"][0] for t in httpx.get(server.url + "/api/v1/traces", timeout=10).json()["data"])

        wait_until(lambda: remaining() == ["2", "3"], 20, what="the old trace deleted")

        def deleted() -> bool:
            return "shipyard_trace_retention_deleted_total 1" in httpx.get(server.url + "/metrics", timeout=5).text

        wait_until(deleted, 20, what="the retention counter")
    finally:
        assert server.stop() == 0


def test_a_second_writer_process_waits_for_the_journal(tmp_path: Path) -> None:
    """Two writer processes never share a journal: a new server's writer waits until the old one has finished."""
    first = _lock_journal(tmp_path)
    got = threading.Event()

    def second() -> None:
        lock = _lock_journal(tmp_path)
        got.set()
        lock.close()

    thread = threading.Thread(target=second)
    thread.start()
    time.sleep(0.3)
    assert not got.is_set()
    first.close()
    thread.join(5)
    assert got.is_set()
