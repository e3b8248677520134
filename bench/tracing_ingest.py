"""Span ingestion throughput into SQLite and PostgreSQL, and the SDK's cost per span in the caller's thread.

    .venv/bin/python -m bench.tracing_ingest            # 50,000 spans per store; SDK: 5 runs of 10,000
    .venv/bin/python -m bench.tracing_ingest --quick    # 10,000 / 5 runs of 2,000

Ingestion: a Shipyard server (SQLite in its data dir, or a private PostgreSQL cluster started with Debian's
binaries as the tests do), 4 client threads POSTing batches of 100 SDK spans to /api/v1/spans; spans/s is
the number of spans over the time from the first POST to the moment the last span is in the store (read
from the store itself). SDK: `with observe(...)` and an `@observe`d function in the caller's thread (its CPU
time and wall time, medians of 5 runs) minus the same loop without observe; spans ship to a running server in
the background.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from bench.common import RESULTS, free_port, machine, median, stop, wait_http

BATCH = 100


def start_server(work: Path, name: str, database_url: str | None) -> tuple[subprocess.Popen, str]:
    port = free_port()
    config: dict[str, Any] = {
        "engines": {"none": {"kind": "openai", "base_url": "http://127.0.0.1:9/v1"}},
        "deployments": {"x": {"targets": [{"engine": "none"}]}},
        "server": {"log_level": "warning"},
    }
    if database_url:
        config["database_url"] = database_url
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    command = [sys.executable, "-m", "shipyard.cli.main", "up", "--config", str(path)]
    command += ["--data-dir", str(work / name), "--port", str(port)]
    env = {**os.environ, "SHIPYARD_AUTH": "off"}
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/healthz", 60, process)
    return process, url


def batches(total: int, start: float) -> list[bytes]:
    out = []
    for b in range(total // BATCH):
        trace = os.urandom(16).hex()
        spans = []
        for i in range(BATCH):
            spans.append(
                {
                    "trace_id": trace,
                    "span_id": os.urandom(8).hex(),
                    "parent_id": None if i == 0 else spans[0]["span_id"],
                    "name": f"step {i}",
                    "kind": "function",
                    "start_time": start + b + i / 1000,
                    "end_time": start + b + i / 1000 + 0.0005,
                    "input": {"question": "where is my parcel?", "k": i},
                    "output": "a short answer of a few words",
                    "attributes": {"batch": b},
                }
            )
        out.append(json.dumps({"spans": spans}).encode())
    return out


def stored(url: str) -> int:
    from shipyard.store import Store

    store = Store(url)
    try:
        return store.traces.count_spans()
    finally:
        store.close()


def ingest(url: str, store_url: str, total: int, threads: int = 4) -> dict[str, float]:
    bodies = batches(total, time.time())
    chunks = [bodies[i::threads] for i in range(threads)]
    errors = []

    retried = []

    def send(mine: list[bytes]) -> None:
        with httpx.Client(timeout=60) as client:
            for body in mine:
                headers = {"content-type": "application/json"}
                for _ in range(5):
                    try:
                        response = client.post(url + "/api/v1/spans", content=body, headers=headers)
                        break
                    except httpx.TransportError:  # a dropped keep-alive connection: resend (spans are idempotent)
                        retried.append(1)
                else:
                    errors.append("five transport errors in a row")
                    continue
                if response.status_code != 202:
                    errors.append(response.text)

    workers = [threading.Thread(target=send, args=(c,)) for c in chunks]
    started = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    posted = time.perf_counter() - started
    while stored(store_url) < total:
        time.sleep(0.05)
    elapsed = time.perf_counter() - started
    if errors:
        raise RuntimeError(errors[0])
    return {
        "spans": total,
        "seconds": round(elapsed, 3),
        "spans_per_second": round(total / elapsed),
        "post_seconds": round(posted, 3),
        "resent_after_transport_error": len(retried),
    }


def sdk_cost(url: str, calls: int, repeats: int = 5) -> dict[str, Any]:
    """Per span, in the caller's thread: CPU time of that thread (time.thread_time, immune to other processes'
    load) and wall time, each the median over `repeats` runs of `calls`, minus the same loop without observe."""
    from shipyard.sdk import tracing

    exporter = tracing.configure(url=url, project="bench")

    @tracing.observe
    def work(x: int) -> int:
        return x + 1

    def plain(x: int) -> int:
        return x + 1

    def block(x: int) -> int:
        with tracing.observe("block"):
            return x + 1

    def timed(fn: Any) -> tuple[float, float]:
        cpu, wall = time.thread_time(), time.perf_counter()
        for i in range(calls):
            fn(i)
        return time.thread_time() - cpu, time.perf_counter() - wall

    samples: dict[str, list[tuple[float, float]]] = {"plain": [], "decorator": [], "context_manager": []}
    for _ in range(repeats):
        for name, fn in (("plain", plain), ("decorator", work), ("context_manager", block)):
            samples[name].append(timed(fn))
            exporter.flush(120)  # ship between runs: the next run starts with an empty queue
    result: dict[str, Any] = {"calls_per_run": calls, "runs": repeats}
    for name in ("decorator", "context_manager"):
        for index, kind in ((0, "cpu"), (1, "wall")):
            spent = median([s[index] for s in samples[name]]) - median([s[index] for s in samples["plain"]])
            result[f"{name}_{kind}_us_per_span"] = round(spent / calls * 1e6, 2)
    result["shipped"], result["dropped"] = exporter.sent, exporter.dropped
    exporter.close()
    return result


def run(args: argparse.Namespace) -> dict[str, Any]:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from tests.helpers import PostgresServer

    work = Path(tempfile.mkdtemp(prefix="shipyard-bench-ingest-"))
    results: dict[str, Any] = {}
    process, url = start_server(work, "sqlite", None)
    try:
        results["sqlite"] = ingest(url, f"sqlite:///{work / 'sqlite' / 'shipyard.db'}", args.spans)
        results["sdk"] = sdk_cost(url, args.sdk_calls)
    finally:
        stop(process)
    pg = PostgresServer.find()
    if pg is not None:
        pg.start()
        try:
            database = PostgresServer.fresh_database(pg.url)
            process, url = start_server(work, "postgresql", database)
            try:
                results["postgresql"] = ingest(url, database, args.spans)
            finally:
                stop(process)
        finally:
            pg.stop()
    return {
        "benchmark": "tracing_ingest",
        "machine": machine(),
        "note": "client threads, server and database share the machine's cores (other engineers' work too)",
        "batch": BATCH,
        "results": results,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spans", type=int, default=50_000)
    parser.add_argument("--sdk-calls", type=int, default=10_000)  # per run; 5 runs of each kind
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.spans, args.sdk_calls = 10_000, 2_000
    result = run(args)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / ("tracing_ingest_quick.json" if args.quick else "tracing_ingest.json")
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["results"], indent=2))


if __name__ == "__main__":
    main()
