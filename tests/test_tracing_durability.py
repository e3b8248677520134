"""Nothing lost (issue 3, item 2): PostgreSQL down under concurrent load, kill -9, SIGTERM flush, clients that
leave mid-stream. Real server processes, a private PostgreSQL cluster, exact counts. The fake provider stands in
for a hosted model."""

from __future__ import annotations

import os
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


# --- the writer's own process (shipyard.tracing.writer_process) -------------------------------------------------


def _writer_pid(server: ShipyardProcess) -> int | None:
    assert server.process is not None
    pid = server.process.pid
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        if b"shipyard.tracing.writer_process" in Path(f"/proc/{child}/cmdline").read_bytes():
            return int(child)
    return None


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_kill_9_of_the_server_keeps_what_reached_the_writer(tmp_path: Path, fake_upstream: FakeUpstreamProcess) -> None:
    """The writer's process outlives a killed server long enough to write what it holds: with an interval of an
    hour nothing was flushed before the kill, and everything is stored after it."""
    data = tmp_path / "data"
    server = ShipyardProcess(data, config=_config(fake_upstream, flush_interval=3600, batch_size=10_000))
    server.start()
    server.wait_ready(60)
    writer = _writer_pid(server)
    assert writer is not None
    # tracing.writer_nice (10 by default): the writer yields the cores to the gateway when they are all busy. It
    # lowers its priority once it has read its settings (after its imports, ~1 s).
    base = os.getpriority(os.PRIO_PROCESS, server.process.pid)  # type: ignore[union-attr]
    wait_until(lambda: os.getpriority(os.PRIO_PROCESS, writer) == min(base + 10, 19), 30, what="the writer's nice")
    with httpx.Client(timeout=10) as client:
        for _ in range(25):
            assert client.post(server.url + "/v1/chat/completions", json=BODY).status_code == 200
    assert _metric(server, "shipyard_trace_records_written_total") == 0
    time.sleep(0.2)  # the server sends what it has every 10 ms
    server.process.send_signal(signal.SIGKILL)  # type: ignore[union-attr]
    server.process.wait()  # type: ignore[union-attr]
    wait_until(lambda: _gone(writer), 30, what="the writer's process to finish")
    assert _stored(f"sqlite:///{data / 'shipyard.db'}") == 25
    assert not (data / "journal" / "traces.jsonl").stat().st_size
    server.stop()


def test_ctrl_c_to_the_whole_group_writes_everything(tmp_path: Path, fake_upstream: FakeUpstreamProcess) -> None:
    """A terminal's Ctrl-C reaches the server and the writer's process at once: the writer ignores it and
    finishes when the server closes its pipe."""
    data = tmp_path / "data"
    config = _config(fake_upstream, flush_interval=3600, batch_size=10_000)
    server = ShipyardProcess(data, config=config, session=True)
    server.start()
    server.wait_ready(60)
    writer = _writer_pid(server)
    assert writer is not None
    with httpx.Client(timeout=10) as client:
        for _ in range(25):
            assert client.post(server.url + "/v1/chat/completions", json=BODY).status_code == 200
    assert server.process is not None
    os.killpg(server.process.pid, signal.SIGINT)
    assert server.process.wait(30) == 0
    assert _gone(writer)
    server.stop()
    assert _stored(f"sqlite:///{data / 'shipyard.db'}") == 25
    assert "Traceback" not in server.log()


def test_a_killed_writer_process_is_replaced_and_its_loss_counted(
    tmp_path: Path, fake_upstream: FakeUpstreamProcess
) -> None:
    """kill -9 of the writer's process under load: the gateway keeps answering, a new writer takes over, and every
    answered call is either stored or counted as dropped (exactly)."""
    data = tmp_path / "data"
    server = ShipyardProcess(data, config=_config(fake_upstream))
    server.start()
    server.wait_ready(60)
    try:
        first = _writer_pid(server)
        assert first is not None
        with Load(server.url, threads=4) as load:
            wait_until(lambda: load.answered >= 100, 30, what="some calls")
            os.kill(first, signal.SIGKILL)
            wait_until(lambda: _writer_pid(server) not in (first, None), 30, what="a new writer process")
            answered_then = load.answered
            written_then = _metric(server, "shipyard_trace_records_written_total")
            wait_until(lambda: load.answered >= answered_then + 100, 30, what="calls to the new writer")
        assert load.failed == 0
        wait_until(lambda: _metric(server, "shipyard_trace_queue_depth") == 0, 30, what="the writer to catch up")
        dropped = _metric(server, "shipyard_trace_records_dropped_total")
        written = _metric(server, "shipyard_trace_records_written_total")
        assert written + dropped == load.answered
        assert written >= written_then + 100  # everything answered since the new writer started
    finally:
        assert server.stop() == 0
    assert _stored(f"sqlite:///{data / 'shipyard.db'}") == written
    assert "trace writer's process" in server.log()
