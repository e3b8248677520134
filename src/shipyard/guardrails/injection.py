"""Prompt injection and jailbreak attempts, by weighted phrase patterns.

Each pattern is a known move of an injection (overriding earlier instructions, asking for the system
prompt, role-play without rules, fake role markers); a text scores the sum of the weights it matches
and is flagged at `threshold`. No offline classifier model ships with Shipyard's dependencies; the
patterns' precision and recall are measured in bench/guardrails_quality.py, and a team with such a model
can add it as a scanner of its own.
"""

from __future__ import annotations

import re
from typing import ClassVar

from shipyard.guardrails.base import Finding, Scanner, ScannerOptions

__all__ = ["InjectionScanner"]

_ANY = r"(?:\w+\s+){0,3}"
_PATTERNS: list[tuple[str, float, str]] = [
    ("override", 1.0, rf"\b(?:ignore|disregard|forget|skip|bypass|override)\s+{_ANY}(?:previous|prior|above|earlier|"
     rf"preceding|original|initial|system|your|all|any)\s+{_ANY}(?:instructions?|prompts?|rules|directions|guidelines|"
     rf"directives|context|constraints|programming)"),
    ("override", 0.8, r"\b(?:forget|ignore)\s+(?:everything|all)\s+(?:you(?:'ve| have)?\s+(?:been\s+)?(?:told|"
     r"learned|said)|above|before|so far)"),
    ("new_instructions", 0.6, r"\b(?:new|updated|real|actual|revised)\s+(?:instructions|rules|task|system prompt)\s*:"),
    ("system_prompt", 1.0, r"\b(?:reveal|show|print|repeat|output|display|leak|tell\s+me|give\s+me|what\s+(?:is|are|"
     r"was|were))\s+(?:me\s+)?(?:your|the|all\s+of\s+your|the\s+full|the\s+exact|the\s+hidden)\s+(?:\w+\s+)?"
     r"(?:system\s+prompt|system\s+message|initial\s+(?:prompt|instructions)|hidden\s+(?:prompt|instructions)|"
     r"instructions\s+(?:above|you\s+were\s+given)|pre-?prompt)"),
    ("system_prompt", 0.7, r"\b(?:words|text)\s+(?:above|before)\s+(?:this|the\s+first)"),
    ("persona", 1.0, r"\byou\s+are\s+(?:now\s+)?(?:DAN|STAN|DUDE|AIM|an?\s+(?:unrestricted|unfiltered|uncensored|"
     r"jailbroken|evil|amoral)\b)"),
    ("persona", 0.9, r"\b(?:do\s+anything\s+now|developer\s+mode|god\s+mode|jailbreak(?:ed|ing)?|DAN\s+mode)\b"),
    ("persona", 0.9, r"\b(?:pretend|act|behave|roleplay|role-play|imagine)\s+(?:\w+\s+){0,6}(?:no|without|free\s+of|"
     r"not\s+bound\s+by)\s+(?:any\s+)?(?:restrictions|rules|limits|limitations|filters|guidelines|ethics|"
     r"morals|censorship|content\s+polic(?:y|ies))"),
    ("persona", 0.5, r"\b(?:unfiltered|uncensored|unrestricted|no\s+longer\s+bound|without\s+(?:any\s+)?"
     r"(?:restrictions|limitations|filters|censorship))\b"),
    ("safety_off", 1.0, r"\b(?:disable|turn\s+off|deactivate|remove|override|bypass)\s+(?:\w+\s+){0,2}(?:safety|"
     r"content|moderation|ethical)\s+(?:filters?|guidelines|protocols|restrictions|checks|settings|mode)"),
    ("role_marker", 0.8, r"(?:<\|im_start\|>\s*system|<\|system\|>|\[/?INST\]|<<SYS>>|^\s*#{2,}\s*(?:system|"
     r"instruction)s?\s*:?\s*$|^\s*(?:system|assistant)\s*:\s)"),
    ("exfiltration", 1.0, r"!\[[^\]]*\]\(https?://[^)]*\{[^)]*\}"),
    ("exfiltration", 0.7, r"\b(?:send|post|upload|exfiltrate)\s+(?:\w+\s+){0,4}"
     r"(?:conversation|chat\s+history|secrets?|credentials|api\s+keys?)\s+to\s+(?:https?://|\S+@)"),
    ("override", 1.0, r"\b(?:ignore|disregard|forget)\s+(?:everything\s+|all\s+)?(?:the\s+)?(?:above|before|what\s+"
     r"you\s+were\s+told)\b"),
    ("override", 1.0, r"\b(?:previous|prior|earlier|original|above)\s+(?:instructions|rules|guidelines|directives|"
     r"constraints|system\s+message)\s+(?:are|were|is)\s+(?:cancelled|canceled|void|outdated|a\s+test|obsolete|"
     r"revoked)"),
    ("override", 1.0, r"\b(?:ignorier\w*|ignora\w*|ignore[rz]?|oublie\w*|olvida\w*|vergiss\w*)\s+(?:\w+\s+){0,3}"
     r"(?:anweisungen|instrucciones|instructions|istruzioni|consignes|regeln|reglas)"),
    ("system_prompt", 1.0, r"\b(?:repeat|print|output|quote|spell\s+out|paste)\s+(?:\w+\s+){0,4}(?:text|everything|"
     r"words)?\s*(?:above|before|at\s+the\s+(?:very\s+)?top)"),
    ("system_prompt", 1.0, r"\b(?:repeat|print|output|quote|translate|spell\s+out|summari[sz]e|paste)\s+(?:\w+\s+){0,3}"
     r"your\s+(?:instructions|system\s+(?:prompt|message)|configuration|hidden\s+prompt|rules)"),
    ("role_marker", 1.0, r"</?(?:system|user|assistant)>|^\s*#{0,3}\s*\[?SYSTEM\]?\s*(?:OVERRIDE|NOTE)?\s*:"),
    ("indirect", 1.0, r"\b(?:note|message|instruction)s?\s+(?:to|for)\s+(?:the\s+|any\s+)?(?:ai|assistant|bot|llm|"
     r"model|summari[sz]er)\b|\b(?:ai|assistant|bot)\s*(?:summari[sz]er)?\s*[,:]\s*(?:when|ignore|now|rate|forward|"
     r"include)"),
    ("obedience", 0.4, r"\b(?:from\s+now\s+on|for\s+the\s+rest\s+of\s+(?:this|the)\s+conversation)\b"),
    ("obedience", 0.4, r"\b(?:you\s+must|you\s+will)\s+(?:always\s+)?(?:comply|obey|answer\s+every)"),
]  # fmt: skip


class InjectionScanner(Scanner):
    """Flags text whose injection score reaches `threshold` (default 1.0). The findings are the matched phrases."""

    name: ClassVar[str] = "injection"

    class Options(ScannerOptions):
        threshold: float = 1.0

    options: Options

    def __init__(self, options: Options) -> None:
        super().__init__(options)
        self._patterns = [(kind, weight, re.compile(p, re.I | re.M)) for kind, weight, p in _PATTERNS]

    def scan(self, text: str) -> list[Finding]:
        hits: list[Finding] = []
        score = 0.0
        for kind, weight, pattern in self._patterns:
            match = pattern.search(text)
            if match is not None:
                score += weight
                hits.append(self.finding(kind, match.start(), match.end(), weight))
        if score < self.options.threshold:
            return []
        return sorted(hits, key=lambda f: f.start)
