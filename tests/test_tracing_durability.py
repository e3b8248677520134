"""Nothing lost (issue 3, item 2): PostgreSQL down under concurrent load, kill -9, SIGTERM flush, clients that
leave mid-stream. Real server processes, a private PostgreSQL cluster, exact counts. The fake provider stands in
for a hosted model."""

from __future__ import annotations

import re
import signal
import sqlite3
import threading
import time
from pathlib import Path

import httpx
import pytest

from shipyard.store import Store
from tests.helpers import FakeUpstreamProcess, PostgresServer, ShipyardProcess, wait_until

BODY = {"model": "chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}


def _config(fake: FakeUpstreamProcess, **tracing: object) -> dict:
    return {
        "engines": {"fake": {"kind": "openai", "base_url": fake.base_url}},
        "deployments": {"chat": {"targets": [{"engine": "fake", "model": "fake-model"}]}},
        "tracing": {"flush_interval": 0.2, **tracing},
    }


def _metric(server: ShipyardProcess, name: str) -> float:
    text = httpx.get(server.url + "/metrics", timeout=10).text
    match = re.search(rf"^{name} (\S+)$", text, re.M)
    assert match, name
    return float(match.group(1))


def _stored(url: str) -> int:
    store = Store(url)
    try:
        return store.traces.count("chat")
    finally:
        store.close()


def _restart_postgres(pg: PostgresServer) -> None:
    pg.pg_ctl("start", "-w", "-o", f"-p {pg.port} -k {pg.base} -c listen_addresses=127.0.0.1 -c fsync=off")


@pytest.fixture()
def own_postgres() -> PostgresServer:
    """A cluster of this test's own: the test stops and starts it."""
    pg = PostgresServer.find()
    if pg is None:
        pytest.skip("PostgreSQL is not installed")
    pg.start()
    yield pg
    pg.stop()


class Load:
    """Threads sending calls until stopped; counts the calls answered with 200."""

    def __init__(self, url: str, threads: int) -> None:
        self.url = url + "/v1/chat/completions"
        self.answered = 0
        self.failed = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run) for _ in range(threads)]

    def _run(self) -> None:
        with httpx.Client(timeout=30) as client:
            while not self._stop.is_set():
                ok = client.post(self.url, json=BODY).status_code == 200
                with self._lock:
                    if ok:
                        self.answered += 1
                    else:
                        self.failed += 1

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()


@pytest.mark.postgres
@pytest.mark.slow
def test_postgres_down_under_load_loses_nothing(
    tmp_path: Path, fake_upstream: FakeUpstreamProcess, own_postgres: PostgresServer
) -> None:
    url = PostgresServer.fresh_database(own_postgres.url)
    server = ShipyardProcess(tmp_path / "data", config=_config(fake_upstream), env={"SHIPYARD_DATABASE_URL": url})
    server.start()
    try:
        server.wait_ready(60)
        with Load(server.url, threads=8) as load:
            wait_until(lambda: load.answered >= 200, 60, what="calls before the outage")
            own_postgres.pg_ctl("stop", "-m", "fast", "-w")
            at_stop = load.answered
            wait_until(lambda: _metric(server, "shipyard_trace_store_up") == 0, 30, what="the writer to notice")
            time.sleep(4)  # an outage of several seconds, under load
            wait_until(lambda: load.answered >= at_stop + 300, 60, what="calls during the outage")
            wait_until(lambda: _metric(server, "shipyard_trace_records_journaled_total") > 0, 30, what="journal")
            _restart_postgres(own_postgres)
            wait_until(lambda: _metric(server, "shipyard_trace_store_up") == 1, 60, what="the store to come back")
            target = load.answered + 200
            wait_until(lambda: load.answered >= target, 60, what="calls after the outage")
        assert load.failed == 0  # the gateway answered throughout: it never waits for the store
        wait_until(lambda: _metric(server, "shipyard_trace_journal_bytes") == 0, 60, what="the replay")
        wait_until(lambda: _stored(url) == load.answered, 30, what=f"{load.answered} traces")
        journaled = _metric(server, "shipyard_trace_records_journaled_total")
        assert journaled > 0 and _metric(server, "shipyard_trace_records_replayed_total") == journaled
    finally:
        assert server.stop() == 0
    assert _stored(url) == load.answered  # exactly: none lost, none doubled


