"""Engine API keys taken from the encrypted secret store (`api_key_secret: <name>` on an `openai` engine).

The server resolves every referenced secret when it starts, before it listens: a missing secret, a missing
`SHIPYARD_SECRETS_KEY` or one that cannot decrypt the secret stops the start with an error naming the engine
and the secret (never the value). When a secret is replaced through `PUT /api/v1/secrets/{name}` (or
`shipyard secrets set`), the process that answered the call re-reads it and its engines use the new value from
the next request on, without a restart. Every process also re-reads its engines' secrets every
`auth.secrets_refresh_seconds` on a worker thread, so other processes sharing the store follow within that time.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Mapping

from sqlalchemy.exc import SQLAlchemyError

from shipyard.auth.secrets import SECRETS_KEY_ENV, SecretBox
from shipyard.engines.base import Engine
from shipyard.errors import ConfigError, ServiceUnavailable, ShipyardError

__all__ = ["EngineSecrets", "resolve_engine_secrets"]

log = logging.getLogger("shipyard.engines")


class EngineSecrets:
    """Which engines use which stored secret, and puts the decrypted values into their auth headers."""

    def __init__(self, engines: Mapping[str, Engine], box: SecretBox) -> None:
        self.box = box
        self._values: dict[str, str] = {}  # the value each secret had when last read, to notice a change
        self.users: dict[str, list[Engine]] = {}
        for engine in engines.values():
            name = engine.key_secret
            if name:
                self.users.setdefault(name, []).append(engine)

    def _value(self, name: str, engines: list[Engine]) -> str:
        who = ", ".join(repr(e.name) for e in engines)
        missing_key = ConfigError(f"engine {who}: api_key_secret {name!r} needs {SECRETS_KEY_ENV} in the environment")
        if not os.environ.get(SECRETS_KEY_ENV):
            raise missing_key
        try:
            value = self.box.get(name)
        except ServiceUnavailable:
            raise missing_key from None
        except ConfigError as exc:
            raise ConfigError(f"engine {who}: {exc}") from None
        if value is None:
            raise ConfigError(
                f"engine {who}: api_key_secret {name!r} is not in the secret store (`shipyard secrets set {name}`)"
            )
        return value

    def _use(self, name: str, engines: list[Engine], value: str) -> bool:
        if self._values.get(name) == value:
            return False
        self._values[name] = value
        for engine in engines:
            engine.set_api_key(value)
        return True

    def resolve_all(self) -> None:
        """Read every referenced secret (blocking: call it off the event loop or before serving)."""
        for name, engines in self.users.items():
            self._use(name, engines, self._value(name, engines))

    def refresh(self, name: str) -> int:
        """After a secret changed: give its engines the new value; returns how many engines took it."""
        engines = self.users.get(name)
        if not engines or not self._use(name, engines, self._value(name, engines)):
            return 0
        log.info("engine(s) %s now use the replaced secret %r", ", ".join(e.name for e in engines), name)
        return len(engines)

    def reload(self) -> int:
        """Re-read every referenced secret; a problem with one is logged and its engines keep their key."""
        changed = 0
        for name in self.users:
            try:
                changed += self.refresh(name)
            except (ShipyardError, SQLAlchemyError) as exc:
                log.warning("could not re-read secret %r (its engines keep their current key): %s", name, exc)
        return changed

    async def run(self, interval: float) -> None:
        """Re-read the secrets every `interval` seconds, off the event loop, until cancelled."""
        while True:
            await asyncio.sleep(interval)
            await asyncio.to_thread(self.reload)


def resolve_engine_secrets(engines: Mapping[str, Engine], box: SecretBox) -> EngineSecrets:
    """Resolve every engine's stored key now (blocking); a problem is a ConfigError naming engine and secret."""
    resolved = EngineSecrets(engines, box)
    resolved.resolve_all()
    return resolved
