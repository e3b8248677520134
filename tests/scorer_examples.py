"""A custom scorer as a plain function, named by module path in tests (tests.scorer_examples:starts_with_yes)."""

from __future__ import annotations


def starts_with_yes(output: str, expected: object, row: dict) -> bool:
    return output.strip().lower().startswith("yes")


def input_names_mary(output: str, expected: object, row: dict) -> float:
    """Scores by the input, not the output: a stand-in for a model that treats one group differently."""
    return 1.0 if "Mary" in str(row.get("input")) else 0.0
