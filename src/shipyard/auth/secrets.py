"""Provider secrets stored encrypted (Fernet) with a key taken from the environment, never from the store.

Values go in through the API or CLI and come out only to the server process; no route returns them.
"""

from __future__ import annotations

import os
import re

from cryptography.fernet import Fernet, InvalidToken

from shipyard.errors import ConfigError, InvalidRequest, ServiceUnavailable
from shipyard.store.auth import SecretRepo

__all__ = ["SECRETS_KEY_ENV", "SecretBox"]

SECRETS_KEY_ENV = "SHIPYARD_SECRETS_KEY"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class SecretBox:
    """Encrypts and decrypts provider secrets held in the store."""

    def __init__(self, repo: SecretRepo, key: str | None = None) -> None:
        self.repo = repo
        raw = key if key is not None else os.environ.get(SECRETS_KEY_ENV)
        self._fernet: Fernet | None = None
        if raw:
            try:
                self._fernet = Fernet(raw.encode())
            except ValueError:
                raise ConfigError(
                    f"{SECRETS_KEY_ENV} is not a Fernet key (32 url-safe base64-encoded bytes; "
                    "`shipyard keys secrets-key` prints a new one)"
                ) from None

    @staticmethod
    def generate_key() -> str:
        return Fernet.generate_key().decode()

    def _box(self) -> Fernet:
        if self._fernet is None:
            raise ServiceUnavailable(
                f"Stored secrets need {SECRETS_KEY_ENV} in the server's environment.", code="secrets_key_missing"
            )
        return self._fernet

    def put(self, name: str, value: str) -> bool:
        if not _NAME.match(name):
            raise InvalidRequest("A secret name is 1-64 letters, digits, '.', '_' or '-'.", param="name")
        if not value:
            raise InvalidRequest("The secret value is empty.", param="value")
        return self.repo.put(name, self._box().encrypt(value.encode()).decode())

    def get(self, name: str) -> str | None:
        """The plain value, for the server's own use (engine credentials); never for an API answer."""
        token = self.repo.get(name)
        if token is None:
            return None
        try:
            return self._box().decrypt(token.encode()).decode()
        except InvalidToken:
            raise ConfigError(f"secret {name!r} cannot be decrypted with the current {SECRETS_KEY_ENV}") from None
