"""Local engine: total tokens/s with N concurrent requests versus the same requests one after another.

    .venv/bin/python bench/local_batching.py [--max-tokens 64] [--out bench/results/local_batching.json]

Starts the local worker with the bundled model, warms it up, then in one run measures sequential
(8 requests one by one) and concurrent levels 1, 2, 4, 8, 16. Every request is greedy with the same
prompt set and must produce exactly max_tokens tokens (checked), so each level does identical work.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from typing import Any

import httpx

from bench.common import RESULTS, free_port, machine, median, stop, wait_http

PROMPTS = [
    "Write a long story about a lighthouse keeper.",
    "Explain in detail how ships navigate at night.",
    "Describe a busy harbour at dawn, at length.",
    "Tell a long tale about a storm at sea.",
    "Write a detailed history of sailing ships.",
    "Describe life aboard a fishing boat, at length.",
    "Write a long letter from a sailor to his family.",
    "Explain at length how tides work.",
]


async def one(client: httpx.AsyncClient, url: str, prompt: str, max_tokens: int) -> dict[str, float]:
    body = {
        "model": "smollm2",
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    started = time.perf_counter()
    first = None
    tokens = 0
    async with client.stream("POST", url, json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if first is None and '"content":"' in line and '"content":""' not in line:
                first = time.perf_counter()
            if '"usage"' in line and '"choices":[]' in line:
                tokens = json.loads(line[6:])["usage"]["completion_tokens"]
    if tokens != max_tokens:
        raise RuntimeError(f"expected {max_tokens} tokens, got {tokens} (prompt ran into EOS: change it)")
    return {"ttft": (first or started) - started, "latency": time.perf_counter() - started, "tokens": tokens}


async def level(url: str, concurrency: int, requests: int, max_tokens: int) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=600) as client:
        started = time.perf_counter()
        if concurrency == 0:  # sequential
            results = [await one(client, url, PROMPTS[i % len(PROMPTS)], max_tokens) for i in range(requests)]
        else:
            results = []
            for offset in range(0, requests, concurrency):
                batch = [
                    one(client, url, PROMPTS[(offset + i) % len(PROMPTS)], max_tokens)
                    for i in range(min(concurrency, requests - offset))
                ]
                results += await asyncio.gather(*batch)
        elapsed = time.perf_counter() - started
    tokens = sum(r["tokens"] for r in results)
    return {
        "concurrency": concurrency or "sequential",
        "requests": requests,
        "seconds": round(elapsed, 2),
        "tokens": tokens,
        "tokens_per_s": round(tokens / elapsed, 2),
        "ttft_median_s": round(median([r["ttft"] for r in results]), 3),
        "latency_median_s": round(median([r["latency"] for r in results]), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--data-dir", default=str(RESULTS.parent.parent / ".cache" / "tests" / "bundled"))
    parser.add_argument("--out", default=str(RESULTS / "local_batching.json"))
    args = parser.parse_args()
    from pathlib import Path

    from shipyard.engines.local.bundled import ensure_converted

    model_dir = ensure_converted(Path(args.data_dir))
    port = free_port()
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "shipyard.engines.local.worker",
            "--model-dir",
            str(model_dir),
            "--served-name",
            "smollm2",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ]
    )
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    try:
        wait_http(f"http://127.0.0.1:{port}/health", 300, worker)
        asyncio.run(level(url, 4, 4, 8))  # warm-up
        rows = [asyncio.run(level(url, 0, 8, args.max_tokens))]
        for concurrency, requests in ((1, 4), (2, 8), (4, 8), (8, 8), (16, 16)):
            rows.append(asyncio.run(level(url, concurrency, requests, args.max_tokens)))
            print(rows[-1], flush=True)
    finally:
        stop(worker)
    sequential = rows[0]["tokens_per_s"]
    eight = next(r for r in rows if r["concurrency"] == 8)["tokens_per_s"]
    result = {
        "benchmark": "local_batching",
        "machine": machine(),
        "max_tokens": args.max_tokens,
        "rows": rows,
        "ratio_8_concurrent_vs_sequential": round(eight / sequential, 2),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'concurrency':>12} {'tokens/s':>9} {'TTFT p50':>9} {'latency p50':>12}")
    for row in rows:
        print(
            f"{row['concurrency']!s:>12} {row['tokens_per_s']:>9} {row['ttft_median_s']:>9} "
            f"{row['latency_median_s']:>12}"
        )
    print(f"8 concurrent / sequential: {result['ratio_8_concurrent_vs_sequential']}x  -> {args.out}")


if __name__ == "__main__":
    main()
