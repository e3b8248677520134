"""Gateway overhead, black-box: through a gateway minus direct to a fast fake upstream, interleaved rounds.

    .venv/bin/python -m bench.gateway_overhead            # full run (includes a 10-minute soak)
    .venv/bin/python -m bench.gateway_overhead --quick    # a short smoke run
    .venv/bin/python -m bench.gateway_overhead --skip-litellm

Measures Shipyard (default install: SQLite store, every call recorded) and LiteLLM's proxy (1 and
2 workers, its documented config with a master key) against the same fake upstream with wrk.
LiteLLM lives in its own virtualenv (bench/.venv-litellm, see bench/README.md).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from bench.common import REPO, RESULTS, free_port, machine, median, percentile, stop, wait_http

BODY = {"model": "bench", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
MASTER_KEY = "sk-bench-master-key"  # LiteLLM's master key
# Shipyard runs as a default install does, auth on: its admin key comes from the environment.
SHIPYARD_KEY = "sy-" + "b" * 43
LITELLM_BIN = REPO / "bench" / ".venv-litellm" / "bin" / "litellm"


@dataclass
class Target:
    name: str
    url: str  # base, e.g. http://127.0.0.1:8000
    path: str  # chat completions path
    model: str
    process: subprocess.Popen | None = None
    key: str = MASTER_KEY
    results: dict[str, list[float]] = field(default_factory=dict)

    def add(self, key: str, value: float) -> None:
        self.results.setdefault(key, []).append(value)


def _units(text: str) -> float:
    """wrk duration → milliseconds."""
    number, unit = re.match(r"([\d.]+)(us|ms|s|m)", text).groups()  # type: ignore[union-attr]
    return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


def wrk(target: Target, connections: int, seconds: float, lua: Path) -> dict[str, float]:
    out = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{max(1, round(seconds))}s",
            "--latency",
            "-s",
            str(lua),
            target.url + target.path,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    result = {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))}  # type: ignore[union-attr]
    result["requests"] = float(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    for q in ("50", "90", "99"):
        result[f"p{q}_ms"] = _units(re.search(rf"\s{q}%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    result["errors"] = float(errors.group(1)) if errors else 0.0
    return result


def lua_script(directory: Path, model: str, key: str = MASTER_KEY) -> Path:
    path = directory / f"post-{model}-{key[:2]}.lua"
    body = json.dumps({**BODY, "model": model})
    path.write_text(
        f"wrk.method = 'POST'\nwrk.body = '{body}'\nwrk.headers['Content-Type'] = 'application/json'\n"
        f"wrk.headers['Authorization'] = 'Bearer {key}'\n"
    )
    return path


def tree_pids(pid: int) -> list[int]:
    pids, pending = [], [pid]
    while pending:
        current = pending.pop()
        pids.append(current)
        try:
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except OSError:
            continue
        pending.extend(int(c) for c in children)
    return pids


def cpu_seconds(pid: int) -> float:
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for each in tree_pids(pid):
        try:
            fields = Path(f"/proc/{each}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / ticks
    return total


def rss_mib(pid: int) -> float:
    total = 0
    for each in tree_pids(pid):
        try:
            for line in Path(f"/proc/{each}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


async def stream_timings(target: Target, requests: int) -> tuple[list[float], list[float]]:
    """Time to first content chunk and mean gap between content chunks, per streamed request (ms)."""
    firsts, gaps = [], []
    body = {**BODY, "model": target.model, "stream": True}
    headers = {"authorization": f"Bearer {target.key}"}
    async with aiohttp.ClientSession() as session:
        for _ in range(requests):
            started = time.perf_counter()
            stamps: list[float] = []
            async with session.post(target.url + target.path, json=body, headers=headers) as response:
                buffer = b""
                async for chunk in response.content.iter_any():
                    buffer += chunk
                    while b"\n\n" in buffer:
                        event, buffer = buffer.split(b"\n\n", 1)
                        if b'"content":"tok' in event:
                            stamps.append(time.perf_counter())
            if len(stamps) < 2:
                raise RuntimeError(f"{target.name}: stream had {len(stamps)} content chunks")
            firsts.append((stamps[0] - started) * 1000)
            gaps.append((stamps[-1] - stamps[0]) / (len(stamps) - 1) * 1000)
    return firsts, gaps


def start_fake(port: int) -> subprocess.Popen:
    command = [
        sys.executable,
        "-m",
        "shipyard.testing.fake_upstream",
        "--port",
        str(port),
        "--chunks",
        "16",
        "--first-delay-ms",
        "20",
        "--chunk-delay-ms",
        "5",
    ]
    process = subprocess.Popen(command)
    wait_http(f"http://127.0.0.1:{port}/health", 30, process)
    return process


def start_shipyard(work: Path, fake_port: int) -> Target:
    port = free_port()
    config = {
        "engines": {"fake": {"kind": "openai", "base_url": f"http://127.0.0.1:{fake_port}/v1"}},
        "deployments": {"bench": {"targets": [{"engine": "fake", "model": "fake-model"}]}},
        "server": {"log_level": "warning"},
    }
    (work / "shipyard.yaml").write_text(yaml.safe_dump(config))
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "shipyard.cli.main",
            "up",
            "--config",
            str(work / "shipyard.yaml"),
            "--data-dir",
            str(work / "shipyard-data"),
            "--port",
            str(port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "SHIPYARD_ADMIN_KEY": SHIPYARD_KEY},
    )
    wait_http(f"http://127.0.0.1:{port}/readyz", 60, process)
    return Target("shipyard", f"http://127.0.0.1:{port}", "/v1/chat/completions", "bench", process, key=SHIPYARD_KEY)


def start_litellm(work: Path, fake_port: int, workers: int) -> Target:
    port = free_port()
    config = {
        "model_list": [
            {
                "model_name": "bench",
                "litellm_params": {
                    "model": "openai/fake-model",
                    "api_base": f"http://127.0.0.1:{fake_port}/v1",
                    "api_key": "fake-key",
                },
            }
        ],
        "general_settings": {"master_key": MASTER_KEY},
        "litellm_settings": {"telemetry": False},
    }
    path = work / f"litellm-{workers}.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {
        **os.environ,
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "LITELLM_TELEMETRY": "False",
        "DISABLE_SCHEMA_UPDATE": "True",
        "LITELLM_LOG": "ERROR",
    }
    log = (work / f"litellm-{workers}.log").open("wb")
    process = subprocess.Popen(
        [str(LITELLM_BIN), "--config", str(path), "--port", str(port), "--num_workers", str(workers)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    wait_http(f"http://127.0.0.1:{port}/health/liveliness", 180, process)
    return Target(f"litellm-{workers}w", f"http://127.0.0.1:{port}", "/v1/chat/completions", "bench", process)


def run(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="shipyard-bench-"))
    fake_port = free_port()
    fake = start_fake(fake_port)
    direct = Target("direct", f"http://127.0.0.1:{fake_port}", "/v1/chat/completions", "fake-model", fake)
    targets = [direct, start_shipyard(work, fake_port)]
    if not args.skip_litellm:
        if not LITELLM_BIN.exists():
            raise SystemExit(f"{LITELLM_BIN} is missing: see bench/README.md, or pass --skip-litellm")
        targets += [start_litellm(work, fake_port, 1), start_litellm(work, fake_port, 2)]
    luas = {t.name: lua_script(work, t.model, t.key) for t in targets}
    try:
        for target in targets:  # warm-up
            wrk(target, 16, 2 if args.quick else 5, luas[target.name])
        for round_index in range(args.rounds):
            for target in targets:
                for connections in (1, 16, 64):
                    result = wrk(target, connections, args.seconds, luas[target.name])
                    for key, value in result.items():
                        target.add(f"c{connections}_{key}", value)
                firsts, gaps = asyncio.run(stream_timings(target, args.streams))
                target.add("stream_first_chunk_ms", median(firsts))
                target.add("stream_chunk_gap_ms", median(gaps))
            print(f"round {round_index + 1}/{args.rounds} done", flush=True)
        cpu = {t.name: cpu_per_thousand(t, luas[t.name], args.seconds) for t in targets if t is not direct}
        soak = soak_memory(targets[1], luas["shipyard"], args.soak, args.soak_every)
    finally:
        for target in targets:
            if target.process is not None:
                stop(target.process)
        shutil.rmtree(work, ignore_errors=True)
    return summarise(targets, cpu, soak, args)


def cpu_per_thousand(target: Target, lua: Path, seconds: float) -> float:
    assert target.process is not None
    before = cpu_seconds(target.process.pid)
    result = wrk(target, 16, seconds, lua)
    return round((cpu_seconds(target.process.pid) - before) / result["requests"] * 1000, 3)


def soak_memory(target: Target, lua: Path, seconds: float, every: float) -> dict[str, Any]:
    assert target.process is not None
    pid = target.process.pid
    wrk(target, 16, 5, lua)
    samples = [{"t": 0, "rss_mib": round(rss_mib(pid), 1)}]
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        left = seconds - (time.monotonic() - started)
        result = wrk(target, 16, max(1, round(min(every, left))), lua)
        samples.append(
            {"t": round(time.monotonic() - started), "rss_mib": round(rss_mib(pid), 1), "rps": result["rps"]}
        )
    return {
        "seconds": seconds,
        "after_warmup_mib": samples[0]["rss_mib"],
        "after_soak_mib": samples[-1]["rss_mib"],
        "samples": samples,
    }


def summarise(
    targets: list[Target], cpu: dict[str, float], soak: dict[str, Any], args: argparse.Namespace
) -> dict[str, Any]:
    table: dict[str, dict[str, float]] = {}
    for target in targets:
        table[target.name] = {key: round(median(values), 3) for key, values in target.results.items()}
        table[target.name]["c1_p99_spread_ms"] = round(
            percentile(target.results["c1_p99_ms"], 100) - percentile(target.results["c1_p99_ms"], 0), 3
        )
    direct = table["direct"]
    added = {}
    for name, row in table.items():
        if name == "direct":
            continue
        added[name] = {
            "c1_p50_added_ms": round(row["c1_p50_ms"] - direct["c1_p50_ms"], 3),
            "c1_p99_added_ms": round(row["c1_p99_ms"] - direct["c1_p99_ms"], 3),
            "stream_first_chunk_added_ms": round(row["stream_first_chunk_ms"] - direct["stream_first_chunk_ms"], 3),
            "stream_chunk_gap_added_ms": round(row["stream_chunk_gap_ms"] - direct["stream_chunk_gap_ms"], 3),
            "c16_rps": row["c16_rps"],
            "c64_rps": row["c64_rps"],
            "cpu_seconds_per_1000": cpu.get(name),
        }
    ratios = {}
    for name in ("litellm-1w", "litellm-2w"):
        if name in table:
            ratios[f"shipyard_c16_rps_over_{name}"] = round(table["shipyard"]["c16_rps"] / table[name]["c16_rps"], 1)
    return {
        "benchmark": "gateway_overhead",
        "machine": machine(),
        "quick": args.quick,
        "rounds": args.rounds,
        "seconds_per_measurement": args.seconds,
        "streams_per_round": args.streams,
        "note": "wrk (1 thread), the fake upstream and the gateway share this machine's cores",
        "medians": table,
        "added_vs_direct": added,
        "ratios": ratios,
        "shipyard_soak": soak,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="short run: 1 round, 3 s measurements, 20 s soak")
    parser.add_argument("--skip-litellm", action="store_true")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--streams", type=int, default=40)
    parser.add_argument("--soak", type=float, default=600)
    parser.add_argument("--soak-every", type=float, default=30)
    parser.add_argument("--out", default=str(RESULTS / "gateway_overhead.json"))
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.seconds, args.streams, args.soak, args.soak_every = 1, 3, 10, 20, 10
    result = run(args)
    RESULTS.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(
        json.dumps(
            {
                "added_vs_direct": result["added_vs_direct"],
                "ratios": result["ratios"],
                "soak": {k: v for k, v in result["shipyard_soak"].items() if k != "samples"},
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
