"""`shipyard keys create | list | revoke | generate | secrets-key`, and `shipyard secrets set | list | delete`.

By default these call the running server's /api/v1/keys with SHIPYARD_API_KEY. With `--local` they open the
store named by the configuration (shipyard.yaml, SHIPYARD_DATA_DIR, SHIPYARD_DATABASE_URL) directly and act as the
operator: that is the bootstrap and recovery path (e.g. every admin key lost), for whoever can read the database.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import orjson
import typer
from rich.console import Console
from rich.table import Table

from shipyard.auth.audit import AuditLog
from shipyard.auth.keys import KeySpec, issue_key, key_summary, new_key, public_key_row
from shipyard.auth.secrets import SecretBox
from shipyard.auth.settings import RateLimitConfig
from shipyard.cli.http import api_request, fail
from shipyard.errors import ShipyardError

__all__ = ["app", "open_store", "secrets_app"]

app = typer.Typer(help="API keys: create (shown once), list, revoke.", no_args_is_help=True)
secrets_app = typer.Typer(help="Provider secrets stored encrypted (needs SHIPYARD_SECRETS_KEY).", no_args_is_help=True)

_URL = typer.Option(None, "--url", help="Shipyard's address (env: SHIPYARD_URL).")
_LOCAL = typer.Option(False, "--local", help="Work on the store directly instead of the server's API.")
_CONFIG = typer.Option(None, "--config", help="shipyard.yaml naming the store (with --local).")
LOCAL_ACTOR = "cli-local"


def open_store(config: Path | None) -> Any:
    from shipyard.config import load_settings
    from shipyard.store import Store

    try:
        return Store(load_settings(config).store_url)
    except ShipyardError as exc:
        raise fail(str(exc)) from None


def _limits(rpm: int | None, tpm: int | None, daily: float | None, monthly: float | None) -> dict[str, Any] | None:
    values = {
        "requests_per_minute": rpm,
        "tokens_per_minute": tpm,
        "budget_per_day": daily,
        "budget_per_month": monthly,
    }
    values = {k: v for k, v in values.items() if v is not None}
    return values or None


@app.command("create")
def create(
    name: str = typer.Argument(..., help="What the key is for."),
    scope: list[str] = typer.Option([], "--scope", "-s", help="prompts:read, traces:write, keys:write, admin, ..."),
    deployment: list[str] = typer.Option([], "--deployment", "-d", help="A deployment it may call ('*' for all)."),
    owner: str | None = typer.Option(None, help="Who holds it (default: the creator's owner)."),
    rpm: int | None = typer.Option(None, help="Requests per minute."),
    tpm: int | None = typer.Option(None, help="Tokens per minute."),
    budget_day: float | None = typer.Option(None, help="Dollars per UTC day."),
    budget_month: float | None = typer.Option(None, help="Dollars per UTC month."),
    expires_in_days: float | None = typer.Option(None, help="Refuse the key after this many days."),
    url: str | None = _URL,
    local: bool = _LOCAL,
    config: Path | None = _CONFIG,
) -> None:
    """Create a key and print it once (stdout); its details go to stderr."""
    limits = _limits(rpm, tpm, budget_day, budget_month)
    if local:
        store = open_store(config)
        try:
            spec = KeySpec(
                name=name,
                owner=owner or "operator",
                scopes=frozenset(scope),
                deployments=tuple(deployment),
                limits=RateLimitConfig(**limits) if limits else None,
                expires_at=time.time() + expires_in_days * 86400 if expires_in_days else None,
            )
            token, row = issue_key(store.auth.keys, spec, None)
            AuditLog(store.auth.audit).record(LOCAL_ACTOR, "key.create", f"key:{row['id']}", None, key_summary(row))
            shown = public_key_row(row)
        except ShipyardError as exc:
            raise fail(str(exc)) from None
        finally:
            store.close()
    else:
        body = {"name": name, "owner": owner, "scopes": scope, "deployments": deployment, "limits": limits}
        body["expires_in_days"] = expires_in_days
        shown = api_request("POST", url, "/api/v1/keys", json=body)
        token = shown.pop("key")
    Console(stderr=True).print(f"created key {shown['id']} ({shown['name']}); it is shown only now:")
    typer.echo(token)


@app.command("list")
def list_keys(
    as_json: bool = typer.Option(False, "--json", help="JSON instead of a table."),
    url: str | None = _URL,
    local: bool = _LOCAL,
    config: Path | None = _CONFIG,
) -> None:
    """List keys (never the keys themselves)."""
    if local:
        store = open_store(config)
        try:
            rows = [public_key_row(r) for r in store.auth.keys.list()]
        finally:
            store.close()
    else:
        rows = api_request("GET", url, "/api/v1/keys")["data"]
    if as_json:
        typer.echo(orjson.dumps(rows, option=orjson.OPT_INDENT_2).decode())
        return
    table = Table("id", "name", "owner", "scopes", "deployments", "active", "last used")
    for row in rows:
        used = time.strftime("%Y-%m-%d %H:%M", time.gmtime(row["last_used_at"])) if row["last_used_at"] else "-"
        table.add_row(
            row["id"], row["name"], row["owner"], " ".join(row["scopes"]), " ".join(row["deployments"]),
            "yes" if row["active"] else "no", used,
        )  # fmt: skip
    Console().print(table)


@app.command("revoke")
def revoke(
    key_id: str = typer.Argument(..., help="The key's id (from `shipyard keys list`)."),
    url: str | None = _URL,
    local: bool = _LOCAL,
    config: Path | None = _CONFIG,
) -> None:
    """Revoke a key at once (other server processes stop accepting it within auth.cache_seconds)."""
    if local:
        store = open_store(config)
        try:
            row = store.auth.keys.get(key_id)
            if row is None:
                raise fail(f"no key {key_id}")
            if row["revoked_at"] is None:
                store.auth.keys.update(key_id, {"revoked_at": time.time()})
                after = store.auth.keys.get(key_id)
                AuditLog(store.auth.audit).record(
                    LOCAL_ACTOR, "key.revoke", f"key:{key_id}", key_summary(row), key_summary(after or row)
                )
        finally:
            store.close()
    else:
        api_request("POST", url, f"/api/v1/keys/{key_id}/revoke")
    typer.echo(f"revoked {key_id}")


@app.command("generate")
def generate() -> None:
    """Print a new random key, e.g. for SHIPYARD_ADMIN_KEY (nothing is stored)."""
    typer.echo(new_key())


@app.command("secrets-key")
def secrets_key() -> None:
    """Print a new encryption key for SHIPYARD_SECRETS_KEY (nothing is stored)."""
    typer.echo(SecretBox.generate_key())


@secrets_app.command("set")
def secret_set(
    name: str = typer.Argument(..., help="The secret's name."),
    url: str | None = _URL,
) -> None:
    """Store a secret, read from stdin (so it stays out of shell history and process lists)."""
    value = typer.get_text_stream("stdin").read().strip()
    if not value:
        raise fail("no value on stdin")
    api_request("PUT", url, f"/api/v1/secrets/{name}", json={"value": value})
    typer.echo(f"stored {name}")


@secrets_app.command("list")
def secret_list(url: str | None = _URL) -> None:
    """Names of stored secrets (values are never shown)."""
    for row in api_request("GET", url, "/api/v1/secrets")["data"]:
        typer.echo(row["name"])


@secrets_app.command("delete")
def secret_delete(name: str = typer.Argument(...), url: str | None = _URL) -> None:
    """Delete a stored secret."""
    api_request("DELETE", url, f"/api/v1/secrets/{name}")
    typer.echo(f"deleted {name}")
