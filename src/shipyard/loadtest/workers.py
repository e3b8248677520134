"""Several generator processes on one machine, their results merged exactly.

Each process builds its own request source and aiohttp session, reports ready, and then starts at one
shared instant (CLOCK_MONOTONIC is the same clock in every process of a machine). Open-loop processes
each send every Nth arrival of the common schedule; closed-loop processes share the concurrency.
Progress counters live in shared memory; each process hands back its `Aggregate` as a dict, and the
parent adds them up: histogram counts are summed, never percentiles averaged.
"""

from __future__ import annotations

import multiprocessing
import signal
import time
import traceback
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from typing import Any

from shipyard.errors import ShipyardError
from shipyard.loadtest.metrics import Aggregate
from shipyard.loadtest.runner import COUNTERS, Runner, RunPlan, _run_loop

__all__ = ["GeneratorError", "run_load"]

_START_MARGIN = 0.25  # seconds between "all ready" and the common start


class GeneratorError(ShipyardError):
    """A generator process failed."""


def _worker_main(plan: RunPlan, worker: int, workers: int, conn: Connection, counters: Any, stop: Any) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle: it sets `stop`
    try:
        runner = Runner(plan, worker, workers, counters, stop=stop)
        conn.send(("ready", None))
        kind, start_at = conn.recv()
        if kind != "start":
            return
        aggregate = _run_loop(runner.run(start_at))
        conn.send(("done", aggregate.to_dict()))
    except BaseException as exc:  # report anything to the parent, which raises it
        conn.send(("error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=5)}"))
    finally:
        conn.close()


def run_load(
    plan: RunPlan,
    workers: int = 1,
    on_tick: Callable[[list[float], float], None] | None = None,
    tick: float = 0.25,
) -> tuple[Aggregate, bool]:
    """Run `plan` in `workers` child processes; return the merged aggregate and whether it was interrupted.

    `on_tick(totals, elapsed)` is called in this process every `tick` seconds with the summed live counters
    (see runner.COUNTERS) while the run goes on. A first Ctrl-C (KeyboardInterrupt here) stops new requests,
    lets the in-flight ones finish and returns what was measured; a second one aborts.
    """
    if workers < 1:
        raise ValueError("workers must be at least 1")
    ctx = multiprocessing.get_context("spawn")
    shared = [ctx.Array("d", len(COUNTERS), lock=False) for _ in range(workers)]
    stop = ctx.Value("b", 0, lock=False)
    pipes: list[Connection] = []
    processes = []
    for w in range(workers):
        parent, child = ctx.Pipe()
        process = ctx.Process(target=_worker_main, args=(plan, w, workers, child, shared[w], stop), daemon=True)
        process.start()
        child.close()
        pipes.append(parent)
        processes.append(process)
    try:
        for conn in pipes:
            _expect(conn, "ready")
        start_at = time.monotonic() + _START_MARGIN
        for conn in pipes:
            conn.send(("start", start_at))
        results: dict[int, dict[str, Any]] = {}
        try:
            _collect(pipes, results, shared, start_at, on_tick, tick)
        except KeyboardInterrupt:
            stop.value = 1  # a second Ctrl-C inside this call aborts the run
            _collect(pipes, results, shared, start_at, on_tick, tick)
    finally:
        for process in processes:
            process.join(timeout=5)
            if process.is_alive():
                process.terminate()
                process.join()
    merged = Aggregate(plan.thresholds)
    for w in sorted(results):
        merged.merge(Aggregate.from_dict(results[w]))
    return merged, bool(stop.value)


def _expect(conn: Connection, kind: str) -> Any:
    try:
        got, payload = conn.recv()
    except EOFError:
        raise GeneratorError("a generator process exited before it was ready") from None
    if got == "error":
        raise GeneratorError(f"a generator process failed: {payload}")
    if got != kind:
        raise GeneratorError(f"a generator process said {got!r}, expected {kind!r}")
    return payload


def _collect(
    pipes: list[Connection],
    results: dict[int, dict[str, Any]],
    shared: Sequence[Any],
    start_at: float,
    on_tick: Callable[[list[float], float], None] | None,
    tick: float,
) -> None:
    """Fill `results` (worker → aggregate dict) until every worker answered; resumable after an interrupt."""
    from multiprocessing.connection import wait

    while len(results) < len(pipes):
        pending = {id(conn): (i, conn) for i, conn in enumerate(pipes) if i not in results}
        ready = wait([conn for _, conn in pending.values()], timeout=tick)
        for conn in ready:
            i, _ = pending[id(conn)]
            results[i] = _expect(conn, "done")  # type: ignore[arg-type]
        if on_tick is not None:
            totals = [sum(arr[k] for arr in shared) for k in range(len(COUNTERS))]
            on_tick(totals, max(0.0, time.monotonic() - start_at))
