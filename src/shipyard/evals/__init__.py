"""Evaluation: scorers (built-in and your own), experiments over registry datasets, probes, online rules."""

from typing import Any

from shipyard.evals.base import FunctionScorer, Score, Scorer, ScorerOptions, build_scorer, scorer_classes

__all__ = [
    "FunctionScorer",
    "Interval",
    "Score",
    "Scorer",
    "ScorerOptions",
    "bootstrap_mean",
    "build_scorer",
    "paired_permutation_test",
    "scorer_classes",
]

_STATS = ("Interval", "bootstrap_mean", "paired_permutation_test")


def __getattr__(name: str) -> Any:  # the statistics pull in numpy: import them only when asked for
    if name in _STATS:
        from shipyard.evals import stats

        return getattr(stats, name)
    raise AttributeError(name)
