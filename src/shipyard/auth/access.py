"""Access control for one running server: the key check (one ASGI middleware for every route), the deployment
check and limits for the gateway's hot path, the audit log, the first-start admin key."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
from typing import Any

from shipyard.asgi import Message, Receive, Scope, Send, header, send_error
from shipyard.auth.audit import AuditLog
from shipyard.auth.keys import (
    ANONYMOUS,
    KEY_PATTERN,
    Authenticator,
    KeySpec,
    Principal,
    issue_key,
    key_summary,
    lookup_digest,
)
from shipyard.auth.limits import Limiter, Ticket
from shipyard.auth.scopes import ANY_KEY, PUBLIC, required_scope
from shipyard.auth.secrets import SecretBox
from shipyard.egress import EgressPolicy
from shipyard.errors import ApiError, ConfigError, PermissionDenied, ServiceUnavailable

__all__ = ["ADMIN_KEY_ENV", "Access", "AccessMiddleware", "bootstrap_admin"]

log = logging.getLogger("shipyard.auth")
ADMIN_KEY_ENV = "SHIPYARD_ADMIN_KEY"
PRINCIPAL = "shipyard.key"  # where the verified caller is kept in the ASGI scope
AUDITED = "shipyard.audited"  # set by routes that wrote a detailed audit row themselves
_READS = frozenset({"GET", "HEAD", "OPTIONS"})


class Access:
    """Built with the app; given the store at start."""

    def __init__(self, settings: Any) -> None:
        self.settings = settings
        self.enabled: bool = settings.auth.enabled
        self.keys: Authenticator | None = None
        self.limiter: Limiter | None = None
        self.audit: AuditLog | None = None
        self.secrets: SecretBox | None = None
        self.egress = EgressPolicy.from_cidrs(settings.auth.egress_allow)  # for every fetch of a user-supplied URL
        self._task: asyncio.Task[None] | None = None

    async def start(self, store: Any) -> None:
        auth = self.settings.auth
        self.keys = Authenticator(store.auth.keys, auth.cache_seconds)
        deployment_limits = {n: d.rate_limits for n, d in self.settings.deployments.items() if d.rate_limits}
        self.limiter = Limiter(
            store.auth.counters,
            deployment_limits,
            self.settings.tracing.prices,
            auth.limits_sync_seconds,
            auth.lease_max,
        )
        self.audit = AuditLog(store.auth.audit)
        self.secrets = SecretBox(store.auth.secrets)
        if self.enabled:
            created = await asyncio.to_thread(bootstrap_admin, store, self.audit, os.environ.get(ADMIN_KEY_ENV))
            if created:
                # Straight to the terminal, never through logging: shown this once, then only its hash exists.
                sys.stderr.write(
                    "\nShipyard created the first admin API key. It is shown only this once; keep it safe:\n\n"
                    f"    {created}\n\n(use it as SHIPYARD_API_KEY; `shipyard keys create` makes narrower keys)\n\n"
                )
                sys.stderr.flush()
        else:
            log.warning("auth is OFF (SHIPYARD_AUTH=off): every route is open to anyone who can reach this port")
        self._task = asyncio.create_task(self.limiter.run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.limiter is not None:
            await self.limiter.sync()  # the last interval's usage (a failure is logged; it is lost)

    async def authenticate(self, authorization: bytes | None) -> Principal:
        if not self.enabled:
            return ANONYMOUS
        if self.keys is None:
            raise ServiceUnavailable("The server is starting.", code="not_ready")
        return await self.keys.authenticate(authorization)

    async def admit(self, scope: Scope, deployment: str) -> tuple[Principal | None, Ticket | None]:
        """The gateway's check once the body named a deployment: scope, then limits. Cheap when none apply."""
        principal: Principal | None = scope.get(PRINCIPAL)
        if principal is not None and not principal.allows_deployment(deployment):
            raise PermissionDenied(
                f"This API key may not call deployment '{deployment}'.", param="model", code="deployment_not_allowed"
            )
        limiter = self.limiter
        if limiter is None or not limiter.needed(principal, deployment):
            return principal, None
        return principal, await limiter.admit(principal, deployment)

    def settle(self, ticket: Ticket, model: str | None, usage: dict[str, Any] | None) -> None:
        if self.limiter is not None:
            self.limiter.settle(ticket, model, usage)

    async def record(self, scope: Scope, action: str, target: str, before: Any = None, after: Any = None) -> None:
        """A detailed audit row for a control-plane change, written by the route that made it."""
        if self.audit is None:
            return
        await asyncio.to_thread(self.audit.record, actor_of(scope), action, target, before, after)
        scope[AUDITED] = True


def actor_of(scope: Scope) -> str:
    principal: Principal | None = scope.get(PRINCIPAL)
    if principal is None or principal.id is None:
        return "anonymous"
    return principal.id


class AccessMiddleware:
    """The one place every request's key is checked against the scope its route needs (shipyard.auth.scopes).

    Mutating /api requests that succeed and were not audited in detail by their route get a generic audit row
    (method, path, status; never the body)."""

    def __init__(self, app: Any, access: Access) -> None:
        self.app = app
        self.access = access

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        need = required_scope(scope["method"], scope["path"])
        if need == PUBLIC:
            await self.app(scope, receive, send)
            return
        try:
            principal = await self.access.authenticate(header(scope, b"authorization"))
            if need != ANY_KEY:
                for scope_name in need.split("+"):
                    if not principal.has(scope_name):
                        raise PermissionDenied(f"This API key lacks the '{scope_name}' scope.", code="missing_scope")
        except ApiError as error:
            await send_error(send, error)
            return
        except Exception:  # the store is down or broken: refuse (never let a request through unchecked)
            log.exception("the API key check failed")
            await send_error(send, ServiceUnavailable("The key store is unavailable; retry.", code="auth_unavailable"))
            return
        scope[PRINCIPAL] = principal
        if scope["method"] in _READS or not scope["path"].startswith("/api/"):
            await self.app(scope, receive, send)
            return
        await self._audited(scope, receive, send)

    async def _audited(self, scope: Scope, receive: Receive, send: Send) -> None:
        status = 0

        async def watch(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        await self.app(scope, receive, watch)
        if 200 <= status < 300 and not scope.get(AUDITED) and self.access.audit is not None:
            action = f"api.{scope['method'].lower()}"
            await asyncio.to_thread(
                self.access.audit.record, actor_of(scope), action, scope["path"], None, {"status": status}
            )


def bootstrap_admin(store: Any, audit: AuditLog, env_key: str | None) -> str | None:
    """Make sure an admin key exists: the one in SHIPYARD_ADMIN_KEY, or a new one when the store has no key at all.
    Returns a newly generated key (to print once), else None."""
    repo = store.auth.keys
    spec = KeySpec("admin", "admin", frozenset({"admin"}), ("*",))
    if env_key:
        if not KEY_PATTERN.match(env_key):
            raise ConfigError(
                f"{ADMIN_KEY_ENV} must be a Shipyard key (`sy-` and 43 URL-safe characters); "
                "`shipyard keys generate` prints one"
            )
        if repo.by_lookup(lookup_digest(env_key)) is None:
            _, row = issue_key(
                repo, KeySpec(f"admin ({ADMIN_KEY_ENV})", "admin", spec.scopes, spec.deployments), None, env_key
            )
            audit.record("bootstrap", "key.create", f"key:{row['id']}", None, key_summary(row))
        return None
    if repo.list():
        return None
    token, row = issue_key(repo, spec, None)
    audit.record("bootstrap", "key.create", f"key:{row['id']}", None, key_summary(row))
    return token
