"""Why the gateway is built on uvicorn + httptools + uvloop, aiohttp and orjson: a bare proxy, measured.

    .venv/bin/python -m bench.stack_choice

Each variant is the same minimal proxy (read the body, parse it, forward it to the fake upstream,
return the answer) with one part swapped: the HTTP client (aiohttp / httpx), the JSON library
(orjson / json), the server (uvicorn / granian, if installed). wrk measures each against the same
fake upstream, interleaved over rounds.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

from bench.common import RESULTS, free_port, machine, median, stop
from bench.gateway_overhead import Target, lua_script, start_fake, wrk

APP = """
import json, orjson, aiohttp, httpx
UPSTREAM = "http://127.0.0.1:{fake}/v1/chat/completions"
CLIENT = "{client}"
dumps = orjson.dumps if "{json}" == "orjson" else (lambda o: json.dumps(o).encode())
loads = orjson.loads if "{json}" == "orjson" else json.loads
state = {{}}

async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                if CLIENT == "aiohttp":
                    state["s"] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
                else:
                    state["s"] = httpx.AsyncClient(limits=httpx.Limits(max_connections=None))
                await send({{"type": "lifespan.startup.complete"}})
            elif message["type"] == "lifespan.shutdown":
                await send({{"type": "lifespan.shutdown.complete"}})
                return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    payload = dumps({{**loads(body), "model": "fake-model"}})
    headers = {{"content-type": "application/json"}}
    if CLIENT == "aiohttp":
        async with state["s"].post(UPSTREAM, data=payload, headers=headers) as r:
            data, status = await r.read(), r.status
    else:
        r = await state["s"].post(UPSTREAM, content=payload, headers=headers)
        data, status = r.content, r.status_code
    loads(data)
    await send({{"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]}})
    await send({{"type": "http.response.body", "body": data}})
"""

VARIANTS = [
    ("uvicorn+aiohttp+orjson", "uvicorn", "aiohttp", "orjson"),
    ("uvicorn+aiohttp+json", "uvicorn", "aiohttp", "json"),
    ("uvicorn+httpx+orjson", "uvicorn", "httpx", "orjson"),
    ("granian+aiohttp+orjson", "granian", "aiohttp", "orjson"),
]


def start_variant(work: Path, name: str, server: str, client: str, json_lib: str, fake: int) -> Target | None:
    module = name.replace("+", "_")
    (work / f"{module}.py").write_text(textwrap.dedent(APP.format(fake=fake, client=client, json=json_lib)))
    port = free_port()
    if server == "uvicorn":
        command = [
            sys.executable,
            "-m",
            "uvicorn",
            f"{module}:app",
            "--port",
            str(port),
            "--loop",
            "uvloop",
            "--http",
            "httptools",
            "--log-level",
            "warning",
            "--no-access-log",
        ]
    else:
        try:
            import granian  # noqa: F401
        except ImportError:
            return None
        command = [
            sys.executable,
            "-m",
            "granian",
            "--interface",
            "asgi",
            "--port",
            str(port),
            "--loop",
            "uvloop",
            "--log-level",
            "warning",
            f"{module}:app",
        ]
    process = subprocess.Popen(command, cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    target = Target(name, f"http://127.0.0.1:{port}", "/v1/chat/completions", "bench", process)
    _wait_post(target)
    return target


def _wait_post(target: Target) -> None:
    import time

    import httpx

    for _ in range(100):
        try:
            if httpx.post(target.url + target.path, json={"model": "x"}, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise TimeoutError(target.name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--out", default=str(RESULTS / "stack_choice.json"))
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="shipyard-stack-"))
    fake_port = free_port()
    fake = start_fake(fake_port)
    direct = Target("direct", f"http://127.0.0.1:{fake_port}", "/v1/chat/completions", "fake-model", fake)
    targets = [direct] + [t for v in VARIANTS if (t := start_variant(work, *v, fake_port)) is not None]
    lua = lua_script(work, "bench")
    try:
        for _ in range(args.rounds):
            for target in targets:
                for connections in (1, 16):
                    for key, value in wrk(target, connections, args.seconds, lua).items():
                        target.add(f"c{connections}_{key}", value)
    finally:
        for target in targets:
            if target.process is not None:
                stop(target.process)
    rows = {t.name: {k: round(median(v), 3) for k, v in t.results.items()} for t in targets}
    base = rows["direct"]["c1_p50_ms"]
    for row in rows.values():
        row["c1_p50_added_ms"] = round(row["c1_p50_ms"] - base, 3)
    Path(args.out).write_text(
        json.dumps({"benchmark": "stack_choice", "machine": machine(), "rows": rows}, indent=2) + "\n"
    )
    print(f"{'variant':<26} {'c1 p50 added':>13} {'c16 req/s':>10}")
    for name, row in rows.items():
        print(f"{name:<26} {row['c1_p50_added_ms']:>13} {row['c16_rps']:>10}")


if __name__ == "__main__":
    main()