@pytest.mark.postgres
@pytest.mark.slow
def test_kill_9_keeps_what_was_flushed_and_what_was_journaled(
    tmp_path: Path, fake_upstream: FakeUpstreamProcess, own_postgres: PostgresServer
) -> None:
    url = PostgresServer.fresh_database(own_postgres.url)
    data = tmp_path / "data"
    server = ShipyardProcess(data, config=_config(fake_upstream), env={"SHIPYARD_DATABASE_URL": url})
    server.start()
    server.wait_ready(60)
    with httpx.Client(timeout=10) as client:
        for _ in range(30):
            assert client.post(server.url + "/v1/chat/completions", json=BODY).status_code == 200
        # Flushed: one interval later the records are in the store.
        wait_until(lambda: _metric(server, "shipyard_trace_records_written_total") == 30, 30, what="the flush")
        own_postgres.pg_ctl("stop", "-m", "fast", "-w")
        for _ in range(20):
            assert client.post(server.url + "/v1/chat/completions", json=BODY).status_code == 200
        wait_until(lambda: _metric(server, "shipyard_trace_records_journaled_total") == 20, 30, what="journal")
    server.process.send_signal(signal.SIGKILL)  # type: ignore[union-attr]
    server.process.wait()  # type: ignore[union-attr]
    _restart_postgres(own_postgres)
    assert _stored(url) == 30
    again = ShipyardProcess(data, config=_config(fake_upstream), env={"SHIPYARD_DATABASE_URL": url}, port=server.port)
    again.start()
    try:
        again.wait_ready(60)
        wait_until(lambda: _stored(url) == 50, 30, what="the journal replayed at start")
        assert _metric(again, "shipyard_trace_records_replayed_total") == 20
    finally:
        assert again.stop() == 0
    assert _stored(url) == 50


def test_sigterm_writes_everything_still_queued(tmp_path: Path, fake_upstream: FakeUpstreamProcess) -> None:
    data = tmp_path / "data"
    # A flush interval longer than the test: only the shutdown can write these records.
    server = ShipyardProcess(data, config=_config(fake_upstream, flush_interval=3600, batch_size=10_000))
    server.start()
    server.wait_ready(60)
    try:
        with httpx.Client(timeout=10) as client:
            for _ in range(25):
                assert client.post(server.url + "/v1/chat/completions", json=BODY).status_code == 200
        assert _metric(server, "shipyard_trace_queue_depth") == 25
        assert httpx.get(server.url + "/api/v1/traces", timeout=10).json()["data"] == []
    finally:
        assert server.stop() == 0
    assert _stored(f"sqlite:///{data / 'shipyard.db'}") == 25
    assert not (data / "journal" / "traces.jsonl").stat().st_size  # nothing left waiting


def test_clients_leaving_mid_stream_are_traced(tmp_path: Path, fake_upstream: FakeUpstreamProcess) -> None:
    data = tmp_path / "data"
    server = ShipyardProcess(data, config=_config(fake_upstream))
    server.start()
    server.wait_ready(60)
    streams = 6
    try:
        fake_upstream.script(*[{"chunks": 50, "chunk_delay_ms": 100}] * streams)

        def leave_early() -> None:
            body = {**BODY, "stream": True}
            with (
                httpx.Client(timeout=30) as client,
                client.stream("POST", server.url + "/v1/chat/completions", json=body) as response,
            ):
                for line in response.iter_lines():
                    if '"tok ' in line:
                        break  # got a token: hang up

        threads = [threading.Thread(target=leave_early) for _ in range(streams)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        with httpx.Client(timeout=10) as client:
            for _ in range(3):
                assert client.post(server.url + "/v1/chat/completions", json=BODY).status_code == 200

        def traced() -> list[dict]:
            return httpx.get(server.url + "/api/v1/traces", params={"limit": 100}, timeout=10).json()["data"]

        wait_until(lambda: len(traced()) >= streams + 3, 30, what="every call traced")
        rows = traced()
        assert len(rows) == streams + 3
        gone = [r for r in rows if r["status"] == "error"]
        assert len(gone) == streams
        for row in gone:
            (span,) = httpx.get(f"{server.url}/api/v1/traces/{row['id']}", timeout=10).json()["spans"]
            assert span["status_code"] == 499 and span["stream"] is True
            assert span["output"]["content"].startswith("tok")  # what was relayed before the client left
    finally:
        assert server.stop() == 0


@pytest.mark.slow
def test_a_locked_sqlite_file_journals_then_replays(tmp_path: Path, fake_upstream: FakeUpstreamProcess) -> None:
    data = tmp_path / "data"
    server = ShipyardProcess(data, config=_config(fake_upstream))
    server.start()
    server.wait_ready(60)
    url = f"sqlite:///{data / 'shipyard.db'}"
    try:
        with httpx.Client(timeout=10) as client:
            for _ in range(10):
                assert client.post(server.url + "/v1/chat/completions", json=BODY).status_code == 200
            wait_until(lambda: _metric(server, "shipyard_trace_records_written_total") == 10, 30, what="the flush")
            lock = sqlite3.connect(data / "shipyard.db", timeout=30)
            lock.execute("BEGIN EXCLUSIVE")  # another program holds the file: every write waits, then fails
            try:
                for _ in range(20):
                    assert client.post(server.url + "/v1/chat/completions", json=BODY).status_code == 200
                wait_until(lambda: _metric(server, "shipyard_trace_store_up") == 0, 60, what="the lock noticed")
                assert _metric(server, "shipyard_trace_records_journaled_total") > 0
            finally:
                lock.rollback()
                lock.close()
        wait_until(
            lambda: (
                _metric(server, "shipyard_trace_records_written_total")
                + _metric(server, "shipyard_trace_records_replayed_total")
                == 30
            ),
            60,
            what="the replay",
        )
        assert _stored(url) == 30
    finally:
        assert server.stop() == 0
    assert _stored(url) == 30
