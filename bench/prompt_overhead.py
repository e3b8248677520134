"""What a prompt reference costs the gateway per request, and what rendering costs on its own.

Starts the fake upstream and Shipyard (SQLite store) with two deployments on it, `plain` and `bound` (bound to
`bench-bot@production`), pushes a chat prompt, then in each round sends N sequential non-streamed requests for
each variant in turn over one keep-alive connection:

    plain    no prompt
    request  "prompt": "bench-bot@production" + variables in the request
    bound    the deployment's bound prompt + variables

Figures are medians over rounds of each round's median and p99 latency; "added" subtracts `plain` of the same
rounds. The render micro-benchmark times `render_chat` on the same template (compiled once, as the gateway does).

    .venv/bin/python -m bench.prompt_overhead [--rounds 5 --requests 300]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import timeit
from pathlib import Path

import httpx
import yaml

from bench.common import RESULTS, free_port, machine, median, percentile, stop, wait_http
from shipyard.registry.templates import render_chat

TEMPLATE = [
    {"role": "system", "content": "You are {{ company }}'s support assistant. Answer in {{ language }}."},
    {"role": "user", "content": "Order {{ order_id }}: {{ question }}"},
]
VARIABLES = {"company": "ACME", "language": "English", "order_id": "A-1234", "question": "Where is my parcel?"}


def _start(tmp: Path, processes: list[subprocess.Popen]) -> str:
    """Start the fake upstream and Shipyard (appended to `processes`, which the caller stops); return the URL."""
    fake_port, port = free_port(), free_port()
    fake = [sys.executable, "-m", "shipyard.testing.fake_upstream", "--port", str(fake_port)]
    processes.append(subprocess.Popen(fake))
    wait_http(f"http://127.0.0.1:{fake_port}/health", 30, processes[-1])
    target = {"engine": "fake", "model": "fake-model"}
    config = {
        "engines": {"fake": {"kind": "openai", "base_url": f"http://127.0.0.1:{fake_port}/v1"}},
        "deployments": {
            "plain": {"targets": [target]},
            "bound": {"targets": [target], "prompt": "bench-bot@production"},
        },
    }
    (tmp / "shipyard.yaml").write_text(yaml.safe_dump(config))
    command = [sys.executable, "-m", "shipyard.cli.main", "up", "--port", str(port), "--data-dir", str(tmp / "data")]
    command += ["--config", str(tmp / "shipyard.yaml"), "--log-level", "warning"]
    # Access control costs every variant the same; it is left out so the prompt's own cost shows.
    processes.append(subprocess.Popen(command, env={**os.environ, "SHIPYARD_AUTH": "off"}))
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/readyz", 60, processes[-1])
    prompt = {"messages": TEMPLATE, "labels": ["production"]}
    httpx.post(url + "/api/v1/prompts/bench-bot/versions", json=prompt).raise_for_status()
    return url


def _round(client: httpx.Client, url: str, requests: int) -> dict[str, list[float]]:
    bodies = {
        "plain": {"model": "plain", "messages": [{"role": "user", "content": "Where is my parcel?"}]},
        "request": {"model": "plain", "messages": [], "prompt": "bench-bot@production", "variables": VARIABLES},
        "bound": {"model": "bound", "messages": [], "variables": VARIABLES},
    }
    out: dict[str, list[float]] = {}
    for name, body in bodies.items():
        latencies = []
        for _ in range(requests):
            started = time.perf_counter()
            response = client.post(url + "/v1/chat/completions", json=body)
            latencies.append((time.perf_counter() - started) * 1000)
            if response.status_code != 200:
                raise RuntimeError(f"{name}: {response.status_code} {response.text[:200]}")
        out[name] = latencies
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=300)
    args = parser.parse_args()
    number = 20_000
    render_us = min(timeit.repeat(lambda: render_chat(TEMPLATE, VARIABLES), number=number, repeat=5)) / number * 1e6
    with tempfile.TemporaryDirectory(prefix="bench-prompt-") as tmp:
        processes: list[subprocess.Popen] = []
        try:
            url = _start(Path(tmp), processes)
            rounds = []
            with httpx.Client(timeout=30) as client:
                _round(client, url, 50)  # warm-up
                for _ in range(args.rounds):
                    rounds.append(_round(client, url, args.requests))
        finally:
            for process in reversed(processes):
                stop(process)
    summary = {}
    for name in ("plain", "request", "bound"):
        p50 = median([median(r[name]) for r in rounds])
        p99 = median([percentile(r[name], 99) for r in rounds])
        summary[name] = {"p50_ms": round(p50, 3), "p99_ms": round(p99, 3)}
    for name in ("request", "bound"):
        summary[name]["added_p50_ms"] = round(summary[name]["p50_ms"] - summary["plain"]["p50_ms"], 3)
    result = {
        "benchmark": "prompt_overhead",
        "machine": machine(),
        "note": "2 shared CPU cores; other engineers' test runs were using them at the same time. Compare the "
        "variants within this run, not absolute numbers across runs.",
        "rounds": args.rounds,
        "requests_per_variant_per_round": args.requests,
        "render_chat_us": round(render_us, 2),
        "latency": summary,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "prompt_overhead.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({"render_chat_us": result["render_chat_us"], "latency": summary}, indent=2))


if __name__ == "__main__":
    main()
