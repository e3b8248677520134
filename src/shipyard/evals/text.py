"""Scorers that compare text: exact match, contains, regex, edit distance, ROUGE-L, BLEU, and length.

ROUGE-L comes from Google's `rouge-score`, BLEU from `sacrebleu`, edit distance from `rapidfuzz`:
maintained implementations, not hand-written ones.
"""

from __future__ import annotations

import functools
import re
import string
import unicodedata
from collections.abc import Mapping
from typing import Any, ClassVar

from pydantic import Field, model_validator

from shipyard.evals.base import Score, Scorer, ScorerOptions

__all__ = [
    "BleuScorer",
    "ContainsScorer",
    "EditSimilarityScorer",
    "ExactMatchScorer",
    "LengthScorer",
    "RegexScorer",
    "RougeLScorer",
    "normalise",
]

_PUNCTUATION = str.maketrans("", "", string.punctuation)


def normalise(text: str, *, case: bool, whitespace: bool, punctuation: bool, unicode: bool = True) -> str:
    if unicode:
        text = unicodedata.normalize("NFKC", text)
    if not case:
        text = text.casefold()
    if not punctuation:
        text = text.translate(_PUNCTUATION)
    if not whitespace:
        text = " ".join(text.split())
    return text


class _TextOptions(ScorerOptions):
    case_sensitive: bool = False
    strict_whitespace: bool = False  # False: surrounding whitespace ignored, inner runs collapsed
    strict_punctuation: bool = True  # False: punctuation removed before comparing


class _TextScorer(Scorer):
    options: _TextOptions

    def norm(self, text: str) -> str:
        o = self.options
        return normalise(text, case=o.case_sensitive, whitespace=o.strict_whitespace, punctuation=o.strict_punctuation)


def _expected_texts(expected: Any) -> list[str]:
    """An expected answer, or a list of acceptable ones."""
    if isinstance(expected, list):
        return [str(e) for e in expected]
    return [] if expected is None else [str(expected)]


class ExactMatchScorer(_TextScorer):
    """1 if the output equals the expected answer (or one of a list) after normalisation, else 0."""

    name: ClassVar[str] = "exact_match"
    Options = _TextOptions

    def score(self, output: str, expected: Any, row: Mapping[str, Any]) -> Score:
        wanted = _expected_texts(expected)
        if not wanted:
            return Score(None, "the row has no expected answer")
        got = self.norm(output)
        return Score(float(any(got == self.norm(w) for w in wanted)))


class ContainsScorer(_TextScorer):
    """1 if the output contains the given `substrings` (all of them, or `any`), or else the expected answer."""

    name: ClassVar[str] = "contains"
    needs_expected: ClassVar[bool] = False

    class Options(_TextOptions):
        substrings: list[str] = Field(default_factory=list)
        any: bool = False

    options: Options

    def score(self, output: str, expected: Any, row: Mapping[str, Any]) -> Score:
        wanted = self.options.substrings or _expected_texts(expected)
        if not wanted:
            return Score(None, "no substrings given and the row has no expected answer")
        got = self.norm(output)
        hits = [self.norm(w) in got for w in wanted]
        return Score(float(any(hits) if self.options.any else all(hits)))


class RegexScorer(Scorer):
    """1 if `pattern` matches somewhere in the output (`fullmatch`: the whole output)."""

    name: ClassVar[str] = "regex"
    needs_expected: ClassVar[bool] = False

    class Options(ScorerOptions):
        pattern: str
        fullmatch: bool = False
        ignore_case: bool = False

        @model_validator(mode="after")
        def _compiles(self) -> RegexScorer.Options:
            try:
                re.compile(self.pattern)
            except re.error as exc:
                raise ValueError(f"pattern does not compile: {exc}") from None
            return self

    options: Options

    def __init__(self, options: Options) -> None:
        super().__init__(options)
        self._pattern = re.compile(options.pattern, re.I if options.ignore_case else 0)

    def score(self, output: str, expected: Any, row: Mapping[str, Any]) -> Score:
        match = self._pattern.fullmatch(output.strip()) if self.options.fullmatch else self._pattern.search(output)
        return Score(float(match is not None))


class EditSimilarityScorer(_TextScorer):
    """1 − normalised Levenshtein distance to the expected answer (best over a list), after normalisation."""

    name: ClassVar[str] = "edit_similarity"
    Options = _TextOptions

    def score(self, output: str, expected: Any, row: Mapping[str, Any]) -> Score:
        from rapidfuzz.distance import Levenshtein

        wanted = _expected_texts(expected)
        if not wanted:
            return Score(None, "the row has no expected answer")
        got = self.norm(output)
        return Score(max(Levenshtein.normalized_similarity(got, self.norm(w)) for w in wanted))


@functools.cache
def _rouge() -> Any:
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


class RougeLScorer(Scorer):
    """ROUGE-L F-measure against the expected answer (best over a list), with stemming."""

    name: ClassVar[str] = "rouge_l"

    def score(self, output: str, expected: Any, row: Mapping[str, Any]) -> Score:
        wanted = _expected_texts(expected)
        if not wanted:
            return Score(None, "the row has no expected answer")
        return Score(max(_rouge().score(w, output)["rougeL"].fmeasure for w in wanted))


class BleuScorer(Scorer):
    """Sentence BLEU (sacrebleu, smoothed by exponential decay) against the expected answer(s), scaled to [0, 1]."""

    name: ClassVar[str] = "bleu"

    def score(self, output: str, expected: Any, row: Mapping[str, Any]) -> Score:
        import sacrebleu

        wanted = _expected_texts(expected)
        if not wanted:
            return Score(None, "the row has no expected answer")
        return Score(min(1.0, sacrebleu.sentence_bleu(output, wanted).score / 100.0))


class LengthScorer(Scorer):
    """1 if the output's length is within [`min_chars`, `max_chars`] (and words within [`min_words`, `max_words`])."""

    name: ClassVar[str] = "length"
    needs_expected: ClassVar[bool] = False

    class Options(ScorerOptions):
        min_chars: int = Field(0, ge=0)
        max_chars: int | None = Field(None, ge=0)
        min_words: int = Field(0, ge=0)
        max_words: int | None = Field(None, ge=0)

    options: Options

    def score(self, output: str, expected: Any, row: Mapping[str, Any]) -> Score:
        o = self.options
        chars, words = len(output), len(output.split())
        ok = o.min_chars <= chars and (o.max_chars is None or chars <= o.max_chars)
        ok = ok and o.min_words <= words and (o.max_words is None or words <= o.max_words)
        return Score(float(ok), details={"chars": chars, "words": words})
