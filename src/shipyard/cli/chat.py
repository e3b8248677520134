"""`shipyard chat DEPLOYMENT`: an interactive terminal chat that streams tokens."""

from __future__ import annotations

import os
import sys

import httpx
import orjson
import typer
from rich.console import Console

from shipyard.cli.http import api_headers

console = Console(stderr=True)
HELP = "Type a message and press Enter. /reset forgets the conversation, /exit (or Ctrl-D) quits."


def _stream(client: httpx.Client, url: str, body: dict) -> str:
    """Send one turn, print tokens as they arrive, return the whole answer."""
    parts: list[str] = []
    with client.stream("POST", url, json=body) as response:
        if response.status_code != 200:
            response.read()
            raise RuntimeError(_error_text(response.content, response.status_code))
        for line in response.iter_lines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                break
            event = orjson.loads(data)
            if "error" in event:
                raise RuntimeError(event["error"].get("message", "stream failed"))
            for choice in event.get("choices", []):
                text = (choice.get("delta") or {}).get("content") or ""
                if text:
                    parts.append(text)
                    sys.stdout.write(text)
                    sys.stdout.flush()
    sys.stdout.write("\n")
    sys.stdout.flush()
    return "".join(parts)


def _error_text(content: bytes, status: int) -> str:
    try:
        return f"HTTP {status}: {orjson.loads(content)['error']['message']}"
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return f"HTTP {status}: {content[:200].decode(errors='replace')}"


def chat(
    deployment: str = typer.Argument(..., help="Deployment to talk to (see GET /v1/models)."),
    url: str = typer.Option(
        os.environ.get("SHIPYARD_URL", "http://127.0.0.1:8000"),
        help="Shipyard's address (env: SHIPYARD_URL).",
    ),
    system: str | None = typer.Option(None, help="A system message to start the conversation with."),
    max_tokens: int = typer.Option(512, help="Most tokens per answer."),
    temperature: float | None = typer.Option(None, help="Sampling temperature (default: the engine's)."),
    api_key: str | None = typer.Option(
        os.environ.get("SHIPYARD_API_KEY"),
        help="API key, if the server requires one (env: SHIPYARD_API_KEY).",
    ),
) -> None:
    """Chat with a deployment in the terminal; answers stream token by token."""
    endpoint = url.rstrip("/") + "/v1/chat/completions"
    headers = api_headers(api_key)
    history: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
    console.print(f"[dim]Chatting with [bold]{deployment}[/bold] at {url}. {HELP}[/dim]")
    with httpx.Client(timeout=httpx.Timeout(600.0, connect=5.0), headers=headers) as client:
        while True:
            try:
                line = input("you> " if sys.stdin.isatty() else "")
            except (EOFError, KeyboardInterrupt):
                break
            text = line.strip()
            if not text:
                continue
            if text in ("/exit", "/quit"):
                break
            if text == "/reset":
                history = history[:1] if system else []
                console.print("[dim](conversation reset)[/dim]")
                continue
            history.append({"role": "user", "content": text})
            body: dict = {"model": deployment, "messages": history, "stream": True, "max_tokens": max_tokens}
            if temperature is not None:
                body["temperature"] = temperature
            try:
                answer = _stream(client, endpoint, body)
            except (RuntimeError, httpx.HTTPError) as exc:
                history.pop()
                console.print(f"[red]error: {exc}[/red]")
                if isinstance(exc, httpx.ConnectError):
                    raise typer.Exit(1) from None
                continue
            except KeyboardInterrupt:
                history.pop()
                console.print("\n[dim](interrupted)[/dim]")
                continue
            history.append({"role": "assistant", "content": answer})
