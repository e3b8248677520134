"""`shipyard up`: start the gateway, its engines and the store in the foreground."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from shipyard.config import BUNDLED_MODEL, LocalEngineConfig, load_settings
from shipyard.errors import ShipyardError

console = Console(stderr=True)


def up(
    config: Path | None = typer.Option(None, "--config", "-c", help="shipyard.yaml to read (env: SHIPYARD_CONFIG)."),
    host: str | None = typer.Option(None, help="Interface to bind (env: SHIPYARD_HOST; default 127.0.0.1)."),
    port: int | None = typer.Option(None, help="Port (env: SHIPYARD_PORT; default 8000)."),
    data_dir: Path | None = typer.Option(None, help="Data directory (env: SHIPYARD_DATA_DIR; default ~/.shipyard)."),
    database_url: str | None = typer.Option(None, help="Store URL (env: SHIPYARD_DATABASE_URL; default SQLite)."),
    log_level: str | None = typer.Option(None, help="debug, info, warning or error (env: SHIPYARD_LOG_LEVEL)."),
) -> None:
    """Start Shipyard: the gateway on http://HOST:PORT/v1 and every configured engine."""
    overrides = {
        ("server", "host"): host,
        ("server", "port"): port,
        ("data_dir",): str(data_dir) if data_dir else None,
        ("database_url",): database_url,
        ("server", "log_level"): log_level,
    }
    try:
        settings = load_settings(config, overrides)
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        for engine in settings.engines.values():
            if isinstance(engine, LocalEngineConfig) and engine.model == BUNDLED_MODEL:
                _convert_bundled(settings.data_dir)
        from shipyard.server import serve

        names = ", ".join(settings.deployments) or "(none)"
        console.print(
            f"[bold]Shipyard[/bold] on http://{settings.server.host}:{settings.server.port}/v1  "
            f"deployments: {names}  data: {settings.data_dir}"
        )
        serve(settings)
    except ShipyardError as exc:
        console.print(f"[red]shipyard: {exc}[/red]")
        raise typer.Exit(2) from None


def _convert_bundled(data_dir: Path) -> None:
    """First start: convert the bundled GGUF here, in a child process, so its progress bar shows."""
    import subprocess
    import sys

    from shipyard.engines.local.bundled import bundled_gguf_path, converted_dir, is_converted

    if is_converted(converted_dir(data_dir), bundled_gguf_path()):
        return
    result = subprocess.run([sys.executable, "-m", "shipyard.engines.local.bundled", str(data_dir)])
    if result.returncode != 0:
        from shipyard.errors import EngineError

        raise EngineError("converting the bundled model failed (see above)")
