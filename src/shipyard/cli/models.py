"""`shipyard models ...`: import weights, list, show, move aliases, print lineage."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from shipyard.cli.prompts import client_for, url_option
from shipyard.registry.models import lineage_tree

__all__ = ["app"]

app = typer.Typer(help="Models: versions by content hash, aliases, lineage.", no_args_is_help=True)


def _split(ref: str) -> tuple[str, str]:
    for sep in (":", "@"):
        if sep in ref:
            name, rest = ref.split(sep, 1)
            return name, rest
    return ref, "latest"


@app.command("import")
def import_model(
    name: str = typer.Argument(..., help="Model name, e.g. smollm2."),
    source: str | None = typer.Argument(
        None,
        help="A Hugging Face folder, a .gguf file or a LoRA adapter folder (on the server's machine), or a "
        "Hugging Face Hub id (downloaded by the server if it has network access).",
    ),  # fmt: skip
    hosted: str | None = typer.Option(None, help="Register a hosted provider's model id instead of weights."),
    reference: bool = typer.Option(False, "--reference", help="Reference the files in place instead of copying."),
    convert: bool = typer.Option(False, "--convert", help="Convert a .gguf file to safetensors first (local extra)."),
    base: str | None = typer.Option(None, help="Base version of a LoRA adapter: NAME:VERSION or NAME@ALIAS."),
    dataset: str | None = typer.Option(None, help="Dataset version it was trained on (lineage)."),
    run: str | None = typer.Option(None, help="The run that produced it (lineage)."),
    metric: list[str] = typer.Option([], "--metric", help="An evaluation result as key=number (repeatable)."),
    message: str = typer.Option("", "--message", "-m", help="Why this version."),
    allow_custom_code: bool = typer.Option(False, help="Accept a config.json with auto_map (code is never run)."),
    url: str = url_option(),
) -> None:
    """Register a new version of NAME (the same weights twice are recognised)."""
    metrics = {}
    for item in metric:
        key, sep, value = item.partition("=")
        try:
            metrics[key] = float(value)
        except ValueError:
            raise typer.BadParameter(f"{item!r}: expected key=number", param_hint="--metric") from None
        if not sep or not key:
            raise typer.BadParameter(f"{item!r}: expected key=number", param_hint="--metric")
    if source is not None and Path(source).exists():
        source = str(Path(source).resolve())
    with client_for(url) as client:
        version = client.models.register(
            name, source, hosted=hosted, copy_weights=not reference, base=base, dataset=dataset, run=run,
            metrics=metrics, message=message, allow_custom_code=allow_custom_code, convert=convert,
        )  # fmt: skip
    what = f"{version['name']}:{version['version']} [{version['kind']}]"
    if not version["created"]:
        typer.echo(f"already registered as {what} (same content hash {version['sha256'][:12]})")
        return
    digest = f" sha256 {version['sha256'][:12]}" if version["sha256"] else ""
    typer.echo(f"{what} registered ({version['storage']}){digest}")


@app.command("list")
def list_models(url: str = url_option()) -> None:
    """Every model with its newest version and aliases."""
    with client_for(url) as client:
        for row in client.models.list():
            aliases = " ".join(f"{k}={v}" for k, v in sorted(row["aliases"].items()))
            typer.echo(f"{row['name']}\tv{row['latest_version']}\t{row['kind']}\t{aliases}".rstrip())


@app.command("show")
def show(ref: str = typer.Argument(..., help="NAME, NAME:VERSION or NAME@ALIAS."), url: str = url_option()) -> None:
    """NAME: its versions and aliases. NAME:VERSION or NAME@ALIAS: that version as JSON."""
    with client_for(url) as client:
        if ":" not in ref and "@" not in ref:
            info = client.models.show(ref)
            for v in info["versions"]:
                sha = (v["sha256"] or "")[:12]
                typer.echo(f"v{v['version']}\t{v['kind']}\t{v['storage']}\t{sha}\t{v['message']}".rstrip())
            for a in info["aliases"]:
                typer.echo(f"@{a['alias']} -> v{a['version']}")
            return
        name, rest = _split(ref)
        typer.echo(json.dumps(client.models.get(name, rest), indent=2))


@app.command("alias")
def alias(
    name: str = typer.Argument(..., help="Model name."),
    version: int = typer.Argument(..., help="Version the alias should point at."),
    alias: str = typer.Argument(..., help="Alias, e.g. champion."),
    url: str = url_option(),
) -> None:
    """Point ALIAS of NAME at VERSION; deployments targeting NAME@ALIAS follow at once."""
    with client_for(url) as client:
        result = client.models.alias(name, version, alias)
    was = f" (was v{result['previous']})" if result["previous"] else ""
    typer.echo(f"{name}@{alias} -> v{result['version']}{was}")


@app.command("lineage")
def lineage(ref: str = typer.Argument(..., help="NAME:VERSION or NAME@ALIAS."), url: str = url_option()) -> None:
    """Print the version's ancestors (base models) and descendants (adapters), with datasets, runs and metrics."""
    name, rest = _split(ref)
    with client_for(url) as client:
        typer.echo(lineage_tree(client.models.lineage(name, rest)))
