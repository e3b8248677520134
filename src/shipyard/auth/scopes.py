"""Which scope a route needs, decided from the method and path alone (deny by default).

- PUBLIC: /healthz and /readyz (load balancers and orchestrators probe them without credentials).
- ANY_KEY: any valid key (the /v1 inference routes check the deployment afterwards, once the body names it).
- a scope string such as "prompts:read": the key must hold it (write implies read; admin implies all);
  "a+b" means both.
- anything not listed needs "admin": a route added without a thought about access is closed, not open.
"""

from __future__ import annotations

__all__ = ["ANY_KEY", "PUBLIC", "required_scope"]

PUBLIC = ""
ANY_KEY = "key"

_PUBLIC_PATHS = frozenset({"/healthz", "/readyz"})
_READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

# First segment under /api/v1/ -> the resource whose read/write scope it needs (None: admin only).
_API_RESOURCES: dict[str, str | None] = {
    "prompts": "prompts",
    "models": "models",
    "datasets": "datasets",
    "experiments": "experiments",
    "online-evals": "experiments",
    "traces": "traces",
    "spans": "traces",
    "calls": "traces",
    "deployments": "models",
    "engines": None,  # engine configs name hosts and headers: admin only
    "audit": None,
    "secrets": None,
}
# Routes that take a body but change nothing.
_READ_POSTS = (("/api/v1/prompts/", "/render"),)
# Routes that read one resource into another: they need the read scope of the source too, or a key could copy
# what it may not read into what it may.
_ALSO_NEEDS = (
    (("/api/v1/datasets/", "/from-traces"), "traces:read"),
    (("/api/v1/experiments/", "/run"), "datasets:read"),  # reads a dataset; its calls go through the gateway
)


def _mode(method: str, path: str) -> str:
    if method in _READ_METHODS:
        return "read"
    for prefix, suffix in _READ_POSTS:
        if path.startswith(prefix) and path.endswith(suffix):
            return "read"
    return "write"


def required_scope(method: str, path: str) -> str:
    """PUBLIC, ANY_KEY, or the scope a key must hold for this request."""
    if path in _PUBLIC_PATHS:
        return PUBLIC
    if path == "/v1/traces":
        return "traces:write"  # OTLP ingest
    if path == "/metrics":
        return "traces:read"
    if path.startswith("/v1/"):
        return ANY_KEY
    if path in ("/api/docs", "/api/openapi.json", "/api/docs/oauth2-redirect", "/api/redoc"):
        return ANY_KEY
    if path.startswith("/api/v1/"):
        segment = path[len("/api/v1/") :].split("/", 1)[0]
        if segment == "keys":
            return ANY_KEY  # the keys routes check the caller's rights themselves (own keys, no escalation)
        if segment in _API_RESOURCES:
            resource = _API_RESOURCES[segment]
            if resource is None:
                return "admin"
            need = f"{resource}:{_mode(method, path)}"
            for (prefix, suffix), also in _ALSO_NEEDS:
                if path.startswith(prefix) and path.endswith(suffix):
                    need += "+" + also
            return need
    return "admin"
