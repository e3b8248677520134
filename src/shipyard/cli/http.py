"""What every CLI command that calls a running server shares: its address and the API key header.

`api_headers()` reads SHIPYARD_API_KEY from the environment (or takes an explicit key); every command that talks
to the server sends it, so turning auth on needs no change in the commands.
"""

from __future__ import annotations

import os
from typing import Any

import httpx
import typer
from rich.console import Console

__all__ = ["API_KEY_ENV", "URL_ENV", "api_headers", "api_request", "fail", "server_url"]

API_KEY_ENV = "SHIPYARD_API_KEY"
URL_ENV = "SHIPYARD_URL"


def server_url(url: str | None = None) -> str:
    return (url or os.environ.get(URL_ENV) or "http://127.0.0.1:8000").rstrip("/")


def api_headers(api_key: str | None = None) -> dict[str, str]:
    """`Authorization: Bearer <key>` from the argument or SHIPYARD_API_KEY; empty when neither is set."""
    key = api_key or os.environ.get(API_KEY_ENV)
    return {"authorization": f"Bearer {key}"} if key else {}


def fail(message: str) -> typer.Exit:
    Console(stderr=True).print(f"[red]error:[/red] {message}", markup=True, highlight=False)
    return typer.Exit(1)


def api_request(method: str, url: str, path: str, **kwargs: Any) -> Any:
    """Call the server's API with the key; a refusal becomes a clear CLI error (exit 1), never a traceback."""
    try:
        response = httpx.request(method, server_url(url) + path, headers=api_headers(), timeout=30, **kwargs)
    except httpx.HTTPError as exc:
        raise fail(f"cannot reach Shipyard at {server_url(url)}: {exc}") from None
    if response.status_code >= 400:
        try:
            message = response.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = response.text[:300]
        hint = f" (set {API_KEY_ENV})" if response.status_code == 401 else ""
        raise fail(f"HTTP {response.status_code}: {message}{hint}")
    return response.json()
