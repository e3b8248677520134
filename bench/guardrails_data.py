"""Builds the labelled sets of bench/guardrails_quality.py: bench/data/guardrails/<scanner>.jsonl.

    .venv/bin/python -m bench.guardrails_data

Every row is {"text", "label", "kind", "source"}: `label` says whether the text holds what the scanner
is meant to find, `kind` is the expected kind (null for negatives), `source` is "handwritten" or
"generated" (formulaic rows made here with a fixed seed: card numbers, IBANs, keys). The texts were
written for this benchmark from general knowledge of the formats, not from the scanners' patterns, and
include hard negatives. Every value is fake: test card numbers, example or random keys, reserved
phone ranges where a country has one. The decisions on debatable cases are in docs/benchmarks.md.
The output is deterministic; the .jsonl files are committed, so rerun this only after changing it.
"""

from __future__ import annotations

import base64
import json
import random
import string
from pathlib import Path
from typing import Any

from bench.guardrails_texts import INJECTION, PII, SECRETS_HANDWRITTEN, TOXICITY

__all__ = ["DATA", "build_all", "card_number", "iban"]

DATA = Path(__file__).resolve().parent / "data" / "guardrails"
SEED = 20261123
ALNUM = string.ascii_letters + string.digits
UPPER_DIGITS = string.ascii_uppercase + string.digits


def row(text: str, label: bool, kind: str | None, source: str = "handwritten") -> dict[str, Any]:
    return {"text": text, "label": label, "kind": kind if label else None, "source": source}


def luhn_digit(partial: str) -> str:
    """The check digit that makes `partial + digit` pass Luhn."""
    total = 0
    for position, char in enumerate(reversed(partial)):
        value = int(char)
        if position % 2 == 0:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return str((10 - total % 10) % 10)


def card_number(rng: random.Random, prefix: str, length: int) -> str:
    body = prefix + "".join(rng.choices(string.digits, k=length - len(prefix) - 1))
    return body + luhn_digit(body)


def iban(rng: random.Random, country: str, bban_shape: str) -> str:
    """A mod-97-valid IBAN; `bban_shape` uses 'n' for a digit and 'a' for an upper-case letter."""
    bban = "".join(rng.choice(string.digits if c == "n" else string.ascii_uppercase) for c in bban_shape)
    moved = bban + country + "00"
    number = int("".join(str(int(c, 36)) for c in moved))
    return f"{country}{98 - number % 97:02d}{bban}"


def spaced(value: str, group: int = 4) -> str:
    return " ".join(value[i : i + group] for i in range(0, len(value), group))


def pii_generated(rng: random.Random) -> list[dict[str, Any]]:
    rows = []
    cards = [
        ("4", 16, "Visa"),
        ("51", 16, "Mastercard"),
        ("2221", 16, "Mastercard 2-series"),
        ("37", 15, "Amex"),
        ("6011", 16, "Discover"),
        ("3528", 16, "JCB"),
        ("36", 14, "Diners"),
        ("62", 16, "UnionPay"),
    ]
    templates = [
        "Please charge my card {n}, expiry 09/28.",
        "card: {n} cvv 123",
        '{{"payment": {{"pan": "{n}", "exp": "11/27"}}}}',
        "My {brand} number is {n} if you need it for the refund.",
        "Can you check why {n} was declined?",
    ]
    for i, (prefix, length, brand) in enumerate(cards):
        number = card_number(rng, prefix, length)
        shown = spaced(number) if i % 2 == 0 else number
        if brand == "Amex" and i % 2 == 0:
            shown = f"{number[:4]} {number[4:10]} {number[10:]}"
        rows.append(row(templates[i % len(templates)].format(n=shown, brand=brand), True, "credit_card", "generated"))
        dashed = "-".join(number[j : j + 4] for j in range(0, len(number), 4))
        rows.append(row(f"the {brand} card ending in {number[-4:]} is {dashed}", True, "credit_card", "generated"))
    ibans = [("DE", "n" * 18), ("GB", "aaaa" + "n" * 14), ("FR", "n" * 23), ("NL", "aaaa" + "n" * 10)]
    ibans += [("ES", "n" * 20), ("IT", "a" + "n" * 22), ("BE", "n" * 12), ("CH", "n" * 17), ("PL", "n" * 24)]
    iban_templates = [
        "Send the deposit to {v}, account holder M. Keller.",
        "IBAN: {v}",
        "Bankverbindung: {v} (Sparkasse)",
        "please wire it to {v} before Friday",
    ]
    for i, (country, shape) in enumerate(ibans):
        value = iban(rng, country, shape)
        shown = spaced(value) if i % 2 else value
        rows.append(row(iban_templates[i % len(iban_templates)].format(v=shown), True, "iban", "generated"))
    for i in range(6):  # numbers that look like cards but fail Luhn: order and ticket numbers
        number = card_number(rng, rng.choice(["4", "5", "6"]), 16)
        wrong = number[:-1] + str((int(number[-1]) + 1 + i % 8) % 10)
        label = ["Order number", "Ticket", "Consignment", "Reference", "Serial", "Case ID"][i]
        rows.append(row(f"{label}: {spaced(wrong)}. Keep it for your records.", False, None, "generated"))
    for _ in range(4):  # IBAN-shaped strings with a wrong check: account references on invoices
        value = iban(rng, "DE", "n" * 18)
        bad = value[:2] + f"{(int(value[2:4]) + 3) % 97 + 2:02d}" + value[4:]
        rows.append(row(f"Internal ledger reference {bad} (not a bank account).", False, None, "generated"))
    return rows


