"""Settings of access control (`auth:` in shipyard.yaml) and of per-deployment rate limits and budgets.

Kept apart from shipyard.config so that config.py only imports the models; nothing here imports config.
"""

from __future__ import annotations

import ipaddress

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = ["AuthConfig", "RateLimitConfig"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RateLimitConfig(_Strict):
    """Requests, tokens and spend allowed per window; unset means unlimited. Exceeding one answers 429."""

    requests_per_minute: int | None = Field(None, ge=1, description="Most requests started in one minute.")
    tokens_per_minute: int | None = Field(None, ge=1, description="Most prompt+completion tokens in one minute.")
    budget_per_day: float | None = Field(None, ge=0, description="Most spend in US dollars per UTC day.")
    budget_per_month: float | None = Field(None, ge=0, description="Most spend in US dollars per UTC month.")

    def empty(self) -> bool:
        return all(v is None for v in self.model_dump().values())


class AuthConfig(_Strict):
    """API keys on every /v1 and /api route (health endpoints excepted); see docs/security.md."""

    enabled: bool = Field(
        True, description="Require `Authorization: Bearer <key>`. `off` is for local development only."
    )
    cache_seconds: float = Field(
        5.0, ge=0, description="How long a verified key is trusted before the store is read again (revocation lag)."
    )
    limits_sync_seconds: float = Field(
        0.5, gt=0, description="Seconds between writes of token and spend counters to the shared store."
    )
    lease_max: int = Field(
        256, ge=1, description="Most requests one process claims at once from a shared requests-per-minute counter."
    )
    secrets_refresh_seconds: float = Field(
        30.0,
        gt=0,
        description="Seconds between re-reads of the stored secrets engines use (`api_key_secret`), so a secret "
        "replaced by another process sharing the store reaches this one's engines.",
    )
    egress_allow: list[str] = Field(
        default_factory=list,
        description="Networks (CIDR) that server-side fetches of user-supplied URLs may reach despite being "
        "loopback, private or link-local.",
    )

    @field_validator("egress_allow")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for cidr in value:
            ipaddress.ip_network(cidr, strict=False)  # ValueError -> a clear config error
        return value
