"""Evaluation scorers and statistics: each built-in scorer on cases it must pass and fail, the judge against a
scripted OpenAI-compatible server (the fake upstream, standing in for a hosted judge model), the embedding
scorer with the real bundled MiniLM model, and the bootstrap and permutation statistics against known answers."""

from __future__ import annotations

import asyncio
import random

import numpy as np
import pytest

from shipyard.errors import ConfigError
from shipyard.evals import Score, bootstrap_mean, build_scorer, paired_permutation_test, scorer_classes
from shipyard.evals.judge import parse_verdict
from tests.helpers import FakeUpstreamProcess


def _value(name: str, output: str, expected: object = None, row: dict | None = None, **options: object) -> float | None:
    return build_scorer(name, options).score(output, expected, row or {}).value


def test_every_built_in_scorer_is_registered() -> None:
    assert set(scorer_classes()) >= {
        "exact_match", "contains", "regex", "edit_similarity", "rouge_l", "bleu", "length",
        "json_valid", "json_schema", "numeric", "embedding_similarity", "judge",
    }  # fmt: skip


def test_exact_match_normalisation() -> None:
    assert _value("exact_match", "  Paris \n", "paris") == 1.0
    assert _value("exact_match", "Paris", "paris", case_sensitive=True) == 0.0
    assert _value("exact_match", "Paris.", "Paris") == 0.0
    assert _value("exact_match", "Paris.", "Paris", strict_punctuation=False) == 1.0
    assert _value("exact_match", "Lyon", ["Paris", "Lyon"]) == 1.0
    assert build_scorer("exact_match").score("x", None, {}).value is None


def test_contains_and_regex() -> None:
    assert _value("contains", "The capital is Paris.", "paris") == 1.0
    assert _value("contains", "Paris and Rome", substrings=["paris", "berlin"]) == 0.0
    assert _value("contains", "Paris and Rome", substrings=["paris", "berlin"], any=True) == 1.0
    assert _value("regex", "Order #12345 shipped", pattern=r"#\d{5}\b") == 1.0
    assert _value("regex", "Order #1234 shipped", pattern=r"#\d{5}\b") == 0.0
    assert _value("regex", " yes ", pattern="yes|no", fullmatch=True) == 1.0
    with pytest.raises(ConfigError, match="does not compile"):
        build_scorer("regex", {"pattern": "("})


def test_similarity_scorers_order_answers_sensibly() -> None:
    close, far = "The quick brown fox jumps over the lazy dog", "Completely unrelated sentence here"
    reference = "The quick brown fox jumped over the lazy dog"
    for name in ("edit_similarity", "rouge_l", "bleu"):
        good, bad = _value(name, close, reference), _value(name, far, reference)
        assert good is not None and bad is not None and 0 <= bad < good <= 1, name
    assert _value("rouge_l", reference, reference) == pytest.approx(1.0)
    assert _value("bleu", reference, reference) == pytest.approx(1.0)
    assert _value("edit_similarity", "abc", "abd") == pytest.approx(2 / 3)


def test_json_and_numeric_scorers() -> None:
    assert _value("json_valid", '```json\n{"a": 1}\n```') == 1.0
    assert _value("json_valid", "{a: 1}") == 0.0
    schema = {"type": "object", "required": ["answer"], "properties": {"answer": {"type": "integer"}}}
    assert _value("json_schema", '{"answer": 4}', schema=schema) == 1.0
    failed = build_scorer("json_schema", {"schema": schema}).score('{"answer": "four"}', None, {})
    assert failed.value == 0.0 and "answer" in (failed.reason or "")
    assert _value("numeric", "It costs $1,250.00 in total", "1250") == 1.0
    assert _value("numeric", "about 3.15", 3.14159, abs_tol=0.01) == 1.0
    assert _value("numeric", "about 3.2", 3.14159, abs_tol=0.01) == 0.0
    assert _value("numeric", "no idea", 3) == 0.0
    assert build_scorer("numeric").score("3", "three", {}).value is None


def test_length_scorer() -> None:
    assert _value("length", "one two three", max_words=3) == 1.0
    assert _value("length", "one two three four", max_words=3) == 0.0
    assert _value("length", "hi", min_chars=3) == 0.0


def test_bad_scorer_configuration_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="unknown scorer 'nope'"):
        build_scorer("nope")
    with pytest.raises(ConfigError, match="colour"):
        build_scorer("exact_match", {"colour": "red"})
    with pytest.raises(ConfigError, match="only accepted in suites run from the CLI"):
        build_scorer("os:system")
    with pytest.raises(ConfigError, match="cannot be imported"):
        build_scorer("no_such_module_xyz:f", allow_module_path=True)


