"""API keys: the credential format, how it is stored, who holds which scopes, and the verified-key cache.

A key is `sy-` followed by 43 URL-safe characters (256 random bits). The store keeps, per key, a lookup digest
(SHA-256 of the whole key, to find the row) and HMAC-SHA256 of the key under a per-key random salt (to verify it);
never the key or any part of it. The cache of verified keys is keyed by that SHA-256 of the WHOLE credential,
so two credentials sharing a prefix can never share an entry (LiteLLM CVE-2026-35030).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import re
import secrets
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from shipyard.auth.settings import RateLimitConfig
from shipyard.errors import AuthenticationError, InvalidRequest, PermissionDenied
from shipyard.store.auth import KeyRepo

__all__ = [
    "ANONYMOUS",
    "Authenticator",
    "KEY_PATTERN",
    "KeySpec",
    "Principal",
    "RESOURCES",
    "SCOPES",
    "check_grant",
    "hash_key",
    "issue_key",
    "lookup_digest",
    "new_key",
    "key_summary",
    "principal_of",
    "public_key_row",
]

RESOURCES = ("prompts", "models", "datasets", "experiments", "traces")
SCOPES = frozenset({"admin", "keys:write"} | {f"{r}:{m}" for r in RESOURCES for m in ("read", "write")})
KEY_PATTERN = re.compile(r"^sy-[A-Za-z0-9_-]{43}$")
_CACHE_MAX = 10_000
_TOUCH_EVERY = 60.0  # seconds between last_used_at writes for one key


def new_key() -> str:
    return "sy-" + secrets.token_urlsafe(32)


def lookup_digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def hash_key(key: str, salt: str) -> str:
    return hmac.new(bytes.fromhex(salt), key.encode(), hashlib.sha256).hexdigest()


@dataclass(frozen=True, slots=True)
class Principal:
    """The holder of a verified key (or the anonymous admin when auth is off)."""

    id: str | None
    name: str
    owner: str
    scopes: frozenset[str]
    deployments: tuple[str, ...]  # ("*",) for every deployment
    limits: RateLimitConfig | None = None
    expires_at: float | None = None
    created_by: str | None = None

    @property
    def admin(self) -> bool:
        return "admin" in self.scopes

    def has(self, scope: str) -> bool:
        if self.admin or scope in self.scopes:
            return True
        resource, _, mode = scope.partition(":")
        return mode == "read" and f"{resource}:write" in self.scopes

    def allows_deployment(self, name: str) -> bool:
        return self.admin or "*" in self.deployments or name in self.deployments


ANONYMOUS = Principal(None, "anonymous", "auth disabled", frozenset({"admin"}), ("*",))


@dataclass(frozen=True, slots=True)
class KeySpec:
    """What a new key (or an update of one) asks for."""

    name: str
    owner: str
    scopes: frozenset[str] = frozenset()
    deployments: tuple[str, ...] = ()
    limits: RateLimitConfig | None = None
    expires_at: float | None = None

    def __post_init__(self) -> None:
        unknown = sorted(set(self.scopes) - SCOPES)
        if unknown:
            raise InvalidRequest(
                f"Unknown scope(s): {', '.join(unknown)}. Known: {', '.join(sorted(SCOPES))}.",
                param="scopes",
                code="invalid_scope",
            )


def _limit_ok(mine: float | None, theirs: float | None) -> bool:
    return mine is None or (theirs is not None and theirs <= mine)


def check_grant(creator: Principal, spec: KeySpec) -> None:
    """Refuse a key (or an update) that would hold more than its creator: scopes, deployments, limits, expiry."""
    if creator.admin:
        return
    if "admin" in spec.scopes:
        raise PermissionDenied("Only an admin key can grant 'admin'.", param="scopes", code="scope_escalation")
    extra = sorted(s for s in spec.scopes if not creator.has(s))
    if extra:
        raise PermissionDenied(
            f"Your key lacks {', '.join(extra)}; a key can only grant scopes its creator holds.",
            param="scopes",
            code="scope_escalation",
        )
    if "*" not in creator.deployments:
        wider = sorted(d for d in spec.deployments if d not in creator.deployments)
        if wider:
            raise PermissionDenied(
                f"Your key may not call {', '.join(wider)}; it cannot grant them.",
                param="deployments",
                code="scope_escalation",
            )
    if creator.limits is not None:
        theirs = spec.limits or RateLimitConfig()
        for name, mine in creator.limits.model_dump().items():
            if not _limit_ok(mine, getattr(theirs, name)):
                raise PermissionDenied(
                    f"The new key's {name} must be set and at most yours ({mine}).",
                    param=f"limits.{name}",
                    code="limit_escalation",
                )
    if creator.expires_at is not None and (spec.expires_at is None or spec.expires_at > creator.expires_at):
        raise PermissionDenied(
            "The new key must expire no later than yours.", param="expires_at", code="expiry_escalation"
        )


def issue_key(repo: KeyRepo, spec: KeySpec, creator: Principal | None, token: str | None = None) -> tuple[str, dict]:
    """Create a key within its creator's rights; return (the key, shown once; its stored row)."""
    if creator is not None:
        check_grant(creator, spec)
    token = token or new_key()
    salt = secrets.token_hex(16)
    row = {
        "id": uuid.uuid4().hex,
        "name": spec.name,
        "owner": spec.owner,
        "created_by": creator.id if creator is not None else None,
        "lookup": lookup_digest(token),
        "salt": salt,
        "digest": hash_key(token, salt),
        "scopes": sorted(spec.scopes),
        "deployments": list(spec.deployments),
        "limits": spec.limits.model_dump(exclude_none=True) if spec.limits and not spec.limits.empty() else None,
        "created_at": time.time(),
        "expires_at": spec.expires_at,
        "revoked_at": None,
        "last_used_at": None,
    }
    repo.add(row)
    return token, row


