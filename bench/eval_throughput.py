"""Does the experiment runner keep the local engine busy? Rows/s and tokens/s of a 200-row experiment at
concurrency 8 against the bundled model, beside the engine's raw tokens/s at concurrency 8 measured in the same
run through the same gateway with a plain asyncio load.

    .venv/bin/python -m bench.eval_throughput [--rows 200] [--max-tokens 16]

A ratio near 1 means the runner adds no idle time: the engine is the limit, not the runner.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.common import REPO, RESULTS, free_port, machine, stop, wait_http
from shipyard.evals.runner import ApiSink, run_experiment
from shipyard.evals.suite import Suite
from shipyard.sdk.client import Client

TOPICS = ["ships", "tides", "harbours", "lighthouses", "storms", "sails", "anchors", "compasses", "maps", "knots"]


def _rows(count: int) -> list[dict[str, Any]]:
    return [{"input": f"Write two sentences about {TOPICS[i % len(TOPICS)]} (variant {i}).", "expected": "sea"}
            for i in range(count)]  # fmt: skip


async def _raw(url: str, rows: list[dict[str, Any]], concurrency: int, max_tokens: int) -> dict[str, float]:
    """The same kind of requests from a bare asyncio load at the same concurrency."""
    queue = list(rows)
    tokens = 0

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal tokens
        while queue:
            row = queue.pop()
            body = {"model": "smollm2", "messages": [{"role": "user", "content": row["input"]}],
                    "max_tokens": max_tokens, "temperature": 0}  # fmt: skip
            response = await client.post(url + "/v1/chat/completions", json=body, timeout=600)
            response.raise_for_status()
            tokens += response.json()["usage"]["completion_tokens"]

    started = time.perf_counter()
    async with httpx.AsyncClient() as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    seconds = time.perf_counter() - started
    return {"requests": len(rows), "seconds": round(seconds, 2), "tokens": tokens,
            "tokens_per_s": round(tokens / seconds, 2), "requests_per_s": round(len(rows) / seconds, 3)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=200)
    parser.add_argument("--raw-requests", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=16)
    args = parser.parse_args()
    data = Path(tempfile.mkdtemp(prefix="shipyard-bench-eval-"))
    cached = REPO / ".cache" / "tests" / "bundled" / "models"
    if cached.is_dir():  # reuse the converted bundled model of the test cache
        (data / "models").mkdir()
        for folder in cached.iterdir():
            (data / "models" / folder.name).symlink_to(folder.resolve(), target_is_directory=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "SHIPYARD_AUTH": "off"}
    server = subprocess.Popen([sys.executable, "-m", "shipyard.cli.main", "up", "--port", str(port), "--data-dir",
                               str(data)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        wait_http(url + "/readyz", timeout=300, process=server)
        rows = _rows(args.rows)
        with Client(url) as client:
            client.datasets.create("bench-eval", rows)
            asyncio.run(_raw(url, rows[:8], args.concurrency, args.max_tokens))  # warm-up
            raw = asyncio.run(_raw(url, rows[: args.raw_requests], args.concurrency, args.max_tokens))
            suite = Suite.model_validate({
                "name": "bench-eval", "dataset": "bench-eval", "concurrency": args.concurrency,
                "target": {"deployment": "smollm2", "params": {"max_tokens": args.max_tokens, "temperature": 0}},
                "scorers": ["contains", {"name": "length", "options": {"max_words": 200}}],
            })  # fmt: skip
            started = time.perf_counter()
            record = asyncio.run(run_experiment(suite, rows, ApiSink(client), gateway_url=url))
            seconds = time.perf_counter() - started
        run = record["summary"]["run"]
        experiment = {"rows": run["rows"], "errors": run["errors"], "seconds": round(seconds, 2),
                      "tokens": run["completion_tokens"], "rows_per_s": round(run["rows"] / seconds, 3),
                      "tokens_per_s": round(run["completion_tokens"] / seconds, 2)}  # fmt: skip
        result = {
            "benchmark": "eval_throughput",
            "machine": machine(),
            "max_tokens": args.max_tokens,
            "concurrency": args.concurrency,
            "raw_gateway_load": raw,
            "experiment": experiment,
            "experiment_tokens_per_s_over_raw": round(experiment["tokens_per_s"] / raw["tokens_per_s"], 3),
        }
    finally:
        stop(server)
    print(json.dumps(result, indent=2))
    (RESULTS / "eval_throughput.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
