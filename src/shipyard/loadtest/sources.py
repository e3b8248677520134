"""Request sources: where the requests of a load test come from, behind one small interface.

A source is built from a `SourceSpec` (picklable, so every generator process builds its own copy) and
answers `len(source)` and `source.get(i)`; request number i of a run is `source.get(i % len(source))`, so
the mix is the same whatever the number of processes. Built-ins register themselves exactly as a third
party would, with `register_source`:

    jsonl       --source jsonl:requests.jsonl   one JSON object a line: {"messages": [...]} or {"prompt": "..."},
                                                optional "max_tokens" and other body fields
    synthetic   --source synthetic              generated prompts with --input-tokens / --output-tokens
                                                distributions, counted with --tokenizer DIR when given

    dataset     --source dataset:NAME[:VERSION]      rows of a registry dataset (shipyard.loadtest.remote)
    traces      --source traces:KEY=VALUE,...        recorded gateway calls, replayed in order (same module)

A source that reads its requests from a Shipyard server is read once, in the parent process, and handed to
the generator processes as a `snapshot` (`resolve_source`), so every process replays the same requests.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import orjson

from shipyard.errors import ConfigError
from shipyard.loadtest.wire import LoadRequest

__all__ = [
    "SOURCES",
    "LengthDistribution",
    "RequestSource",
    "SourceSpec",
    "build_source",
    "parse_distribution",
    "register_source",
    "resolve_source",
]

SNAPSHOT = "snapshot"  # the kind of a source frozen in memory by resolve_source


class RequestSource(Protocol):
    """What the generator needs from a source."""

    description: str  # one line for reports, e.g. "synthetic (tokenizer: /models/x)"

    def __len__(self) -> int: ...

    def get(self, index: int) -> LoadRequest: ...


@dataclass(frozen=True)
class SourceSpec:
    """`kind[:argument]` plus the options synthetic-style sources read."""

    kind: str = "synthetic"
    argument: str | None = None
    input_tokens: str = "256"
    output_tokens: str = "64"
    tokenizer: str | None = None
    seed: int = 0
    pool: int = 512
    options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str, **options: Any) -> SourceSpec:
        kind, _, argument = text.partition(":")
        return cls(kind=kind.strip(), argument=argument or None, **options)

    def stored(self) -> SourceSpec:
        """This spec as a run record keeps it: a snapshot's requests are counted, not copied."""
        if self.kind != SNAPSHOT:
            return self
        return replace(self, options={"requests": len(self.options.get("requests", ()))})


SOURCES: dict[str, Callable[[SourceSpec], RequestSource]] = {}


def register_source(kind: str) -> Callable[[Callable[[SourceSpec], RequestSource]], Callable[..., Any]]:
    def decorate(factory: Callable[[SourceSpec], RequestSource]) -> Callable[[SourceSpec], RequestSource]:
        SOURCES[kind] = factory
        return factory

    return decorate


def build_source(spec: SourceSpec) -> RequestSource:
    if spec.kind == SNAPSHOT and "requests" in spec.options:
        return SnapshotSource(spec.options["requests"], spec.options["description"])
    factory = SOURCES.get(spec.kind)
    if factory is None:
        raise ConfigError(f"unknown request source {spec.kind!r}; known: {', '.join(sorted(SOURCES))}")
    source = factory(spec)
    if len(source) == 0:
        raise ConfigError(f"request source {spec.kind!r} holds no requests")
    return source


def resolve_source(spec: SourceSpec) -> tuple[SourceSpec, RequestSource]:
    """Build the source once; one that read its requests from elsewhere (it has `remote = True`) comes back
    frozen into a `snapshot` spec, so generator processes neither ask the server again nor see a different
    selection (new traces keep arriving while a replay runs)."""
    source = build_source(spec)
    if not getattr(source, "remote", False):
        return spec, source
    requests = tuple(source.get(i) for i in range(len(source)))
    argument = f"{spec.kind}:{spec.argument}" if spec.argument else spec.kind
    options = {"requests": requests, "description": source.description}
    return replace(spec, kind=SNAPSHOT, argument=argument, options=options), source


class SnapshotSource:
    """Requests held in memory (see resolve_source)."""

    def __init__(self, requests: tuple[LoadRequest, ...], description: str) -> None:
        self.requests = requests
        self.description = description

    def __len__(self) -> int:
        return len(self.requests)

    def get(self, index: int) -> LoadRequest:
        return self.requests[index % len(self.requests)]


# -- length distributions


@dataclass(frozen=True)
class LengthDistribution:
    kind: str
    a: float
    b: float = 0.0

    def sample(self, rng: random.Random) -> int:
        if self.kind == "fixed":
            value = self.a
        elif self.kind == "uniform":
            value = rng.uniform(self.a, self.b)
        elif self.kind == "normal":
            value = rng.gauss(self.a, self.b)
        else:  # exponential with mean a
            value = rng.expovariate(1 / self.a)
        return max(1, round(value))

    @property
    def mean(self) -> float:
        return (self.a + self.b) / 2 if self.kind == "uniform" else self.a


_DIST = re.compile(r"^(?:(fixed|uniform|normal|exponential):)?(\d+(?:\.\d+)?)(?:,(\d+(?:\.\d+)?))?$")


