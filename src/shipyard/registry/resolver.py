"""Where the gateway meets the prompt registry: look a reference up (briefly cached) and render it into a request.

Called once per request from the gateway's routes, before the wire checks. A request without `prompt` or
`variables`, to a deployment without a bound prompt, returns at once without touching the store.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any

from shipyard.errors import InvalidRequest, NotFound
from shipyard.registry.prompts import PromptRef, apply_to_request, parse_ref
from shipyard.store.registry import PromptRepo

__all__ = ["PromptResolver", "lookup"]


def lookup(repo: PromptRepo, ref: PromptRef) -> dict[str, Any]:
    """The stored version a reference names, or NotFound naming what is missing."""
    if ref.version is not None:
        found = repo.get_version(ref.name, ref.version)
    else:
        found = repo.resolve_label(ref.name, ref.label or "latest")
    if found is None:
        raise NotFound(f"No prompt version for '{ref}'.", param="prompt", code="prompt_not_found")
    return found


class PromptResolver:
    """Resolves references for the gateway. Label lookups are cached for `ttl` seconds; the control-plane API
    calls `invalidate` after every change it makes, so moves through this server apply to the next request."""

    def __init__(self, repo: PromptRepo, ttl: float = 2.0) -> None:
        self.repo = repo
        self.ttl = ttl
        self._cache: dict[PromptRef, tuple[float, dict[str, Any]]] = {}

    def invalidate(self, name: str | None = None) -> None:
        if name is None:
            self._cache.clear()
        else:
            for key in [k for k in self._cache if k.name == name]:
                del self._cache[key]

    async def resolve(self, ref: PromptRef) -> dict[str, Any]:
        now = time.monotonic()
        hit = self._cache.get(ref)
        if hit is not None and hit[0] > now:
            return hit[1]
        version = await asyncio.to_thread(lookup, self.repo, ref)
        if len(self._cache) > 1024:
            self._cache.clear()
        self._cache[ref] = (now + self.ttl, version)
        return version

    async def prepare(
        self, body: dict[str, Any], endpoint: str, bound: str | None
    ) -> tuple[dict[str, Any], str | None]:
        """The body to check and send, and the prompt version used ("name:3"), if any."""
        asked = body.get("prompt") if endpoint == "chat.completions" else None
        if asked is None and bound is None:
            if "variables" in body:
                raise InvalidRequest(
                    "'variables' was given but no prompt: name one with 'prompt' or bind one to the deployment.",
                    param="variables",
                )
            return body, None
        ref = parse_ref(asked if asked is not None else bound)  # type: ignore[arg-type]
        variables = body.get("variables", {})
        if not isinstance(variables, Mapping):
            raise InvalidRequest("'variables' must be an object.", param="variables", code="invalid_type")
        version = await self.resolve(ref)
        rest = {k: v for k, v in body.items() if k != "variables" and not (k == "prompt" and asked is not None)}
        return apply_to_request(rest, endpoint, version, variables), f"{version['name']}:{version['version']}"
