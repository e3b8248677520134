"""The trace writer in a process of its own, fed by a pipe.

Why a process: in the server's process, the writer thread's work (turning calls into spans, the store's
driver) competes with the event loop for the GIL, and the hand-overs cost the loop more than the work itself
(measured: +78 µs of event-loop CPU per request with the writer working, +7 µs with it discarding its input;
docs/tracing.md#performance). Here the loop only copies a call's values into a tuple; every ~10 ms the tuples
gathered are pickled in one call and written to the pipe. The child runs the same `TraceWriter` (batches, the
local journal, replay) with its own connection to the store, and reports its counters and the calls' metrics
on its stdout, about ten times a second.

Lifetime: the child runs in a session of its own (a terminal's Ctrl-C signals the server's whole process group),
ignores SIGINT and SIGTERM (a service manager may signal every process of the service), and ends when its stdin
closes: when the server stops cleanly, or dies (kill -9 included). Either way it writes
everything it holds (to the store, or to the journal if the store is down) before it exits, so a crash of the
server loses only the last ~10 ms of calls not yet sent. A lock on the journal directory keeps two writers
(an old one still finishing, a new server's) from sharing one journal. If the child dies, the server starts
another and counts the records it held as dropped.
"""

from __future__ import annotations

import asyncio
import fcntl
import gc
import logging
import os
import pickle
import signal
import struct
import sys
import threading
from pathlib import Path
from typing import IO, Any

import orjson

__all__ = ["WriterProcess", "main"]

log = logging.getLogger("shipyard.tracing")

_HEADER = struct.Struct("<I")  # the length of the pickled list of items that follows
_SEND_EVERY = 0.01  # seconds an item waits on the server before it is sent
_SEND_AT = 256  # items that make a send at once
_MAX_BACKLOG = 256 * 1024 * 1024  # bytes the pipe may lag behind before new items are dropped (a stuck child)
_REPORT_EVERY = 0.1
_COUNTERS = ("written", "journaled", "replayed", "failed")


class WriterProcess:
    """The server's side of the writer: `add` on the event loop, the child's last report for /metrics."""

    def __init__(
        self,
        store_url: str,
        journal_dir: Path,
        config: dict[str, Any],
        log_level: str = "info",
        stop_timeout: float = 60.0,
    ) -> None:
        """`config`: the tracing section (`TracingConfig.model_dump(mode="json")`)."""
        self._setup = {
            "store_url": store_url,
            "journal_dir": str(journal_dir),
            "config": config,
            "log_level": log_level.upper(),
        }
        self.journal_dir = journal_dir
        self._stop_timeout = stop_timeout
        self._max_pending = int(config.get("max_queue", 100_000))
        self.sent = 0  # items handed over by the server
        self.dropped = 0  # items lost: a child that died with them, or a pipe too far behind
        self.report: dict[str, Any] = {}  # the current child's last report
        self._earlier: dict[str, int] = dict.fromkeys(_COUNTERS, 0)  # the totals of children that died
        self._pending: list[Any] = []
        self._process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = False
        self._warned_backlog = False

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        await self._spawn()

    async def _spawn(self) -> None:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "shipyard.tracing.writer_process",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            limit=64 * 1024 * 1024,  # one report line holds the metrics' text
            start_new_session=True,  # a terminal's Ctrl-C or a signal to the server's group does not reach it
        )
        self._process = process
        self.report = {}
        self._frame(process, self._setup)
        self._reader = asyncio.create_task(self._read_reports(process))

    # --- the event loop's side ----------------------------------------------------------------------------

    def add(self, item: Any) -> None:
        """O(1): `item` is a `CallRecord` tuple or a list of span rows; sent with others within ~10 ms."""
        pending = self._pending
        pending.append(item)
        self.sent += 1
        if len(pending) == 1:
            assert self._loop is not None, "WriterProcess.add before start"
            self._loop.call_later(_SEND_EVERY, self._send)
        elif len(pending) >= _SEND_AT:
            self._send()

    def _send(self) -> None:
        if not self._pending:
            return
        process = self._process
        if process is None or process.stdin is None or process.stdin.is_closing() or process.returncode is not None:
            self._keep_bounded()  # a new child is starting: the items wait for it
            return
        if process.stdin.transport.get_write_buffer_size() > _MAX_BACKLOG:
            if not self._warned_backlog:
                log.error("the trace writer's process is %d MB behind: new records are dropped", _MAX_BACKLOG >> 20)
                self._warned_backlog = True
            self.dropped += len(self._pending)
            self._pending = []
            return
        self._warned_backlog = False
        items, self._pending = self._pending, []
        self._frame(process, items)

    @staticmethod
    def _frame(process: asyncio.subprocess.Process, value: Any) -> None:
        assert process.stdin is not None
        data = pickle.dumps(value, pickle.HIGHEST_PROTOCOL)
        process.stdin.write(_HEADER.pack(len(data)) + data)

    def _keep_bounded(self) -> None:
        extra = len(self._pending) - self._max_pending
        if extra > 0:
            del self._pending[:extra]
            self.dropped += extra

    # --- reports and the child's lifetime -----------------------------------------------------------------

    async def _read_reports(self, process: asyncio.subprocess.Process) -> None:
        assert process.stdout is not None
        while line := await process.stdout.readline():
            try:
                self.report = orjson.loads(line)
            except orjson.JSONDecodeError:
                log.error("unreadable report from the trace writer's process: %r", line[:200])
        code = await process.wait()
        if self._stopping:
            return
        self._lost_with(process, code)
        await asyncio.sleep(1.0)
        if not self._stopping:
            await self._spawn()
            self._send()

    def _lost_with(self, process: asyncio.subprocess.Process, code: int) -> None:
        """A child died: keep its totals, count what it held as dropped."""
        for name in _COUNTERS:
            self._earlier[name] += int(self.report.get(name, 0))
        self.report = {}
        lost = self.queue_depth - len(self._pending)
        self.dropped += lost
        log.error(
            "the trace writer's process (pid %s) exited with code %s; up to %d trace records it held are lost; "
            "starting a new one",
            process.pid,
            code,
            lost,
        )

    async def stop(self) -> None:
        """Send what is left, close the pipe and wait for the child to write everything and exit."""
        self._stopping = True
        self._send()
        process = self._process
        if process is None:
            return
        if self._pending:  # the child died just before the stop: nothing can write these
            log.error("%d trace records are lost: the trace writer's process is gone", len(self._pending))
            self.dropped += len(self._pending)
            self._pending = []
        if process.stdin is not None:
            process.stdin.close()
        try:
            await asyncio.wait_for(asyncio.shield(self._reader), self._stop_timeout)  # type: ignore[arg-type]
        except TimeoutError:
            log.error("the trace writer's process did not finish in %.0fs; killing it", self._stop_timeout)
            process.kill()
            await process.wait()

    # --- what /metrics shows ------------------------------------------------------------------------------

    def _total(self, name: str) -> int:
        return self._earlier[name] + int(self.report.get(name, 0))

    @property
    def written(self) -> int:
        return self._total("written")

    @property
    def journaled(self) -> int:
        return self._total("journaled")

    @property
    def replayed(self) -> int:
        return self._total("replayed")

    @property
    def failed(self) -> int:
        return self._total("failed")

    @property
    def store_up(self) -> bool:
        return bool(self.report.get("store_up", True))

    @property
    def queue_depth(self) -> int:
        """Records handed over and not yet written, journaled or dropped (in the server, the pipe or the child)."""
        return self.sent - self.dropped - self.written - self.journaled - self.failed

    @property
    def journal_pending_bytes(self) -> int:
        return int(self.report.get("journal_bytes", 0))

    @property
    def metrics_text(self) -> str | None:
        return self.report.get("metrics")


