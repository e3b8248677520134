"""Statistics for experiments: bootstrap confidence intervals and a paired significance test.

Both are seeded, so the same scores always give the same interval and p-value.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["Interval", "bootstrap_mean", "paired_permutation_test"]


@dataclass(frozen=True)
class Interval:
    mean: float
    low: float
    high: float
    n: int
    confidence: float

    def as_dict(self) -> dict[str, float | int]:
        return {"mean": self.mean, "low": self.low, "high": self.high, "n": self.n, "confidence": self.confidence}


def bootstrap_mean(
    values: Sequence[float], confidence: float = 0.95, resamples: int = 5000, seed: int = 0
) -> Interval | None:
    """The mean with a percentile bootstrap interval; None for no values."""
    data = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    if data.size == 0:
        return None
    mean = float(data.mean())
    if data.size == 1 or np.all(data == data[0]):
        return Interval(mean, mean, mean, int(data.size), confidence)
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, data.size, size=(resamples, data.size))].mean(axis=1)
    alpha = (1 - confidence) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    return Interval(mean, float(low), float(high), int(data.size), confidence)


def paired_permutation_test(a: Sequence[float], b: Sequence[float], resamples: int = 20000, seed: int = 0) -> float:
    """Two-sided p-value that paired scores `a` and `b` have the same mean (sign-flip permutation test on the
    differences; exact enumeration up to 16 pairs)."""
    if len(a) != len(b):
        raise ValueError("paired scores must have the same length")
    diffs = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    diffs = diffs[diffs != 0]
    if diffs.size == 0:
        return 1.0
    observed = abs(diffs.mean())
    exact = diffs.size <= 16
    if exact:  # every assignment of signs
        signs = ((np.arange(2**diffs.size)[:, None] >> np.arange(diffs.size)) & 1) * 2 - 1
    else:
        signs = np.random.default_rng(seed).choice([-1, 1], size=(resamples, diffs.size))
    extreme = int(np.sum(np.abs((signs * diffs).mean(axis=1)) >= observed - 1e-12))
    return extreme / len(signs) if exact else (extreme + 1) / (len(signs) + 1)
