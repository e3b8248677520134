"""Personal data: emails, phone numbers, payment cards (Luhn), IBANs (mod 97), IP addresses, national ids.

Patterns find candidates; checksums and parsers confirm them, which keeps precision high on ordinary text
(order numbers, dates, versions). Person names need a named-entity model, and none ships offline with
Shipyard's dependencies, so they are not detected (see docs/guardrails.md).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterator
from typing import ClassVar, Literal

from pydantic import Field

from shipyard.guardrails.base import Finding, Scanner, ScannerOptions

__all__ = ["PiiScanner", "iban_valid", "luhn_valid"]

Entity = Literal["email", "phone", "credit_card", "iban", "ip_address", "us_ssn", "uk_nino"]
Check = Callable[[str, int, str], bool]  # (text, start, candidate) -> confirmed
ALL_ENTITIES: tuple[Entity, ...] = ("email", "phone", "credit_card", "iban", "ip_address", "us_ssn", "uk_nino")

# IBAN lengths by country (ISO 13616 registry), for the countries most often seen.
_IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AT": 20, "BE": 16, "BG": 22, "BH": 22, "BR": 29, "CH": 21, "CY": 28, "CZ": 24,
    "DE": 22, "DK": 18, "EE": 20, "ES": 24, "FI": 18, "FR": 27, "GB": 22, "GI": 23, "GR": 27, "HR": 21,
    "HU": 28, "IE": 22, "IL": 23, "IS": 26, "IT": 27, "KW": 30, "KZ": 20, "LB": 28, "LI": 21, "LT": 20,
    "LU": 20, "LV": 21, "MC": 27, "MT": 31, "NL": 18, "NO": 15, "PK": 24, "PL": 28, "PT": 25, "QA": 29,
    "RO": 24, "RS": 22, "SA": 24, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "TR": 26, "UA": 29,
}  # fmt: skip

_EMAIL = re.compile(r"(?<![\w.+-])[A-Za-z0-9][A-Za-z0-9._%+-]{0,63}@(?:[A-Za-z0-9-]{1,63}\.)+[A-Za-z]{2,24}\b")
_PHONE = re.compile(
    r"(?<![\w+#.-])(?:\+\d{1,3}[ .-]?)?(?:\(\d{1,4}\)[ .-]?)?\d{2,5}(?:[ .-]\d{2,8}){1,4}(?![\w-])"
    r"|(?<![\w+])\+\d{8,14}(?!\w)"
)
_YEARS = re.compile(r"^(?:19|20)\d\d[-/](?:19|20)\d\d$")
_NOT_A_PHONE_BEFORE = re.compile(r"(?i)(?:order|sku|part|ref|reference|ticket|invoice|code|no\.?|number|#)\s*[:#]?\s*$")
_VERSION_BEFORE = re.compile(r"(?i)(?:version|firmware|build|v)\s*$")
_CARD = re.compile(r"(?<![\d-])(?:\d[ -]?){12,18}\d(?![\d-])")
_IBAN = re.compile(r"\b[A-Za-z]{2}\d{2}(?: ?[A-Za-z0-9]{4}){2,7}(?: ?[A-Za-z0-9]{1,3})?\b")
_IPV4 = re.compile(r"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?![\d.])")
_IPV6 = re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:])")
_SSN = re.compile(r"\b(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}\b")
_NINO = re.compile(r"\b(?!BG|GB|NK|KN|TN|NT|ZZ)[A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z] ?\d{2} ?\d{2} ?\d{2} ?[A-D]\b")
_DATE_LIKE = re.compile(r"^\d{1,4}[-./]\d{1,2}[-./]\d{1,4}$")


def luhn_valid(digits: str) -> bool:
    """The Luhn checksum of a string of digits."""
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = ord(char) - 48
        if position % 2 == 1:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return total % 10 == 0


def iban_valid(candidate: str) -> bool:
    """Country length and the ISO 7064 mod-97 check of an IBAN (spaces allowed)."""
    iban = candidate.replace(" ", "").upper()
    if _IBAN_LENGTHS.get(iban[:2]) != len(iban):
        return False
    moved = iban[4:] + iban[:4]
    number = "".join(str(int(c, 36)) for c in moved)
    return int(number) % 97 == 1


def _card_brand_ok(digits: str) -> bool:
    if not 13 <= len(digits) <= 19:
        return False
    first2 = int(digits[:2])
    return (
        digits[0] == "4"
        or 51 <= first2 <= 55
        or 2221 <= int(digits[:4]) <= 2720
        or first2 in (34, 37, 36, 38, 30, 35, 62)
        or digits.startswith(("6011", "65", "64"))
    )


def _phone_ok(text: str, start: int, match: str) -> bool:
    digits = sum(c.isdigit() for c in match)
    if not 7 <= digits <= 15 or _DATE_LIKE.match(match) or _YEARS.match(match):
        return False
    international = match.startswith("+") or "(" in match
    if not international and _NOT_A_PHONE_BEFORE.search(text[max(0, start - 20) : start]):
        return False  # "order 2211 3344 55": an id that happens to look like a number
    # A phone number has separators or a leading +; a bare run of digits is more often an id or a count.
    return international or any(c in match for c in " .-")


class PiiScanner(Scanner):
    """Finds personal data. Options: `entities`, the kinds to look for (default: all)."""

    name: ClassVar[str] = "pii"

    class Options(ScannerOptions):
        entities: list[Entity] = Field(default_factory=lambda: list(ALL_ENTITIES))

    def __init__(self, options: Options) -> None:
        super().__init__(options)
        wanted = set(options.entities)
        self._checks: list[tuple[Entity, re.Pattern[str], Check]] = [
            check for check in self._all_checks() if check[0] in wanted
        ]

    @staticmethod
    def _all_checks() -> list[tuple[Entity, re.Pattern[str], Check]]:
        return [
            ("email", _EMAIL, lambda t, s, m: True),
            ("iban", _IBAN, lambda t, s, m: iban_valid(m)),
            ("credit_card", _CARD, lambda t, s, m: _card_brand_ok(d := re.sub(r"\D", "", m)) and luhn_valid(d)),
            ("us_ssn", _SSN, lambda t, s, m: True),
            ("uk_nino", _NINO, lambda t, s, m: True),
            ("ip_address", _IPV4, _ip_ok),
            ("ip_address", _IPV6, lambda t, s, m: m.count(":") >= 2 and _ip_ok(t, s, m)),
            ("phone", _PHONE, _phone_ok),
        ]

    def scan(self, text: str) -> list[Finding]:
        found: list[Finding] = []
        taken: list[tuple[int, int]] = []
        for kind, pattern, confirm in self._checks:
            for start, end in _matches(pattern, text, confirm):
                if any(start < t_end and end > t_start for t_start, t_end in taken):
                    continue  # an earlier, more specific kind already claimed this text
                taken.append((start, end))
                found.append(self.finding(kind, start, end))
        found.sort(key=lambda f: f.start)
        return found


def _ip_ok(text: str, start: int, candidate: str) -> bool:
    """A parsable address that can point at someone: not 0.0.0.0 or loopback, not a CIDR range, not a version."""
    try:
        address = ipaddress.ip_address(candidate)
    except ValueError:
        return False
    if address.is_unspecified or address.is_loopback:
        return False
    end = start + len(candidate)
    return text[end : end + 1] != "/" and not _VERSION_BEFORE.search(text[max(0, start - 12) : start])


def _matches(pattern: re.Pattern[str], text: str, confirm: Check) -> Iterator[tuple[int, int]]:
    for match in pattern.finditer(text):
        if confirm(text, match.start(), match.group()):
            yield match.start(), match.end()
