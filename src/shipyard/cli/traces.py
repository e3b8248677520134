"""`shipyard traces list | show ID | export`: traces from a running server's /api/v1/traces."""

from __future__ import annotations

import os
import sys
import time
from datetime import datetime
from typing import Any

import httpx
import orjson
import typer
from rich.console import Console
from rich.table import Table
from rich.tree import Tree

__all__ = ["app", "render_tree"]

app = typer.Typer(
    help="Look at recorded traces: list, show one as a span tree, export as JSON Lines.", no_args_is_help=True
)

_URL = typer.Option(
    os.environ.get("SHIPYARD_URL", "http://127.0.0.1:8000"), "--url", help="Shipyard's address (env: SHIPYARD_URL)."
)


_KEY = typer.Option(
    os.environ.get("SHIPYARD_API_KEY"), "--api-key", help="API key, if the server requires one (env: SHIPYARD_API_KEY)."
)


def _headers(key: str | None) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"} if key else {}


def _fail(message: str) -> typer.Exit:
    Console(stderr=True).print(f"[red]error:[/red] {message}")
    return typer.Exit(1)


def _get(url: str, key: str | None, path: str, params: dict[str, Any] | None = None) -> Any:
    try:
        response = httpx.get(url.rstrip("/") + path, params=params, headers=_headers(key), timeout=30)
    except httpx.HTTPError as exc:
        raise _fail(f"cannot reach Shipyard at {url}: {exc}") from None
    if response.status_code != 200:
        try:
            message = response.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = response.text[:300]
        raise _fail(message)
    return response.json()


def _since(value: str | None) -> float | None:
    """`1h`, `30m`, `2d` ago, or a unix time, or an ISO date."""
    if value is None:
        return None
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if value[-1:] in units and value[:-1].replace(".", "", 1).isdigit():
        return time.time() - float(value[:-1]) * units[value[-1]]
    try:
        return float(value)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError:
        raise _fail(f"'{value}' is not a time: use 30m, 2h, 1d, a unix time or an ISO date") from None


def _params(**values: Any) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


@app.command("list")
def list_traces(
    url: str = _URL,
    api_key: str | None = _KEY,
    limit: int = typer.Option(20, "--limit", "-n", help="How many traces."),
    since: str | None = typer.Option(None, help="Only traces since: 30m, 2h, 1d, a unix time or an ISO date."),
    deployment: str | None = typer.Option(None, help="Only this deployment."),
    status: str | None = typer.Option(None, help="ok or error."),
    user: str | None = typer.Option(None, help="Only this caller `user`."),
    metadata: str | None = typer.Option(None, help="key=value in the caller's metadata."),
    min_latency_ms: float | None = typer.Option(None, help="Only traces at least this slow."),
    search: str | None = typer.Option(None, "--search", "-q", help="Text in any span's input or output."),
    as_json: bool = typer.Option(False, "--json", help="Print the JSON page instead of a table."),
) -> None:
    """The newest traces as a table."""
    page = _get(
        url,
        api_key,
        "/api/v1/traces",
        _params(
            limit=limit,
            since=_since(since),
            deployment=deployment,
            status=status,
            user=user,
            metadata=metadata,
            min_latency_ms=min_latency_ms,
            q=search,
        ),
    )
    if as_json:
        sys.stdout.write(orjson.dumps(page, option=orjson.OPT_INDENT_2).decode() + "\n")
        return
    table = Table("id", "started", "name", "source", "deployment", "status", "latency ms", "user")
    for row in page["data"]:
        started = datetime.fromtimestamp(row["created_at"]).strftime("%Y-%m-%d %H:%M:%S")
        latency = f"{row['latency_ms']:.1f}" if row["latency_ms"] is not None else "-"
        status_text = "[green]ok[/green]" if row["status"] == "ok" else "[red]error[/red]"
        table.add_row(
            row["id"],
            started,
            row["name"] or "",
            row["source"],
            row["deployment"] or "",
            status_text,
            latency,
            row["user"] or "",
        )
    console = Console(width=200)
    console.print(table)
    if page["next_cursor"]:
        console.print(f"[dim]more: --limit {limit * 2}, or the API with cursor={page['next_cursor']}[/dim]")


def _label(span: dict[str, Any]) -> str:
    parts = [f"[bold]{span['name']}[/bold] [dim]{span['kind']}[/dim]"]
    if span.get("duration_ms") is not None:
        parts.append(f"{span['duration_ms']:.1f} ms")
    if span.get("deployment"):
        parts.append(f"deployment={span['deployment']}")
    if span.get("model"):
        parts.append(f"model={span['model']}")
    if span.get("prompt_tokens") is not None or span.get("completion_tokens") is not None:
        parts.append(f"tokens={span.get('prompt_tokens')}/{span.get('completion_tokens')}")
    if span.get("cost") is not None:
        parts.append(f"cost=${span['cost']:.6f}")
    if span.get("status") == "error":
        parts.append(f"[red]error: {span.get('error') or ''}[/red]")
    return "  ".join(parts)


def render_tree(trace_id: str, spans: list[dict[str, Any]]) -> Tree:
    """A Rich tree of a span tree as /api/v1/traces/{id} returns it."""
    tree = Tree(f"trace [bold]{trace_id}[/bold]")

    def add(node: Tree, span: dict[str, Any]) -> None:
        branch = node.add(_label(span))
        for child in span["children"]:
            add(branch, child)

    for span in spans:
        add(tree, span)
    return tree


@app.command("show")
def show(
    trace_id: str = typer.Argument(help="The trace id (from `shipyard traces list`)."),
    url: str = _URL,
    api_key: str | None = _KEY,
    as_json: bool = typer.Option(False, "--json", help="Print the JSON instead of a tree."),
) -> None:
    """One trace as a span tree."""
    found = _get(url, api_key, f"/api/v1/traces/{trace_id}")
    if as_json:
        sys.stdout.write(orjson.dumps(found, option=orjson.OPT_INDENT_2).decode() + "\n")
        return
    Console(width=200).print(render_tree(trace_id, found["spans"]))


@app.command("export")
def export(
    url: str = _URL,
    api_key: str | None = _KEY,
    since: str | None = typer.Option(None, help="From: 30m, 2h, 1d, a unix time or an ISO date."),
    until: str | None = typer.Option(None, help="Until (same forms)."),
    deployment: str | None = typer.Option(None, help="Only this deployment."),
    output: str = typer.Option("-", "--output", "-o", help="File to write; `-` is standard output."),
) -> None:
    """Traces of a time range as JSON Lines (one trace with its spans per line), oldest first."""
    params = _params(since=_since(since), until=_since(until), deployment=deployment)
    target = sys.stdout.buffer if output == "-" else open(output, "wb")  # noqa: SIM115 - closed below
    count = 0
    try:
        with httpx.stream(
            "GET", url.rstrip("/") + "/api/v1/traces/export", params=params, headers=_headers(api_key), timeout=None
        ) as response:
            if response.status_code != 200:
                response.read()
                raise _fail(response.text[:300])
            for line in response.iter_lines():
                if line:
                    target.write(line.encode() + b"\n")
                    count += 1
    except httpx.HTTPError as exc:
        raise _fail(f"cannot reach Shipyard at {url}: {exc}") from None
    finally:
        if output != "-":
            target.close()
    Console(stderr=True).print(f"[dim]{count} trace(s) exported[/dim]")
