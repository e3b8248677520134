"""Deployments at run time: weighted targets, cooling after 429, ejection after repeated failures.

Only the deployment decides where a request goes. Ejection never takes out every target of a
deployment: when all are ejected, they are all tried again (Envoy's panic mode).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

from shipyard.config import DeploymentConfig, EjectionConfig
from shipyard.engines.base import Engine
from shipyard.guardrails.policy import Policy

__all__ = ["DeploymentRuntime", "Router", "TargetState"]


@dataclass(eq=False)
class TargetState:
    engine: Engine
    fixed_model: str | None  # the target's `model`; None: whatever the engine serves now (it may swap versions)
    weight: float
    failures: int = 0  # consecutive
    ejections: int = 0
    ejected_until: float = 0.0
    cooled_until: float = 0.0

    @property
    def model(self) -> str:
        """The model name sent upstream, read per attempt (two attribute reads, no store access)."""
        return self.fixed_model or self.engine.served_model

    @property
    def label(self) -> str:
        return f"{self.engine.name}/{self.model}"

    def ejected(self, now: float) -> bool:
        return now < self.ejected_until

    def cooling(self, now: float) -> bool:
        return now < self.cooled_until

    def usable(self, now: float) -> bool:
        return self.engine.healthy and not self.ejected(now) and not self.cooling(now)

    def succeeded(self) -> None:
        """An answer proves the target works: forget its failures (and end an ejection it was tried in)."""
        self.failures = 0
        self.ejections = 0
        self.ejected_until = 0.0

    def failed(self, now: float, policy: EjectionConfig) -> bool:
        """Count a failure; return True if the target was ejected by it."""
        self.failures += 1
        if self.failures < policy.consecutive_failures:
            return False
        seconds = min(policy.base_seconds * (2**self.ejections), policy.max_seconds)
        self.ejections += 1
        self.failures = 0
        self.ejected_until = now + seconds
        return True

    def cool(self, now: float, seconds: float) -> None:
        self.cooled_until = max(self.cooled_until, now + seconds)


class DeploymentRuntime:
    def __init__(self, name: str, config: DeploymentConfig, targets: list[TargetState]) -> None:
        self.name = name
        self.config = config
        self.targets = targets
        self.policy = Policy(config.guardrails) if config.guardrails and config.guardrails.rules else None
        self._random = random.Random()

    def pick(self, now: float, tried: set[TargetState]) -> TargetState | None:
        """A target for the next attempt, preferring ones not tried yet in this request."""
        usable = [t for t in self.targets if t.usable(now)]
        if not usable:
            # Never eject a whole deployment: if only ejection stands in the way, use them all.
            usable = [t for t in self.targets if t.engine.healthy and not t.cooling(now)]
        if not usable:
            return None
        fresh = [t for t in usable if t not in tried]
        pool = fresh or usable
        if len(pool) == 1:
            return pool[0]
        return self._random.choices(pool, weights=[t.weight for t in pool])[0]

    def next_cool_end(self, now: float) -> float | None:
        """When the first cooling (429) target becomes usable again, if any is cooling."""
        ends = [t.cooled_until for t in self.targets if t.cooling(now) and t.engine.healthy]
        return min(ends) if ends else None

    def ready(self, now: float) -> bool:
        return any(t.engine.healthy for t in self.targets)


class Router:
    def __init__(
        self, engines: dict[str, Engine], deployments: dict[str, DeploymentConfig], ejection: EjectionConfig
    ) -> None:
        self.engines = engines
        self.ejection = ejection
        self.deployments: dict[str, DeploymentRuntime] = {}
        for name, dep in deployments.items():
            targets = [TargetState(engines[t.engine], t.model or None, t.weight) for t in dep.targets]
            self.deployments[name] = DeploymentRuntime(name, dep, targets)

    def get(self, name: str) -> DeploymentRuntime | None:
        return self.deployments.get(name)

    def chain(self, first: DeploymentRuntime) -> list[DeploymentRuntime]:
        """The deployment followed by its fallbacks (and theirs), each once."""
        order: list[DeploymentRuntime] = []
        pending = [first]
        while pending:
            dep = pending.pop(0)
            if dep in order:
                continue
            order.append(dep)
            pending.extend(self.deployments[f] for f in dep.config.fallbacks)
        return order

    @staticmethod
    def now() -> float:
        return time.monotonic()