def test_a_plain_function_is_a_scorer_by_module_path() -> None:
    scorer = build_scorer("tests.scorer_examples:starts_with_yes", allow_module_path=True)
    assert scorer.score("Yes, of course", None, {}).value == 1.0
    assert asyncio.run(scorer.ascore("No", None, {})).value == 0.0


def test_parse_verdict() -> None:
    assert parse_verdict('{"score": 7, "reason": "mostly right"}', 10) == Score(0.7, "mostly right", {"raw": 7.0})
    assert parse_verdict('Sure! {"score": "3"} done', 5).value == pytest.approx(0.6)
    assert parse_verdict("Score: 9/10 because it is good", 10).value == pytest.approx(0.9)
    assert parse_verdict("I think it is fine", 10).value is None
    assert parse_verdict('{"score": 42}', 10).value is None


def test_the_judge_asks_a_deployment_and_reads_its_verdict(fake_upstream: FakeUpstreamProcess) -> None:
    fake_upstream.script({"text": '{"score": 8, "reason": "correct but terse"}'}, {"text": "no idea"})
    judge = build_scorer("judge", {"deployment": "grader", "base_url": fake_upstream.url, "scale": 10})
    row = {"input": [{"role": "user", "content": "What is 2+2?"}]}
    score = asyncio.run(judge.ascore("4", "4", row))
    assert score.value == pytest.approx(0.8) and score.reason == "correct but terse"
    sent = fake_upstream.stats()["last_body"]
    assert sent["model"] == "grader" and sent["temperature"] == 0
    assert "What is 2+2?" in sent["messages"][1]["content"] and "Answer to judge:\n4" in sent["messages"][1]["content"]
    unscored = asyncio.run(judge.ascore("4", None, row))
    assert unscored.value is None and "no score" in (unscored.reason or "")


def test_embedding_similarity_with_the_bundled_model() -> None:
    scorer = build_scorer("embedding_similarity")
    same = scorer.score("The cat sat on the mat.", "A cat was sitting on the mat.", {}).value
    other = scorer.score("Interest rates rose again in March.", "A cat was sitting on the mat.", {}).value
    assert same is not None and other is not None and same > 0.8 and other < 0.3


def test_bootstrap_interval_covers_the_true_mean_about_95_percent_of_the_time() -> None:
    rng = random.Random(3)
    covered = 0
    for trial in range(200):
        sample = [float(rng.random() < 0.7) for _ in range(60)]
        interval = bootstrap_mean(sample, resamples=2000, seed=trial)
        assert interval is not None and interval.low <= interval.mean <= interval.high
        covered += interval.low <= 0.7 <= interval.high
    assert 180 <= covered <= 197  # ~95% of 200; seeded, so this is the same every run
    assert bootstrap_mean([]) is None
    assert bootstrap_mean([0.5, 0.5]).as_dict()["low"] == 0.5


def test_paired_permutation_test() -> None:
    assert paired_permutation_test([1.0] * 8, [0.0] * 8) == pytest.approx(2 / 256)  # exact: all 8 signs agree
    assert paired_permutation_test([1, 0, 1, 0], [0, 1, 0, 1]) == 1.0
    assert paired_permutation_test([0.5] * 5, [0.5] * 5) == 1.0
    rng = np.random.default_rng(1)
    base = rng.random(100)
    assert paired_permutation_test(base + 0.1, base) < 0.001
    assert paired_permutation_test(base + rng.normal(0, 0.1, 100), base) > 0.05
    with pytest.raises(ValueError):
        paired_permutation_test([1], [1, 2])


def test_the_guide_suite_and_gates_are_valid() -> None:
    import re
    from pathlib import Path

    import yaml

    from shipyard.evals.suite import Suite, parse_gate

    guide = (Path(__file__).resolve().parent.parent / "docs" / "evaluation.md").read_text()
    suite = Suite.model_validate(yaml.safe_load(re.search(r"```yaml\n(.*?)```", guide, re.S).group(1)))
    assert [s.key for s in suite.scorers] == ["exact_match", "contains", "judge", "citations"]
    assert suite.dataset_ref() == ("faq", None) and suite.target.prompt == "support-bot@production"
    for gate in re.findall(r'--gate "([^"]+)"', guide):
        parse_gate(gate)
