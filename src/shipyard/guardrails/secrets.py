"""Secrets: provider API keys and tokens, private keys, credentials in assignments, high-entropy strings.

Provider formats are matched exactly (prefixes and lengths published by each provider). The entropy
check catches unknown token formats: a long run of token characters that mixes letters and digits and
whose Shannon entropy is near that of random base64 or hex; strings that are public by design (public keys,
certificates, digests, data URIs) and bare 32-64 digit hex (hashes, ids) are left alone. detect-secrets is a
library built for scanning files: its line scanner flags ordinary words as high-entropy strings without the
filters of its file scanner, and run the way its own tool runs (a file per text) it measured precision 0.87 and
recall 0.71 on Shipyard's labelled set, against 0.91 and 0.91 for these patterns (bench/guardrails_quality.py).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import ClassVar

from shipyard.guardrails.base import Finding, Scanner, ScannerOptions

__all__ = ["SecretsScanner", "shannon_entropy"]

# (kind, literals one of which any match contains, pattern): the literal check skips a pattern's pass over text
# that cannot match (measured: 18 passes over 10 KB took 8.6 ms; the literal checks 0.15 ms).
_PROVIDERS: list[tuple[str, tuple[str, ...], re.Pattern[str]]] = [
    ("private_key", ("PRIVATE KEY",),
     re.compile(r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----[\s\S]*?(?:-----END [A-Z0-9 ]*-----|\Z)")),
    ("aws_access_key", ("AKIA", "ASIA", "ABIA", "ACCA", "AROA", "AIDA"),
     re.compile(r"(?<![A-Z0-9])(?:AKIA|ASIA|ABIA|ACCA|AROA|AIDA)[A-Z0-9]{16}(?![A-Z0-9])")),
    ("github_token", ("gh", "github_pat_"),
     re.compile(r"(?<![\w])(?:gh[pousr]_[A-Za-z0-9]{36,251}|github_pat_[A-Za-z0-9_]{60,255})")),
    ("gitlab_token", ("glpat-",), re.compile(r"(?<![\w-])glpat-[A-Za-z0-9_-]{20,}")),
    ("anthropic_key", ("sk-ant-",), re.compile(r"(?<![\w-])sk-ant-(?:api|admin)\d{2}-[A-Za-z0-9_-]{80,}")),
    ("openai_key", ("T3BlbkFJ",),
     re.compile(r"(?<![\w-])sk-(?:proj-|svcacct-|admin-)?[A-Za-z0-9_-]{20,}T3BlbkFJ[A-Za-z0-9_-]{20,}")),
    ("openai_key", ("sk-proj-", "sk-svcacct-"), re.compile(r"(?<![\w-])sk-(?:proj-|svcacct-)[A-Za-z0-9_-]{40,}")),
    ("slack_token", ("xox",), re.compile(r"(?<![\w-])xox[abposr]-[0-9A-Za-z-]{10,}")),
    ("slack_webhook", ("hooks.slack.com",),
     re.compile(r"https://hooks\.slack\.com/services/T[A-Za-z0-9_]+/B[A-Za-z0-9_]+/[A-Za-z0-9_]+")),
    # Stripe's publishable keys (pk_) are meant to be public; secret (sk_) and restricted (rk_) keys are not.
    ("stripe_key", ("_live_", "_test_"), re.compile(r"(?<![\w])(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{20,}")),
    ("google_api_key", ("AIza",), re.compile(r"(?<![\w-])AIza[0-9A-Za-z_-]{35}(?![\w-])")),
    ("huggingface_token", ("hf_",), re.compile(r"(?<![\w])hf_[A-Za-z]{34}(?![\w])")),
    ("npm_token", ("npm_",), re.compile(r"(?<![\w])npm_[A-Za-z0-9]{36}(?![\w])")),
    ("pypi_token", ("pypi-",), re.compile(r"(?<![\w-])pypi-AgEIcHlwaS5vcmc[A-Za-z0-9_-]{50,}")),
    ("sendgrid_key", ("SG.",), re.compile(r"(?<![\w.])SG\.[A-Za-z0-9_-]{22}\.[A-Za-z0-9_-]{43}(?![\w-])")),
    ("twilio_key", ("SK",), re.compile(r"(?<![\w])SK[0-9a-f]{32}(?![\w])")),
    ("jwt", ("eyJ",), re.compile(r"(?<![\w-])eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{16,}")),
    ("url_credentials", ("://",), re.compile(r"(?<=://)[^\s:/@]{0,64}:[^\s:/@]{3,128}(?=@[\w.-]+)")),
]  # fmt: skip
_ASSIGNMENT = re.compile(
    r"(?i)(?<![a-z0-9])(?:[a-z0-9]+_)*(?:pg)?(?:password|passwd|pwd|secret(?:[_-]?(?:access[_-]?)?key)?|api[_-]?key"
    r"|access[_-]?token|auth[_-]?token|client[_-]?secret)(?:\s+(?:for|of)\s+(?:\w+\s+){0,3}?)?\s*(?:[:=]|\bis\b\s*:?)"
    r"\s*[\"']?([^\s\"',;]{8,128})"
)
_PLACEHOLDER = re.compile(r"^(?:\$\{?\w+\}?|%\w+%|\{\{.*\}\}|<[^>]*>|x{6,}|\*{6,})$", re.I)
# Long strings that are public by design: public keys, certificates, digests, data URIs, commit ids.
_PUBLIC = re.compile(
    r"(?:ssh-(?:rsa|ed25519|dss)|ecdsa-sha2-nistp\d+)\s+\S+|sha(?:1|256|384|512)[:-]\S+|data:[\w/+.-]+;base64,\S+"
    r"|-----BEGIN (?:PUBLIC KEY|CERTIFICATE|PGP PUBLIC KEY BLOCK)-----[\s\S]*?-----END [A-Z ]+-----"
    r"|\b(?:commit|cherry-pick|revert(?:ing)?|sha|etag|digest|md5|checksum)\b\W{0,3}[0-9a-f]{7,64}\b",
    re.I,
)
_KEY_WORD_BEFORE = re.compile(r"(?i)(?:key|token|secret|api|auth|password|credential)\W{0,20}$")
_TOKENISH = re.compile(r"(?<![A-Za-z0-9+/_=-])[A-Za-z0-9+/_=-]{24,512}(?![A-Za-z0-9+/_=-])")
_HEX = re.compile(r"(?<![0-9A-Fa-f])[0-9a-f]{32,128}(?![0-9A-Fa-f])|(?<![0-9A-Fa-f])[0-9A-F]{32,128}(?![0-9A-Fa-f])")


def shannon_entropy(text: str) -> float:
    """Bits per character."""
    if not text:
        return 0.0
    size = len(text)
    return -sum(n / size * math.log2(n / size) for n in Counter(text).values())


class SecretsScanner(Scanner):
    """Finds credentials. Options: `entropy` (also flag unknown high-entropy tokens, default on),
    `min_entropy` (bits per character for base64-like tokens, default 4.2)."""

    name: ClassVar[str] = "secrets"

    class Options(ScannerOptions):
        entropy: bool = True
        min_entropy: float = 4.2

    options: Options

    def scan(self, text: str) -> list[Finding]:
        found: list[Finding] = []
        for kind, literals, pattern in _PROVIDERS:
            if not any(literal in text for literal in literals):
                continue
            for match in pattern.finditer(text):
                if kind == "aws_access_key" and len(set(match.group()[4:])) <= 2:
                    continue  # AKIAXXXXXXXXXXXXXXXX: a placeholder in documentation
                found.append(self.finding(kind, match.start(), match.end()))
        for match in _ASSIGNMENT.finditer(text):
            value = match.group(1)
            if _PLACEHOLDER.match(value):
                continue  # ${DB_PASSWORD}, <your-key>, xxxxxxxx: a reference, not the secret
            if any(c.isdigit() for c in value) or any(c in "!@#$%^&*" for c in value) or len(value) >= 16:
                found.append(self.finding("credential", match.start(1), match.end(1)))
        if self.options.entropy:
            found.extend(self._high_entropy(text))
        return _drop_overlaps(found)

    def _high_entropy(self, text: str) -> list[Finding]:
        public = [(m.start(), m.end()) for m in _PUBLIC.finditer(text)]
        found = []
        for match in _TOKENISH.finditer(text):
            token = match.group()
            if not (any(c.isdigit() for c in token) and any(c.islower() for c in token)):
                continue
            if not any(c.isupper() for c in token) or token.count("-") + token.count("_") > len(token) // 6:
                continue  # hyphenated or snake_case words and identifiers, not keys
            if token.count("/") >= 2 and not token.endswith("="):
                continue  # a path or a model id such as org/name/file
            if shannon_entropy(token) >= self.options.min_entropy and not _inside(match, public):
                found.append(self.finding("high_entropy", match.start(), match.end(), 0.8))
        for match in _HEX.finditer(text):
            if len(match.group()) <= 64 and not _KEY_WORD_BEFORE.search(
                text[max(0, match.start() - 40) : match.start()]
            ):
                continue  # 32-64 hex digits with no key word before them: a hash or an id, most of the time
            if shannon_entropy(match.group()) >= 3.0 and not _inside(match, public):
                found.append(self.finding("high_entropy", match.start(), match.end(), 0.8))
        return found


def _inside(match: re.Match[str], spans: list[tuple[int, int]]) -> bool:
    return any(start <= match.start() and match.end() <= end for start, end in spans)


def _drop_overlaps(found: list[Finding]) -> list[Finding]:
    """Keep the first finding over any stretch of text (provider kinds come before generic ones)."""
    kept: list[Finding] = []
    for finding in found:
        if all(finding.end <= k.start or finding.start >= k.end for k in kept):
            kept.append(finding)
    kept.sort(key=lambda f: f.start)
    return kept
