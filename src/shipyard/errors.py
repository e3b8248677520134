"""Shipyard's one error tree.

Errors are split by audience. API callers see `ApiError`s, rendered as OpenAI-shaped JSON by
`error_body` (the only place that shape is written). Operators see `ConfigError` and `EngineError`
in logs and CLI messages. Programmers see the exception classes themselves.

    ShipyardError
    ├── ConfigError                 bad shipyard.yaml, environment or flags (operator)
    ├── StoreError                  the database cannot be opened or migrated (operator)
    ├── EngineError                 an engine process cannot be started or converted (operator)
    └── ApiError                    anything a caller can receive (status, type, code, param)
        ├── InvalidRequest          400  the request is malformed or asks for something refused
        ├── AuthenticationError     401
        ├── PermissionDenied        403
        ├── NotFound                404  unknown deployment, route or resource
        ├── PayloadTooLarge         413
        ├── RateLimited             429  (carries retry_after)
        ├── ServerError             500  a bug: never expected, always logged
        ├── UpstreamError           502  the engine answered with garbage or failed
        ├── ServiceUnavailable      503  no healthy target, or the server is draining
        └── UpstreamTimeout         504  the engine did not answer within the deadline
"""

from __future__ import annotations

from typing import Any

import orjson

__all__ = [
    "ApiError",
    "AuthenticationError",
    "ConfigError",
    "EngineError",
    "InvalidRequest",
    "NotFound",
    "PayloadTooLarge",
    "PermissionDenied",
    "RateLimited",
    "ServerError",
    "ServiceUnavailable",
    "ShipyardError",
    "StoreError",
    "UpstreamError",
    "UpstreamTimeout",
    "error_body",
]


class ShipyardError(Exception):
    """Base of every error Shipyard raises on purpose."""


class ConfigError(ShipyardError):
    """The configuration (file, environment, flags) is invalid."""


class StoreError(ShipyardError):
    """The metadata store cannot be opened or migrated."""


class EngineError(ShipyardError):
    """An engine cannot be prepared, started or reached."""


class ApiError(ShipyardError):
    """An error meant for the API caller, rendered in the OpenAI error shape."""

    status: int = 500
    type: str = "server_error"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        status: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.param = param
        if status is not None:
            self.status = status
        self.headers = headers or {}

    def body(self) -> bytes:
        return error_body(self.message, self.type, code=self.code, param=self.param)


class InvalidRequest(ApiError):
    status = 400
    type = "invalid_request_error"


class AuthenticationError(ApiError):
    status = 401
    type = "authentication_error"


class PermissionDenied(ApiError):
    status = 403
    type = "permission_error"


class NotFound(ApiError):
    status = 404
    type = "not_found_error"


class PayloadTooLarge(ApiError):
    status = 413
    type = "invalid_request_error"


class RateLimited(ApiError):
    status = 429
    type = "rate_limit_error"

    def __init__(self, message: str, *, retry_after: float | None = None, code: str | None = None) -> None:
        headers = {"retry-after": str(max(1, round(retry_after)))} if retry_after is not None else {}
        super().__init__(message, code=code, headers=headers)
        self.retry_after = retry_after


class ServerError(ApiError):
    status = 500
    type = "server_error"


class UpstreamError(ApiError):
    status = 502
    type = "upstream_error"


class ServiceUnavailable(ApiError):
    status = 503
    type = "service_unavailable"


class UpstreamTimeout(ApiError):
    status = 504
    type = "timeout_error"


def error_body(message: str, type_: str, *, code: str | None = None, param: str | None = None) -> bytes:
    """The OpenAI error JSON: {"error": {"message", "type", "param", "code"}}."""
    payload: dict[str, Any] = {"message": message, "type": type_, "param": param, "code": code}
    return orjson.dumps({"error": payload})