# --- the child ----------------------------------------------------------------------------------------------


def _read_frame(source: IO[bytes]) -> Any:
    """The next pickled value; None at the end of the pipe (or a frame cut short by a dying server)."""
    header = source.read(_HEADER.size)
    if len(header) < _HEADER.size:
        return None
    (size,) = _HEADER.unpack(header)
    data = source.read(size)
    if len(data) < size:
        log.warning("the server stopped in the middle of sending trace records; the incomplete batch is lost")
        return None
    return pickle.loads(data)


def _lock_journal(directory: Path) -> IO[bytes]:
    directory.mkdir(parents=True, exist_ok=True)
    lock = (directory / "writer.lock").open("ab")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        log.warning("another trace writer still uses %s; waiting until it has finished", directory)
        fcntl.flock(lock, fcntl.LOCK_EX)
    return lock


class _Reporter:
    """Writes the writer's counters and the calls' metrics to stdout when they change (at most every 0.1 s)."""

    def __init__(self, writer: Any, metrics: Any, out: IO[bytes]) -> None:
        self.received = 0
        self._writer = writer
        self._metrics = metrics
        self._out = out
        self._last: tuple[Any, ...] | None = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="shipyard-trace-reports", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _loop(self) -> None:
        while not self._done.wait(_REPORT_EVERY):
            self.send()

    def send(self) -> None:
        writer = self._writer
        state = (
            self.received,
            writer.written,
            writer.journaled,
            writer.replayed,
            writer.failed,
            writer.store_up,
            writer.journal_pending_bytes,
        )
        if state == self._last:
            return
        self._last = state
        report = dict(zip(("received", *_COUNTERS, "store_up", "journal_bytes"), state, strict=True))
        report["metrics"] = self._metrics.render()
        try:
            self._out.write(orjson.dumps(report) + b"\n")
            self._out.flush()
        except (BrokenPipeError, ValueError):  # the server is gone: the records still get written
            self._done.set()

    def stop(self) -> None:
        self._done.set()
        self._thread.join()
        self.send()


def main() -> None:
    """The child: read items from stdin until it closes, write them with a `TraceWriter`, report on stdout."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the server decides when this process ends: stdin closing
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    source, out = sys.stdin.buffer, sys.stdout.buffer
    setup = _read_frame(source)
    if setup is None:
        return
    os.nice(int(setup["config"].get("writer_nice", 0)))
    logging.basicConfig(level=setup["log_level"], format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from shipyard.config import TracingConfig
    from shipyard.gateway.records import SpanMaker
    from shipyard.store.db import make_engine
    from shipyard.store.traces import TraceRepo
    from shipyard.tracing.journal import Journal
    from shipyard.tracing.metrics import CallMetrics
    from shipyard.tracing.writer import TraceWriter

    config = TracingConfig.model_validate(setup["config"])
    journal_dir = Path(setup["journal_dir"])
    lock = _lock_journal(journal_dir)
    engine = make_engine(setup["store_url"])
    metrics = CallMetrics()
    writer = TraceWriter(
        TraceRepo(engine),
        Journal(journal_dir),
        convert=SpanMaker(config, metrics).convert,
        interval=config.flush_interval,
        batch=config.batch_size,
        max_queue=config.max_queue,
    )
    reporter = _Reporter(writer, metrics, out)
    # What is built so far lives as long as the process; the rows made per call are short-lived: keep the
    # cyclic GC's young-generation passes rare (as the server does).
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 50, 100)
    writer.start()
    reporter.start()
    while (items := _read_frame(source)) is not None:
        for item in items:
            writer.add(item)
        reporter.received += len(items)
    writer.stop()
    reporter.stop()
    engine.dispose()
    lock.close()


if __name__ == "__main__":
    main()
