"""`shipyard datasets ...`: create versions from JSONL/CSV files, append, list, show rows."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from shipyard.cli.prompts import client_for, url_option

__all__ = ["app"]

app = typer.Typer(help="Datasets: immutable, content-hashed versions of rows.", no_args_is_help=True)


def _upload(name: str, file: Path, message: str, append: bool, url: str) -> None:
    if file.suffix.lower() not in (".jsonl", ".csv", ".parquet"):
        raise typer.BadParameter(f"{file.name}: expected a .jsonl, .csv or .parquet file", param_hint="--file")
    with client_for(url) as client:
        version = client.datasets.upload(name, file, message=message, append=append)
    typer.echo(f"{name}:{version['version']} created: {version['rows']} rows, sha256 {version['sha256'][:12]}")


@app.command("create")
def create(
    name: str = typer.Argument(..., help="Dataset name."),
    file: Path = typer.Option(..., "--file", "-f", exists=True, dir_okay=False, help=".jsonl, .csv or .parquet file."),
    message: str = typer.Option("", "--message", "-m", help="What changed."),
    url: str = url_option(),
) -> None:
    """Create the next version of NAME from a file (rows: input, expected, metadata)."""
    _upload(name, file, message, False, url)


@app.command("append")
def append(
    name: str = typer.Argument(..., help="Dataset name."),
    file: Path = typer.Option(..., "--file", "-f", exists=True, dir_okay=False, help=".jsonl, .csv or .parquet file."),
    message: str = typer.Option("", "--message", "-m", help="What changed."),
    url: str = url_option(),
) -> None:
    """A new version: the newest version's rows followed by the file's rows."""
    _upload(name, file, message, True, url)


@app.command("from-traces")
def from_traces(
    name: str = typer.Argument(..., help="Dataset name."),
    deployment: str | None = typer.Option(None, help="Only traces of this deployment."),
    since: float | None = typer.Option(None, help="Only traces from this unix time on."),
    status: str | None = typer.Option(None, help="ok or error."),
    metadata: str | None = typer.Option(None, help="key=value in the caller's metadata."),
    q: str | None = typer.Option(None, help="Text searched in inputs and outputs."),
    limit: int = typer.Option(1000, help="Most traces to take (oldest first)."),
    append: bool = typer.Option(False, help="Add to the newest version's rows."),
    message: str = typer.Option("", "--message", "-m", help="What changed."),
    url: str = url_option(),
) -> None:
    """A version made of recorded calls: input = the messages (or prompt), expected = the answer."""
    where = {"deployment": deployment, "since": since, "status": status, "metadata": metadata, "q": q}
    with client_for(url) as client:
        version = client.datasets.from_traces(
            name, append=append, message=message, limit=limit, **{k: v for k, v in where.items() if v is not None}
        )
    typer.echo(f"{name}:{version['version']} created: {version['rows']} rows from traces ({version['source']})")


@app.command("list")
def list_datasets(url: str = url_option()) -> None:
    """Every dataset with its newest version."""
    with client_for(url) as client:
        for row in client.datasets.list():
            typer.echo(f"{row['name']}\tv{row['latest_version']}")


@app.command("show")
def show(
    ref: str = typer.Argument(..., help="NAME (its versions) or NAME:VERSION (its rows as JSON Lines)."),
    limit: int = typer.Option(20, help="Most rows to print."),
    url: str = url_option(),
) -> None:
    """List a dataset's versions, or print a version's rows."""
    name, _, number = ref.partition(":")
    with client_for(url) as client:
        if not number:
            for v in client.datasets.show(name)["versions"]:
                parent = f" (appended to v{v['parent']})" if v["parent"] else ""
                typer.echo(
                    f"v{v['version']}\t{v['rows']} rows\t{v['sha256'][:12]}\t{v['source']}\t{v['message']}{parent}"
                )
            return
        if not number.isdigit():
            raise typer.BadParameter(f"{ref!r}: the version after ':' must be a number")
        rows = client.datasets.rows(name, int(number))
    for row in rows[:limit]:
        typer.echo(json.dumps(row, ensure_ascii=False))