def parse_distribution(text: str, what: str = "length") -> LengthDistribution:
    """`64`, `fixed:64`, `uniform:32,128`, `normal:256,32` (mean, std) or `exponential:100` (mean)."""
    match = _DIST.match(text.strip())
    if not match:
        raise ConfigError(
            f"bad {what} distribution {text!r}: use N, fixed:N, uniform:MIN,MAX, normal:MEAN,STD or exponential:MEAN"
        )
    kind = match.group(1) or "fixed"
    a = float(match.group(2))
    b = float(match.group(3)) if match.group(3) else None
    if (kind in ("uniform", "normal")) != (b is not None):
        raise ConfigError(f"bad {what} distribution {text!r}: {kind} takes {'two numbers' if b is None else 'one'}")
    if a <= 0 and kind != "uniform" or (kind == "uniform" and (b is None or b < a or b < 1)):
        raise ConfigError(f"bad {what} distribution {text!r}: lengths must be at least 1")
    return LengthDistribution(kind, a, b or 0.0)


# -- built-in sources


class JsonlSource:
    def __init__(self, path: Path) -> None:
        if not path.is_file():
            raise ConfigError(f"request file {path} does not exist")
        self.rows: list[LoadRequest] = []
        with path.open("rb") as handle:
            for number, line in enumerate(handle, 1):
                if line.strip():
                    self.rows.append(_row(line, path, number))
        self.description = f"jsonl {path} ({len(self.rows)} requests)"

    def __len__(self) -> int:
        return len(self.rows)

    def get(self, index: int) -> LoadRequest:
        return self.rows[index % len(self.rows)]


def _row(line: bytes, path: Path, number: int) -> LoadRequest:
    try:
        data = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise ConfigError(f"{path}:{number}: not valid JSON ({exc})") from None
    if not isinstance(data, dict) or ("messages" in data) == ("prompt" in data):
        raise ConfigError(f"{path}:{number}: each line needs exactly one of 'messages' or 'prompt'")
    messages, prompt = data.pop("messages", None), data.pop("prompt", None)
    if messages is not None and (not isinstance(messages, list) or not messages):
        raise ConfigError(f"{path}:{number}: 'messages' must be a non-empty list")
    if prompt is not None and not isinstance(prompt, str):
        raise ConfigError(f"{path}:{number}: 'prompt' must be a string")
    max_tokens = data.pop("max_tokens", None)
    data.pop("stream", None)
    data.pop("model", None)
    return LoadRequest(messages=messages, prompt=prompt, max_tokens=max_tokens, params=data)


@register_source("jsonl")
def _jsonl(spec: SourceSpec) -> RequestSource:
    if not spec.argument:
        raise ConfigError("the jsonl source needs a file: --source jsonl:PATH")
    return JsonlSource(Path(spec.argument).expanduser())


_WORDS = """harbour anchor vessel cargo crane tide mast rudder keel sail compass chart voyage deck hull bow stern
signal beacon channel current breeze storm calm horizon island coast pier dock rope knot wave salt morning evening
river bridge market engine lantern journey captain crew ledger manifest route port""".split()  # noqa: SIM905
_APPROX_TOKENS_PER_WORD = 1.3  # rough English average for BPE tokenizers, used only without a tokenizer


class SyntheticSource:
    """A pool of generated prompts whose lengths follow the chosen distributions."""

    def __init__(self, spec: SourceSpec) -> None:
        inputs = parse_distribution(spec.input_tokens, "input-token")
        outputs = parse_distribution(spec.output_tokens, "output-token")
        rng = random.Random(spec.seed)
        encode = _tokenizer(spec.tokenizer) if spec.tokenizer else None
        self.exact = encode is not None
        self.requests: list[LoadRequest] = []
        for i in range(max(1, spec.pool)):
            want = inputs.sample(rng)
            text = _prompt(rng, want, encode, i)
            self.requests.append(
                LoadRequest(
                    messages=[{"role": "user", "content": text}],
                    max_tokens=outputs.sample(rng),
                    input_tokens=want,
                )
            )
        how = f"tokenizer {spec.tokenizer}" if self.exact else f"approximate: {_APPROX_TOKENS_PER_WORD} tokens/word"
        self.description = f"synthetic input={spec.input_tokens} output={spec.output_tokens} tokens ({how})"

    def __len__(self) -> int:
        return len(self.requests)

    def get(self, index: int) -> LoadRequest:
        return self.requests[index % len(self.requests)]


def _tokenizer(folder: str) -> Callable[[str, int], str]:
    """A function cutting a text to exactly n tokens of the model's tokenizer (the `tokenizers` package)."""
    path = Path(folder).expanduser()
    file = path / "tokenizer.json" if path.is_dir() else path
    if not file.is_file():
        raise ConfigError(f"no tokenizer.json in {path}")
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise ConfigError("counting tokens needs the `tokenizers` package: pip install tokenizers") from None
    tokenizer = Tokenizer.from_file(str(file))

    def cut(text: str, n: int) -> str:
        ids = tokenizer.encode(text, add_special_tokens=False).ids
        return tokenizer.decode(ids[:n])

    return cut


def _prompt(rng: random.Random, tokens: int, encode: Callable[[str, int], str] | None, salt: int) -> str:
    # A distinct opening per request keeps prefix caches from making every request look alike.
    words = max(1, round(tokens / _APPROX_TOKENS_PER_WORD)) if encode is None else tokens + 8
    body = " ".join(rng.choice(_WORDS) for _ in range(words))
    text = f"{salt} {body}"
    return encode(text, tokens) if encode is not None else text


@register_source("synthetic")
def _synthetic(spec: SourceSpec) -> RequestSource:
    return SyntheticSource(spec)