def secrets_generated(rng: random.Random) -> list[dict[str, Any]]:
    def rand(alphabet: str, k: int) -> str:
        return "".join(rng.choices(alphabet, k=k))

    lower_hex = "0123456789abcdef"
    b64url = ALNUM + "-_"
    header = base64.urlsafe_b64encode(b'{"alg":"HS256","typ":"JWT"}').decode().rstrip("=")
    claims = base64.urlsafe_b64encode(b'{"sub":"1234567890","name":"Ada","iat":1716239022}').decode().rstrip("=")
    jwt = f"{header}.{claims}.{rand(b64url, 43)}"
    azure = base64.b64encode(rng.randbytes(64)).decode()
    values = [
        ("aws_access_key", f"AKIA{rand(UPPER_DIGITS, 16)}", 'aws_access_key_id = "{v}"'),
        ("aws_access_key", f"ASIA{rand(UPPER_DIGITS, 16)}", "export AWS_ACCESS_KEY_ID={v}"),
        ("aws_secret_key", rand(ALNUM + "/+", 40), "aws_secret_access_key={v}"),
        ("github_token", f"ghp_{rand(ALNUM, 36)}", "git clone https://{v}@github.com/acme/infra.git"),
        ("github_token", f"github_pat_{rand(ALNUM, 22)}_{rand(ALNUM, 59)}", '{{"token": "{v}"}}'),
        ("github_token", f"gho_{rand(ALNUM, 36)}", "The OAuth token in the log was {v}, rotate it."),
        ("gitlab_token", f"glpat-{rand(b64url, 20)}", "CI_JOB_TOKEN is fine but someone pasted {v} in the wiki"),
        ("openai_key", f"sk-proj-{rand(b64url, 74)}T3BlbkFJ{rand(b64url, 74)}", "OPENAI_API_KEY={v}"),
        ("openai_key", f"sk-{rand(ALNUM, 20)}T3BlbkFJ{rand(ALNUM, 20)}", 'client = OpenAI(api_key="{v}")'),
        ("anthropic_key", f"sk-ant-api03-{rand(b64url, 93)}AA", "x-api-key: {v}"),
        ("slack_token", f"xoxb-{rand(string.digits, 12)}-{rand(string.digits, 13)}-{rand(ALNUM, 24)}", "SLACK_BOT={v}"),
        (
            "slack_webhook",
            f"https://hooks.slack.com/services/T{rand(UPPER_DIGITS, 8)}/B{rand(UPPER_DIGITS, 10)}/{rand(ALNUM, 24)}",
            "curl -X POST -d @msg.json {v}",
        ),
        ("stripe_key", f"sk_live_{rand(ALNUM, 24)}", "Stripe.api_key = '{v}'"),
        ("stripe_key", f"rk_live_{rand(ALNUM, 24)}", "restricted key for the reporting job: {v}"),
        (
            "google_api_key",
            f"AIza{rand(b64url, 35)}",
            "https://maps.googleapis.com/maps/api/geocode/json?address=x&key={v}",
        ),
        ("huggingface_token", f"hf_{rand(string.ascii_letters, 34)}", "huggingface-cli login --token {v}"),
        ("npm_token", f"npm_{rand(ALNUM, 36)}", "//registry.npmjs.org/:_authToken={v}"),
        ("pypi_token", f"pypi-AgEIcHlwaS5vcmc{rand(b64url, 70)}", "password = {v}"),
        ("sendgrid_key", f"SG.{rand(b64url, 22)}.{rand(b64url, 43)}", "SENDGRID_API_KEY='{v}'"),
        ("twilio_key", f"SK{rand(lower_hex, 32)}", "twilio api key sid {v}"),
        ("jwt", jwt, "Authorization: Bearer {v}"),
        ("url_credentials", f"admin:{rand(ALNUM, 14)}", "DATABASE_URL=postgres://{v}@db.internal:5432/app"),
        ("azure_storage_key", azure, "DefaultEndpointsProtocol=https;AccountName=acmelogs;AccountKey={v};"),
        ("mailgun_key", f"key-{rand(lower_hex, 32)}", 'MAILGUN_API_KEY = "{v}"'),
        ("datadog_key", rand(lower_hex, 32), "DD_API_KEY={v}"),
        ("telegram_bot_token", f"{rand(string.digits, 10)}:AA{rand(b64url, 33)}", "bot = Bot(token='{v}')"),
        ("discord_token", f"M{rand(ALNUM, 23)}.{rand(b64url, 6)}.{rand(b64url, 38)}", "DISCORD_TOKEN: {v}"),
        ("bearer_token", rand(ALNUM, 40), "curl -H 'Authorization: Bearer {v}' https://api.example.net/v2/jobs"),
    ]
    rows = [row(template.format(v=value), True, kind, "generated") for kind, value, template in values]
    for i in range(6):  # UUIDs used as ordinary identifiers
        ident = "-".join(rand(lower_hex, n) for n in (8, 4, 4, 4, 12))
        text = [
            "The request id {v} failed at 10:42, can you look at the logs?",
            "GET /api/v1/orders/{v} returns 404",
            'user_id: "{v}"',
            "Trace {v} shows the slow span is the database call.",
            "Delete the duplicate row with id {v}.",
            "job {v} finished in 3.2s",
        ][i]
        rows.append(row(text.format(v=ident), False, None, "generated"))
    for i in range(6):  # git SHAs in prose, and checksums, which are public
        sha = rand(lower_hex, 40)
        text = [
            "This was fixed in commit {v}; please rebase.",
            "Reverting {v} brings the old behaviour back.",
            "git cherry-pick {v}",
            "sha256: {v}{w} (release tarball)",
            "The Docker image digest is sha256:{v}{w}.",
            "Bisect says the first bad commit is {short}.",
        ][i]
        rows.append(row(text.format(v=sha, w=rand(lower_hex, 24), short=sha[:12]), False, None, "generated"))
    image = base64.b64encode(b"\x89PNG\r\n\x1a\n" + rng.randbytes(90)).decode()
    rows.append(row(f'<img src="data:image/png;base64,{image}" alt="logo">', False, None, "generated"))
    rows.append(row(f"![chart](data:image/png;base64,{image[:80]})", False, None, "generated"))
    return rows


def build_all() -> dict[str, list[dict[str, Any]]]:
    rng = random.Random(SEED)
    sets = {
        "pii": [row(*item) for item in PII] + pii_generated(rng),
        "secrets": [row(*item) for item in SECRETS_HANDWRITTEN] + secrets_generated(rng),
        "injection": [row(*item) for item in INJECTION],
        "toxicity": [row(*item) for item in TOXICITY],
    }
    return sets


def main() -> None:
    DATA.mkdir(parents=True, exist_ok=True)
    for name, rows in build_all().items():
        texts = [r["text"] for r in rows]
        duplicates = {t for t in texts if texts.count(t) > 1}
        if duplicates:
            raise SystemExit(f"{name}: duplicate rows: {sorted(duplicates)[:3]}")
        path = DATA / f"{name}.jsonl"
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        positives = sum(r["label"] for r in rows)
        print(f"{path.relative_to(DATA.parent.parent.parent)}: {len(rows)} rows, {positives} positive")


if __name__ == "__main__":
    main()
