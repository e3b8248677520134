"""Safety: load goes only where the user points it, and never beyond the configured caps unless asked.

There is no default target other than the local gateway (http://127.0.0.1:8000/v1); redirects are never
followed (the generator sends with allow_redirects=False), so a target cannot bounce the load elsewhere.
"""

from __future__ import annotations

import math
import re

from shipyard.config import LoadtestConfig
from shipyard.errors import ConfigError
from shipyard.loadtest.runner import RunPlan

__all__ = ["DEFAULT_TARGET", "check_limits", "normalise_target"]

DEFAULT_TARGET = "http://127.0.0.1:8000"
_URL = re.compile(r"^https?://[^/\s?#]+(/[^\s?#]*)?$")


def normalise_target(url: str) -> str:
    """The OpenAI base URL: `http://host:port` gains `/v1`; a URL with a path is kept as given."""
    url = url.strip().rstrip("/")
    if not _URL.match(url):
        raise ConfigError(f"target {url!r} is not an http:// or https:// URL")
    scheme_host, _, path = url.partition("://")[2].partition("/")
    return url if path else url + "/v1"


def check_limits(
    plan: RunPlan, workers: int, caps: LoadtestConfig, override: bool, sweep_limit: float | None = None
) -> None:
    """Raise ConfigError naming the cap a plan exceeds (and how to lift it), unless `override`."""
    if workers < 1:
        raise ConfigError("--workers must be at least 1")
    if override:
        return
    hint = "raise loadtest.{key} in shipyard.yaml or pass --override-limits"
    shape = plan.shape
    peak = max(shape.peak_rate or 0.0, sweep_limit or 0.0)
    if peak > caps.max_rate:
        raise ConfigError(
            f"a rate of {peak:g} req/s exceeds the safety cap of {caps.max_rate:g} req/s; "
            + hint.format(key="max_rate")
        )
    if shape.concurrency and shape.concurrency > caps.max_concurrency:
        raise ConfigError(
            f"a concurrency of {shape.concurrency} exceeds the safety cap of {caps.max_concurrency}; "
            + hint.format(key="max_concurrency")
        )
    if plan.max_in_flight > caps.max_concurrency:
        raise ConfigError(
            f"an in-flight cap of {plan.max_in_flight} exceeds loadtest.max_concurrency ({caps.max_concurrency}); "
            + hint.format(key="max_concurrency")
        )
    total = plan.warmup + plan.duration if plan.duration is not None else math.inf
    if math.isinf(total) and shape.open_loop and shape.peak_rate:
        total = plan.warmup + (plan.requests or 0) / shape.peak_rate
    if not math.isinf(total) and total > caps.max_duration:
        raise ConfigError(
            f"a run of {total:g} s (warm-up included) exceeds the safety cap of {caps.max_duration:g} s; "
            + hint.format(key="max_duration")
        )
    if workers > caps.max_workers:
        raise ConfigError(
            f"{workers} generator processes exceed the safety cap of {caps.max_workers}; "
            + hint.format(key="max_workers")
        )
