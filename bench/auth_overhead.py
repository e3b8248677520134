"""What access control costs on the gateway's hot path, measured in one run.

    .venv/bin/python -m bench.auth_overhead            # 5 interleaved rounds of 8 s per server and load
    .venv/bin/python -m bench.auth_overhead --quick    # 2 rounds of 4 s

Three Shipyard servers in front of the same fast fake upstream (SQLite store, tracing off so that only auth
differs): `auth_off` (SHIPYARD_AUTH=off), `auth_on` (a key with no limits: the middleware, the cached key lookup,
the deployment check) and `auth_limits` (a key with requests, tokens and spend limits far above the load: the
lease, the counters and their sync too). wrk loads one server at a time, at 1 connection (latency) and 16
(throughput), alternating the order each round; medians over rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx
import yaml

from bench.common import RESULTS, free_port, machine, median, stop, wait_http
from bench.gateway_overhead import BODY, Target, cpu_seconds, start_fake, wrk

ADMIN = "sy-" + "b" * 43  # a bench-only key


def start_shipyard(work: Path, fake_port: int, name: str) -> Target:
    port = free_port()
    config = {
        "engines": {"fake": {"kind": "openai", "base_url": f"http://127.0.0.1:{fake_port}/v1"}},
        "deployments": {"bench": {"targets": [{"engine": "fake", "model": "fake-model"}]}},
        "server": {"log_level": "warning"},
        "tracing": {"enabled": False, "prices": {"fake-model": {"input": 0.1, "output": 0.2}}},
    }
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    command = [sys.executable, "-m", "shipyard.cli.main", "up", "--config", str(path)]
    command += ["--data-dir", str(work / name), "--port", str(port)]
    env = {**os.environ, "SHIPYARD_AUTH": "off" if name == "auth_off" else "on", "SHIPYARD_ADMIN_KEY": ADMIN}
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    target = Target(name, f"http://127.0.0.1:{port}", "/v1/chat/completions", "bench", process)
    wait_http(f"http://127.0.0.1:{port}/readyz", 60, process)
    return target


def key_for(target: Target) -> str:
    if target.name != "auth_limits":
        return ADMIN
    limits = {"requests_per_minute": 10**7, "tokens_per_minute": 10**9, "budget_per_day": 10**6}
    response = httpx.post(
        target.url + "/api/v1/keys",
        headers={"authorization": f"Bearer {ADMIN}"},
        json={"name": "bench", "deployments": ["bench"], "limits": limits},
        timeout=10,
    )
    response.raise_for_status()
    return response.json()["key"]


def lua(work: Path, name: str, key: str) -> Path:
    path = work / f"{name}.lua"
    path.write_text(
        f"wrk.method = 'POST'\nwrk.body = '{json.dumps(BODY)}'\nwrk.headers['Content-Type'] = 'application/json'\n"
        f"wrk.headers['Authorization'] = 'Bearer {key}'\n"
    )
    return path


def run(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="shipyard-bench-auth-"))
    fake_port = free_port()
    fake = start_fake(fake_port)
    targets = [start_shipyard(work, fake_port, n) for n in ("auth_off", "auth_on", "auth_limits")]
    scripts = {t.name: lua(work, t.name, key_for(t)) for t in targets}
    try:
        for target in targets:  # warm-up
            wrk(target, 16, 2, scripts[target.name])
        for index in range(args.rounds):
            order = targets[index % 3 :] + targets[: index % 3]
            for target in order:
                one = wrk(target, 1, args.seconds, scripts[target.name])
                target.add("c1_p50_ms", one["p50_ms"])
                target.add("c1_p99_ms", one["p99_ms"])
                cpu_before = cpu_seconds(target.process.pid)  # type: ignore[union-attr]
                many = wrk(target, 16, args.seconds, scripts[target.name])
                cpu = cpu_seconds(target.process.pid) - cpu_before  # type: ignore[union-attr]
                target.add("c16_rps", many["rps"])
                target.add("c16_p99_ms", many["p99_ms"])
                target.add("cpu_ms_per_request", cpu / many["requests"] * 1000)
                target.add("errors", one["errors"] + many["errors"])
            print(f"round {index + 1}/{args.rounds} done", flush=True)
    finally:
        for target in targets:
            if target.process is not None:
                stop(target.process)
        stop(fake)
    table = {t.name: {k: round(median(v), 3) for k, v in t.results.items()} for t in targets}
    off = table["auth_off"]
    return {
        "benchmark": "auth_overhead",
        "machine": machine(),
        "note": "wrk, the fake upstream and the three servers share the machine's 2 cores with other engineers' work",
        "rounds": args.rounds,
        "seconds_per_run": args.seconds,
        "results": table,
        "rounds_c16_rps": {t.name: t.results["c16_rps"] for t in targets},
        "rounds_cpu_ms_per_request": {t.name: [round(v, 3) for v in t.results["cpu_ms_per_request"]] for t in targets},
        "added_c1_p50_ms": {n: round(table[n]["c1_p50_ms"] - off["c1_p50_ms"], 3) for n in ("auth_on", "auth_limits")},
        "c16_rps_over_off": {n: round(table[n]["c16_rps"] / off["c16_rps"], 3) for n in ("auth_on", "auth_limits")},
        "added_cpu_ms_per_request": {
            n: round(table[n]["cpu_ms_per_request"] - off["cpu_ms_per_request"], 3) for n in ("auth_on", "auth_limits")
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.seconds = 2, 4
    result = run(args)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / ("auth_overhead_quick.json" if args.quick else "auth_overhead.json")
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "machine"}, indent=2))


if __name__ == "__main__":
    main()