def public_key_row(row: dict[str, Any]) -> dict[str, Any]:
    """A key as the API and CLI show it: never the lookup digest, salt or HMAC."""
    hidden = {"lookup", "salt", "digest"}
    out = {k: v for k, v in row.items() if k not in hidden}
    now = time.time()
    out["active"] = row["revoked_at"] is None and (row["expires_at"] is None or row["expires_at"] > now)
    return out


def key_summary(row: dict[str, Any]) -> dict[str, Any]:
    """The fields of a key that the audit log records (no digest, salt or lookup)."""
    fields = ("id", "name", "owner", "created_by", "scopes", "deployments", "limits", "expires_at", "revoked_at")
    return {k: row.get(k) for k in fields}


def principal_of(row: dict[str, Any]) -> Principal:
    limits = RateLimitConfig(**row["limits"]) if row.get("limits") else None
    return Principal(
        id=row["id"],
        name=row["name"],
        owner=row["owner"],
        scopes=frozenset(row["scopes"]),
        deployments=tuple(row["deployments"]),
        limits=limits,
        expires_at=row["expires_at"],
        created_by=row["created_by"],
    )


@dataclass(slots=True)
class _Entry:
    principal: Principal | None  # None: the row is revoked or missing
    problem: str
    fetched: float
    expires_at: float | None


@dataclass
class Authenticator:
    """Turns an Authorization header into a Principal; verified keys are cached for `cache_seconds`."""

    repo: KeyRepo
    cache_seconds: float = 5.0
    _cache: dict[str, _Entry] = field(default_factory=dict)
    _touched: dict[str, float] = field(default_factory=dict)

    async def authenticate(self, authorization: bytes | None) -> Principal:
        token = _bearer(authorization)
        lookup = lookup_digest(token)
        now = time.monotonic()
        entry = self._cache.get(lookup)
        if entry is None or now - entry.fetched > self.cache_seconds:
            entry = await asyncio.to_thread(self._load, token, lookup, now)
            if len(self._cache) >= _CACHE_MAX:
                self._cache.clear()
            self._cache[lookup] = entry
        if entry.principal is None:
            raise AuthenticationError(entry.problem, code="invalid_api_key")
        if entry.expires_at is not None and entry.expires_at <= time.time():
            raise AuthenticationError("The API key has expired.", code="expired_api_key")
        return entry.principal

    def forget(self, key_id: str) -> None:
        """Drop a key from this process's cache at once (after revocation or an update)."""
        for lookup, entry in list(self._cache.items()):
            if entry.principal is not None and entry.principal.id == key_id:
                del self._cache[lookup]

    def _load(self, token: str, lookup: str, now: float) -> _Entry:
        row = self.repo.by_lookup(lookup)
        if row is None or not hmac.compare_digest(row["digest"], hash_key(token, row["salt"])):
            return _Entry(None, "Invalid API key.", now, None)
        if row["revoked_at"] is not None:
            return _Entry(None, "The API key has been revoked.", now, None)
        wall = time.time()
        if wall - self._touched.get(row["id"], 0.0) > _TOUCH_EVERY:
            self._touched[row["id"]] = wall
            self.repo.touch(row["id"], wall)
        return _Entry(principal_of(row), "", now, row["expires_at"])


def _bearer(authorization: bytes | None) -> str:
    if not authorization:
        raise AuthenticationError("Missing API key: send 'Authorization: Bearer <key>'.", code="missing_api_key")
    scheme, _, token = authorization.partition(b" ")
    token_text = token.strip().decode("latin-1")
    # Anything not shaped like a Shipyard key is refused here, before any lookup (SQL payloads included).
    if scheme.lower() != b"bearer" or not KEY_PATTERN.match(token_text):
        raise AuthenticationError("Invalid API key.", code="invalid_api_key")
    return token_text
