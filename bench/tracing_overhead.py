"""Gateway throughput with tracing on versus off, measured in one run (issue 3's budget: at most 10% fewer).

    .venv/bin/python -m bench.tracing_overhead            # 12 interleaved rounds of 5 s per side
    .venv/bin/python -m bench.tracing_overhead --quick    # 2 rounds of 4 s

Two Shipyard servers in front of the same fast fake upstream (SQLite store in their own data dirs): one with
`tracing.enabled: true` (the default: every call traced with its content, metrics), one with it off. wrk (one
thread, 16 connections) loads one at a time, alternating which goes first in each round; medians over rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from bench.common import RESULTS, free_port, machine, median, stop, wait_http
from bench.gateway_overhead import Target, cpu_seconds, lua_script, start_fake, wrk


def start_shipyard(work: Path, fake_port: int, tracing: bool, capture: bool = True) -> Target:
    name = "tracing_on" if tracing else "tracing_off"
    port = free_port()
    config = {
        "engines": {"fake": {"kind": "openai", "base_url": f"http://127.0.0.1:{fake_port}/v1"}},
        "deployments": {"bench": {"targets": [{"engine": "fake", "model": "fake-model"}]}},
        "server": {"log_level": "warning"},
        "tracing": {
            "enabled": tracing,
            "capture_content": capture,
            "prices": {"fake-model": {"input": 0.1, "output": 0.2}},
        },
    }
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    command = [sys.executable, "-m", "shipyard.cli.main", "up", "--config", str(path)]
    command += ["--data-dir", str(work / name), "--port", str(port)]
    env = {**os.environ, "SHIPYARD_AUTH": "off"}  # measured without API keys: the same on both sides
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    wait_http(f"http://127.0.0.1:{port}/readyz", 60, process)
    return Target(name, f"http://127.0.0.1:{port}", "/v1/chat/completions", "bench", process)


def settle(target: Target) -> None:
    """Wait until the traced server's writer has caught up, so its backlog never runs during the other's turn."""
    if target.name != "tracing_on":
        time.sleep(1)
        return
    for _ in range(100):
        text = httpx.get(target.url + "/metrics", timeout=10).text
        if "\nshipyard_trace_queue_depth 0\n" in text:
            return
        time.sleep(0.2)


def backlog(target: Target) -> float:
    text = httpx.get(target.url + "/metrics", timeout=10).text
    match = re.search(r"^shipyard_trace_queue_depth (\S+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


def run(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="shipyard-bench-tracing-"))
    fake_port = free_port()
    fake = start_fake(fake_port)
    targets = [start_shipyard(work, fake_port, True), start_shipyard(work, fake_port, False)]
    lua = lua_script(work, "bench")
    try:
        for target in targets:  # warm-up
            wrk(target, 16, 3, lua)
            settle(target)
        for index in range(args.rounds):
            order = targets if index % 2 == 0 else list(reversed(targets))
            for target in order:
                cpu_before = cpu_seconds(target.process.pid)  # type: ignore[union-attr]
                result = wrk(target, 16, args.seconds, lua)
                # Records not yet written when the run ends: a writer that kept up leaves about one batch.
                result["backlog_at_end"] = backlog(target)
                settle(target)  # the writer's backlog is part of the cost of those requests
                cpu = cpu_seconds(target.process.pid) - cpu_before  # type: ignore[union-attr]
                result["cpu_ms_per_request"] = cpu / result["requests"] * 1000
                for key, value in result.items():
                    target.add(key, value)
            print(f"round {index + 1}/{args.rounds} done", flush=True)
        traced = httpx.get(targets[0].url + "/api/v1/traces", params={"limit": 1, "status": "ok"}, timeout=10).json()[
            "data"
        ]
    finally:
        for target in targets:
            if target.process is not None:
                stop(target.process)
        stop(fake)
    table = {t.name: {k: round(median(v), 2) for k, v in t.results.items()} for t in targets}
    on, off = table["tracing_on"]["rps"], table["tracing_off"]["rps"]
    return {
        "benchmark": "tracing_overhead",
        "machine": machine(),
        "note": "wrk, the fake upstream and both servers share the machine's cores (other engineers' work too)",
        "rounds": args.rounds,
        "seconds_per_run": args.seconds,
        "connections": 16,
        "results": table,
        "rounds_rps": {t.name: t.results["rps"] for t in targets},
        "tracing_on_rps_over_off": round(on / off, 3),
        # each round's two runs are next to each other in time: their ratio follows the machine's drift best
        "median_of_round_ratios": round(
            median([a / b for a, b in zip(targets[0].results["rps"], targets[1].results["rps"], strict=True)]), 3
        ),
        "fewer_requests_per_second_percent": round((1 - on / off) * 100, 1),
        "traced_sample": traced[:1],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # Many short rounds: the shared machine's speed drifts by ±20% within minutes, and a median over 12
    # alternating rounds follows the drift on both sides where 5 long ones did not.
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.seconds = 2, 4
    result = run(args)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / ("tracing_overhead_quick.json" if args.quick else "tracing_overhead.json")
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "machine"}, indent=2))


if __name__ == "__main__":
    main()
