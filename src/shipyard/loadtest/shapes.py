"""Load shapes: how many requests are in flight (closed loop) or when each one is sent (open loop).

Open-loop arrivals are absolute offsets from the start of the run, computed in advance from the shape and
a seed, so a slow server can never slow them down: the generator sends each request at its time (or
records how late it was). Every generator process computes the same schedule and takes every Nth
arrival, so N processes together send exactly the schedule one process would.

Constant and Poisson arrivals, and the ramp, are one construction: unit-rate event times (0, 1, 2, ...
for constant; cumulative exponential gaps for Poisson) mapped through the inverse of the cumulative rate.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

__all__ = ["LoadShape", "arrival_times", "split_concurrency"]

ShapeKind = Literal["concurrency", "constant", "poisson", "ramp"]


@dataclass(frozen=True)
class LoadShape:
    """`concurrency`: N requests always in flight. `constant`/`poisson`: `rate` requests per second.
    `ramp`: the rate grows linearly from `rate` to `rate_to` over the whole run (warm-up included), with
    `arrivals` spacing (constant or Poisson)."""

    kind: ShapeKind
    concurrency: int | None = None
    rate: float | None = None
    rate_to: float | None = None
    arrivals: Literal["constant", "poisson"] = "poisson"

    def __post_init__(self) -> None:
        if self.kind == "concurrency":
            if not self.concurrency or self.concurrency < 1:
                raise ValueError("a closed-loop load needs a concurrency of at least 1")
        elif (self.rate is None or self.rate <= 0) and not (
            self.kind == "ramp" and self.rate == 0 and (self.rate_to or 0) > 0
        ):
            raise ValueError(f"a {self.kind} load needs a rate above 0 requests/s")
        if self.kind == "ramp" and (self.rate_to is None or self.rate_to <= 0):
            raise ValueError("a ramp needs a final rate above 0 requests/s")

    @property
    def open_loop(self) -> bool:
        return self.kind != "concurrency"

    @property
    def peak_rate(self) -> float | None:
        if self.kind == "ramp":
            return max(self.rate or 0.0, self.rate_to or 0.0)
        return self.rate

    def describe(self) -> str:
        if self.kind == "concurrency":
            return f"concurrency {self.concurrency}"
        if self.kind == "ramp":
            return f"ramp {self.rate:g}→{self.rate_to:g} req/s ({self.arrivals})"
        return f"{self.kind} {self.rate:g} req/s"


def _inverse_cumulative(shape: LoadShape, horizon: float) -> tuple[float, float]:
    """(a, b) of the cumulative rate Λ(t) = a t² + b t."""
    start = float(shape.rate or 0.0)
    if shape.kind != "ramp":
        return 0.0, start
    if not horizon or math.isinf(horizon):
        raise ValueError("a ramp needs a duration")
    return (float(shape.rate_to or 0.0) - start) / (2 * horizon), start


def arrival_times(
    shape: LoadShape,
    horizon: float,
    seed: int,
    count: int | None = None,
    worker: int = 0,
    workers: int = 1,
) -> Iterator[tuple[int, float]]:
    """(global index, offset in seconds) of each arrival before `horizon`, at most `count` of them in all,
    keeping those whose index ≡ `worker` (mod `workers`)."""
    if not shape.open_loop:
        raise ValueError("a closed-loop shape has no arrival times")
    a, b = _inverse_cumulative(shape, horizon)
    rng = random.Random(seed)
    poisson = shape.kind == "poisson" or (shape.kind == "ramp" and shape.arrivals == "poisson")
    unit = 0.0
    index = 0
    while count is None or index < count:
        if poisson:
            unit += rng.expovariate(1.0)
        elif index:
            unit += 1.0
        offset = unit / b if a == 0.0 else (-b + math.sqrt(b * b + 4 * a * unit)) / (2 * a)
        if offset >= horizon:
            return
        if index % workers == worker:
            yield index, offset
        index += 1


def split_concurrency(total: int, workers: int) -> list[int]:
    """Share `total` in-flight requests among generator processes (the first ones take the remainder)."""
    base, extra = divmod(total, workers)
    return [base + (1 if w < extra else 0) for w in range(workers)]
