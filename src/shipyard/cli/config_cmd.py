"""`shipyard config`: show the effective settings, and write the configuration reference."""

from __future__ import annotations

from pathlib import Path

import typer
import yaml

from shipyard.config import load_settings
from shipyard.docsgen import configuration_reference
from shipyard.errors import ConfigError

app = typer.Typer(help="Inspect configuration.", no_args_is_help=True)


@app.command("show")
def show(config: Path | None = typer.Option(None, "--config", "-c", help="shipyard.yaml to read.")) -> None:
    """Print the effective settings (file + environment + defaults) as YAML."""
    try:
        settings = load_settings(config)
    except ConfigError as exc:
        typer.echo(f"shipyard: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(yaml.safe_dump(settings.model_dump(mode="json"), sort_keys=False))


@app.command("docs")
def docs() -> None:
    """Print docs/configuration.md, generated from the settings models."""
    typer.echo(configuration_reference(), nl=False)
