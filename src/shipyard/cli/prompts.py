"""`shipyard prompts ...`: push, list, show, diff, label and render prompts on a running server."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import typer
import yaml

from shipyard.errors import ShipyardError
from shipyard.sdk.client import Client

__all__ = ["app", "client_for", "url_option"]

app = typer.Typer(help="Prompts: immutable versions, movable labels, diffs, rendering.", no_args_is_help=True)


def url_option() -> str:
    return typer.Option(os.environ.get("SHIPYARD_URL", "http://127.0.0.1:8000"), help="Server (env: SHIPYARD_URL).")


@contextlib.contextmanager
def client_for(url: str) -> Iterator[Client]:
    """A client whose errors become a clear message and exit status 1."""
    client = Client(url)
    try:
        yield client
    except ShipyardError as exc:
        typer.echo(f"shipyard: {exc}", err=True)
        raise typer.Exit(1) from None
    finally:
        client.close()


def _split_ref(ref: str) -> tuple[str, str | None, int | None]:
    if "@" in ref:
        name, label = ref.split("@", 1)
        return name, label, None
    if ":" in ref:
        name, number = ref.rsplit(":", 1)
        if not number.isdigit():
            raise typer.BadParameter(f"{ref!r}: the version after ':' must be a number")
        return name, None, int(number)
    return ref, None, None


@app.command("push")
def push(
    name: str = typer.Argument(..., help="Prompt name."),
    file: Path = typer.Option(..., "--file", "-f", exists=True, dir_okay=False, help="YAML prompt file."),
    label: list[str] = typer.Option([], "--label", "-l", help="Label(s) to point at the new version."),
    message: str | None = typer.Option(None, "--message", "-m", help="Commit message (overrides the file's)."),
    url: str = url_option(),
) -> None:
    """Create the next version of NAME from a YAML file (`messages:` or `template:`, `params:`, ...)."""
    spec = yaml.safe_load(file.read_text())
    if not isinstance(spec, dict):
        raise typer.BadParameter(f"{file} must hold a mapping", param_hint="--file")
    if message is not None:
        spec["message"] = message
    spec.setdefault("author", os.environ.get("USER") or "cli")
    with client_for(url) as client:
        prompt = client.prompts.push(name, spec, label)
    typer.echo(f"{prompt.ref} pushed" + (f" (labels: latest, {', '.join(label)})" if label else " (labels: latest)"))


@app.command("list")
def list_prompts(url: str = url_option()) -> None:
    """Every prompt with its newest version and labels."""
    with client_for(url) as client:
        rows = client.prompts.list()
    for row in rows:
        labels = " ".join(f"{k}={v}" for k, v in sorted(row["labels"].items()))
        typer.echo(f"{row['name']}\tv{row['latest_version']}\t{labels}")


@app.command("show")
def show(ref: str = typer.Argument(..., help="NAME, NAME@label or NAME:version."), url: str = url_option()) -> None:
    """Show one version as YAML (NAME alone: its versions and labels)."""
    name, label, version = _split_ref(ref)
    with client_for(url) as client:
        if label is None and version is None:
            info = client.prompts.show(name)
            for v in info["versions"]:
                typer.echo(f"v{v['version']}\t{v['author']}\t{v['message']}")
            for lb in info["labels"]:
                typer.echo(f"@{lb['label']} -> v{lb['version']}" + (" (protected)" if lb["protected"] else ""))
            return
        prompt = client.prompts.get(name, label=label, version=version)
    shown = {
        "name": prompt.name,
        "version": prompt.version,
        ("messages" if prompt.kind == "chat" else "template"): prompt.template,
        "variables": prompt.variables,
        "params": prompt.params,
        "message": prompt.message,
        "author": prompt.author,
    }
    typer.echo(yaml.safe_dump(shown, sort_keys=False, allow_unicode=True), nl=False)


@app.command("diff")
def diff(
    name: str = typer.Argument(..., help="Prompt name."),
    a: str = typer.Argument(..., help="A version number or a label."),
    b: str = typer.Argument(..., help="A version number or a label."),
    url: str = url_option(),
) -> None:
    """Unified diff between two versions (or labels) of NAME."""
    with client_for(url) as client:
        text = client.prompts.diff(name, a, b)
    typer.echo(text or "(no differences)", nl=not text)


@app.command("label")
def label(
    name: str = typer.Argument(..., help="Prompt name."),
    version: int = typer.Argument(..., help="Version the label should point at."),
    label: str = typer.Argument(..., help="Label, e.g. production."),
    force: bool = typer.Option(False, "--force", help="Move (or unprotect) a protected label."),
    protect: bool | None = typer.Option(None, "--protect/--unprotect", help="Set or clear protection."),
    url: str = url_option(),
) -> None:
    """Point LABEL of NAME at VERSION (atomically)."""
    with client_for(url) as client:
        result = client.prompts.label(name, version, label, force=force, protected=protect)
    was = f" (was v{result['previous']})" if result.get("previous") else ""
    typer.echo(f"{name}@{label} -> v{result['version']}{was}" + (" [protected]" if result["protected"] else ""))


@app.command("render")
def render(
    ref: str = typer.Argument(..., help="NAME, NAME@label or NAME:version."),
    var: list[str] = typer.Option([], "--var", "-v", help="A variable as key=value (repeatable)."),
    vars_file: Path | None = typer.Option(None, "--vars", exists=True, help="YAML/JSON file of variables."),
    url: str = url_option(),
) -> None:
    """Render a version with variables: chat messages as JSON, or the text."""
    variables: dict[str, object] = {}
    if vars_file is not None:
        loaded = yaml.safe_load(vars_file.read_text()) or {}
        if not isinstance(loaded, dict):
            raise typer.BadParameter(f"{vars_file} must hold a mapping", param_hint="--vars")
        variables.update(loaded)
    for item in var:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"{item!r}: expected key=value", param_hint="--var")
        variables[key] = value
    name, label, version = _split_ref(ref)
    suffix = f"@{label}" if label else (f":{version}" if version else None)
    with client_for(url) as client:
        result = client.prompts.render(name, variables, suffix)
    if "messages" in result:
        typer.echo(json.dumps(result["messages"], indent=2, ensure_ascii=False))
    else:
        typer.echo(result["text"])
