"""Toxicity: insults, slurs, profanity and threats.

Words come from the word list that ships with the maintained `better-profanity` package (read once,
with common letter substitutions undone: `@`→a, `0`→o, `$`→s, ...); threats and harassment aimed at a
person are phrase patterns. A word-list scanner misses toxicity phrased in ordinary words and can flag
quoted or clinical use; its precision and recall are measured in bench/guardrails_quality.py.
"""

from __future__ import annotations

import functools
import re
from importlib import resources
from typing import ClassVar

from shipyard.guardrails.base import Finding, Scanner, ScannerOptions

__all__ = ["ToxicityScanner"]

_LEET = str.maketrans({"@": "a", "4": "a", "0": "o", "1": "i", "!": "i", "3": "e", "$": "s", "5": "s", "7": "t"})
_WORD = re.compile(r"[A-Za-z@$!0-9*.]+(?:['’][a-z]+)?")
_SPELLED = re.compile(r"(?:[a-z]\.){2,}[a-z]?")  # f.u.c.k
_REPEATS = re.compile(r"(.)\1{2,}")  # fuuuuck
_THREATS = re.compile(
    r"\b(?:i(?:'m| am)?\s*(?:going\s+to|gonna|will|'ll)\s+(?:kill|murder|hurt|stab|shoot|beat|rape|destroy)\s+"
    r"(?:you|u|him|her|them|your)|(?:kill|hang|shoot)\s+yourself|kys\b|go\s+(?:die|to\s+hell)|you\s+(?:should|"
    r"deserve\s+to)\s+(?:die|be\s+(?:killed|shot|raped))|(?:i\s+hope|hope)\s+(?:you|u)\s+(?:die|get\s+(?:cancer|"
    r"killed|raped|shot))|you(?:'re|\s+are)\s+(?:a\s+)?(?:worthless|pathetic|disgusting|subhuman|waste\s+of\s+"
    r"(?:space|air|oxygen))|nobody\s+(?:loves|likes|wants)\s+you|shut\s+(?:the\s+f\w*\s+)?up,?\s+you)",
    re.I,
)  # fmt: skip
# Words of the list that are mild or mostly anatomical/clinical in ordinary text: not flagged on their own.
_ALLOWED = frozenset({
    "hell", "damn", "god", "sexy", "sex", "kill", "drunk", "weed", "breast", "breasts", "nude", "dick", "dyke",
    "anal", "rectal", "penis", "tit", "tits", "homo", "sperm", "cum", "pussy", "horny", "crap", "bastard", "bitch",
})  # fmt: skip


@functools.cache
def _words() -> frozenset[str]:
    text = resources.files("better_profanity").joinpath("profanity_wordlist.txt").read_text(encoding="utf-8")
    return frozenset(w.strip().lower() for w in text.splitlines() if w.strip() and w.strip().lower() not in _ALLOWED)


def _listed(token: str, words: frozenset[str]) -> bool:
    """Whether a token is a listed word once disguises are undone: dots, repeated letters, digits for letters,
    and `*` standing for one to three letters."""
    word = token.lower().strip(".")
    if _SPELLED.fullmatch(word):
        word = word.replace(".", "")
    elif "." in word:
        return False
    if word in words:
        return True
    if not word.isalpha() and word.translate(_LEET) in words:
        return True
    if _REPEATS.search(word) and _REPEATS.sub(r"\1", word) in words:
        return True
    if "*" in word and word.strip("*"):
        pattern = re.compile("^" + re.escape(word).replace(r"\*", "[a-z]{1,3}") + "$")
        return any(pattern.match(w) for w in words if len(word) - 2 <= len(w) <= len(word) + 4)
    return False


class ToxicityScanner(Scanner):
    """Flags insults, slurs, profanity and threats. Options: `threats_only` (ignore mere profanity)."""

    name: ClassVar[str] = "toxicity"

    class Options(ScannerOptions):
        threats_only: bool = False

    options: Options

    def scan(self, text: str) -> list[Finding]:
        found = [self.finding("threat", m.start(), m.end()) for m in _THREATS.finditer(text)]
        if not self.options.threats_only:
            words = _words()
            for match in _WORD.finditer(text):
                if _listed(match.group(), words):
                    found.append(self.finding("profanity", match.start(), match.end(), 0.7))
        found.sort(key=lambda f: f.start)
        return found
