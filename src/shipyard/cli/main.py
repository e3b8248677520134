"""Entry point of the `shipyard` command."""

from __future__ import annotations

import typer

from shipyard import __version__
from shipyard.cli import chat, config_cmd, up

app = typer.Typer(
    name="shipyard",
    help="Shipyard: a self-hosted LLMOps platform behind one OpenAI-compatible gateway.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("up")(up.up)
app.command("chat")(chat.chat)
app.add_typer(config_cmd.app, name="config")


@app.command("version")
def version() -> None:
    """Print Shipyard's version."""
    typer.echo(__version__)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
