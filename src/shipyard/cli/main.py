"""Entry point of the `shipyard` command."""

from __future__ import annotations

import typer

from shipyard import __version__
from shipyard.cli import audit as audit_cmd
from shipyard.cli import chat, config_cmd, up
from shipyard.cli import datasets as datasets_cmd
from shipyard.cli import eval as eval_cmd
from shipyard.cli import keys as keys_cmd
from shipyard.cli import loadtest as loadtest_cmd
from shipyard.cli import models as models_cmd
from shipyard.cli import prompts as prompts_cmd
from shipyard.cli import traces as traces_cmd

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
app.add_typer(loadtest_cmd.app, name="loadtest")
app.add_typer(prompts_cmd.app, name="prompts")
app.add_typer(datasets_cmd.app, name="datasets")
app.add_typer(models_cmd.app, name="models")
app.add_typer(traces_cmd.app, name="traces")
app.add_typer(eval_cmd.app, name="eval")
app.add_typer(keys_cmd.app, name="keys")  # issue 6
app.add_typer(keys_cmd.secrets_app, name="secrets")  # issue 6
app.add_typer(audit_cmd.app, name="audit")  # issue 6


@app.command("version")
def version() -> None:
    """Print Shipyard's version."""
    typer.echo(__version__)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
