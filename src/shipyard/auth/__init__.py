"""Access control (issue 6): API keys and scopes (keys, scopes), the check on every route (access), rate limits
and budgets (limits), the audit log (audit), stored provider secrets (secrets).

Only the settings models are imported here: shipyard.config imports them, and the rest imports shipyard.config.
"""

from shipyard.auth.settings import AuthConfig, RateLimitConfig

__all__ = ["AuthConfig", "RateLimitConfig"]
