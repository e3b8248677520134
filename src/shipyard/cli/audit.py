"""`shipyard audit list | verify`: read the control-plane audit log and check its hash chain."""

from __future__ import annotations

import time
from pathlib import Path

import orjson
import typer
from rich.console import Console
from rich.table import Table

from shipyard.auth.audit import verify_chain
from shipyard.cli.http import api_request
from shipyard.cli.keys import open_store

__all__ = ["app"]

app = typer.Typer(help="The audit log of control-plane changes: list, verify the hash chain.", no_args_is_help=True)

_URL = typer.Option(None, "--url", help="Shipyard's address (env: SHIPYARD_URL).")
_LOCAL = typer.Option(False, "--local", help="Read the store directly instead of the server's API.")
_CONFIG = typer.Option(None, "--config", help="shipyard.yaml naming the store (with --local).")


@app.command("list")
def list_rows(
    after: int = typer.Option(0, help="Rows after this sequence number."),
    limit: int = typer.Option(100, help="Most rows."),
    as_json: bool = typer.Option(False, "--json", help="JSON Lines instead of a table."),
    url: str | None = _URL,
    local: bool = _LOCAL,
    config: Path | None = _CONFIG,
) -> None:
    """Show audit rows, oldest first."""
    if local:
        store = open_store(config)
        try:
            rows = store.auth.audit.list(limit=limit, after_seq=after)
        finally:
            store.close()
    else:
        rows = api_request("GET", url, "/api/v1/audit", params={"after": after, "limit": limit})["data"]
    if as_json:
        for row in rows:
            typer.echo(orjson.dumps(row).decode())
        return
    table = Table("seq", "when (UTC)", "actor", "action", "target")
    for row in rows:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(row["at"]))
        table.add_row(str(row["seq"]), when, row["actor"] or "-", row["action"], row["target"])
    Console().print(table)


@app.command("verify")
def verify(
    url: str | None = _URL,
    local: bool = _LOCAL,
    config: Path | None = _CONFIG,
) -> None:
    """Recompute the hash chain; exit 1 and name the rows when one was changed or deleted."""
    if local:
        store = open_store(config)
        try:
            rows = store.auth.audit.all()
        finally:
            store.close()
        problems, count = verify_chain(rows), len(rows)
        head = rows[-1]["hash"] if rows else None
    else:
        report = api_request("GET", url, "/api/v1/audit/verify")
        problems, count = report["problems"], report["rows"]
        head = report["head"]["hash"] if report["head"] else None
    if problems:
        for problem in problems:
            typer.echo(f"TAMPERED: {problem}", err=True)
        raise typer.Exit(1)
    typer.echo(f"ok: {count} rows, chain intact; head {head}")
