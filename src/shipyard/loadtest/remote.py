"""Request sources read from a Shipyard server's REST API: registry datasets and replayed gateway traces.

    --source dataset:faq            the newest version of dataset `faq` (`dataset:faq:3` for version 3)
    --source traces:deployment=smollm2,since=-3600,status=ok,limit=500

The server is `--server-url` (kept in `SourceSpec.options["server_url"]`), else `$SHIPYARD_URL`, else
http://127.0.0.1:8000, with `$SHIPYARD_API_KEY` as its key. Both sources are read once, in the process that
plans the run (`sources.resolve_source` freezes them), never by the generator processes.

The conversions from a dataset row or an exported trace to `LoadRequest`s are pure functions, tested without
HTTP; the fetching around them pages through `/api/v1/datasets/{name}/rows` and streams
`/api/v1/traces/export`.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import httpx
import orjson

from shipyard.errors import ApiError, ConfigError
from shipyard.loadtest.sources import RequestSource, SourceSpec, parse_distribution, register_source
from shipyard.loadtest.wire import LoadRequest

__all__ = [
    "TRACE_FILTER_KEYS",
    "dataset_request",
    "parse_dataset_ref",
    "parse_trace_filter",
    "server_url",
    "trace_requests",
]

_PAGE = 1000  # dataset rows per GET
DEFAULT_TRACE_LIMIT = 10_000
TRACE_FILTER_KEYS = (
    "deployment", "since", "until", "status", "user", "project", "source", "metadata", "min_latency_ms", "q", "limit",
)  # fmt: skip
# Recorded request fields that are not replayed: how the gateway answered, or what only made sense to the caller.
_NOT_REPLAYED = frozenset({"stream", "stream_options", "served_by", "guardrails", "variables", "prompt", "model"})


class ServerSource:
    """Requests read from a Shipyard server; `remote` tells resolve_source to freeze them."""

    remote = True

    def __init__(self, requests: list[LoadRequest], description: str) -> None:
        self.requests = requests
        self.description = description

    def __len__(self) -> int:
        return len(self.requests)

    def get(self, index: int) -> LoadRequest:
        return self.requests[index % len(self.requests)]


def server_url(given: str | None) -> str | None:
    """The server's base URL: a trailing /v1 or /api/v1 (the gateway's or the API's) is dropped."""
    if not given:
        return None
    url = given.rstrip("/")
    for tail in ("/api/v1", "/v1"):
        if url.endswith(tail):
            return url[: -len(tail)]
    return url


def _client(spec: SourceSpec) -> Any:
    from shipyard.sdk.client import Client

    return Client(server_url(spec.options.get("server_url")), timeout=30.0)


def _read_error(exc: ApiError, what: str, url: str) -> ConfigError:
    if exc.code == "unreachable":  # the message names the server already
        return ConfigError(f"cannot read {what}: {exc.message}; give --server-url or set SHIPYARD_URL")
    hint = "; set SHIPYARD_API_KEY to a key that may read it" if exc.status in (401, 403) else ""
    return ConfigError(f"cannot read {what} from {url}: {exc.message}{hint}")


# -- datasets


def parse_dataset_ref(argument: str | None) -> tuple[str, int | None]:
    """`NAME` (newest version) or `NAME:VERSION`."""
    name, _, version = (argument or "").strip().partition(":")
    if not name:
        raise ConfigError("the dataset source needs a name: --source dataset:NAME or dataset:NAME:VERSION")
    if "@" in name:
        raise ConfigError(f"bad dataset reference {argument!r}: use dataset:NAME or dataset:NAME:VERSION, e.g. faq:3")
    if not version:
        return name, None
    if not version.isdigit() or int(version) < 1:
        raise ConfigError(f"bad dataset version {version!r} in dataset:{argument}: use a number, e.g. dataset:faq:3")
    return name, int(version)


def dataset_request(value: Any, max_tokens: int | None, where: str) -> LoadRequest:
    """One row's `input` as a request: a string is one user message; a list is the chat messages; an object
    gives its `messages`. `expected` plays no part in load."""
    if isinstance(value, str):
        return LoadRequest(messages=[{"role": "user", "content": value}], max_tokens=max_tokens)
    if isinstance(value, Mapping) and "messages" in value:
        value = value["messages"]
    if isinstance(value, list) and value and all(isinstance(m, Mapping) and "role" in m for m in value):
        return LoadRequest(messages=[dict(m) for m in value], max_tokens=max_tokens)
    kind = type(value).__name__
    if isinstance(value, Mapping):
        kind = f"an object with {', '.join(sorted(map(str, value))) or 'no keys'}"
    raise ConfigError(
        f"{where}: 'input' must be a string, a list of chat messages or {{\"messages\": [...]}} (got {kind})"
    )


def _dataset_pages(client: Any, name: str, version: int | None) -> Iterator[dict[str, Any]]:
    offset = 0
    while True:
        params: dict[str, Any] = {"offset": offset, "limit": _PAGE}
        if version is not None:
            params["version"] = version
        page = client.request("GET", f"/datasets/{name}/rows", params=params)
        yield page
        offset += len(page["data"])
        if not page["data"] or offset >= page["total"]:
            return
        version = page["version"]  # later pages read the version the first one found, even if a newer one lands


@register_source("dataset")
def _dataset(spec: SourceSpec) -> RequestSource:
    name, version = parse_dataset_ref(spec.argument)
    outputs = parse_distribution(spec.output_tokens, "output-token")
    rng = random.Random(spec.seed)
    requests: list[LoadRequest] = []
    found = version
    client = _client(spec)
    try:
        for page in _dataset_pages(client, name, version):
            found = page["version"]
            for row in page["data"]:
                where = f"dataset {name}:{found} row {len(requests) + 1}"
                requests.append(dataset_request(row.get("input"), outputs.sample(rng), where))
    except ApiError as exc:
        raise _read_error(exc, f"dataset {name!r}", client.url) from None
    finally:
        client.close()
    return ServerSource(requests, f"dataset {name}:{found} ({len(requests)} rows, max_tokens {spec.output_tokens})")


# -- traces

_AGO = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _when(key: str, text: str, now: float) -> float:
    """A time: unix seconds; a negative number of seconds from now (-3600); or an age such as 90s, 30m, 2h, 1d."""
    match = _AGO.match(text)
    if match:
        return now - float(match.group(1)) * _UNITS[match.group(2)]
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(
            f"bad {key}={text!r} in the traces source: use unix seconds, -SECONDS from now, or an age like 30m, 2h"
        ) from None
    return now + value if value < 0 else value


def parse_trace_filter(argument: str | None, now: float) -> tuple[dict[str, Any], int]:
    """`key=value,...` (keys as GET /api/v1/traces/export takes them, plus `limit`) → query params and limit."""
    params: dict[str, Any] = {}
    limit = DEFAULT_TRACE_LIMIT
    for part in (argument or "").split(","):
        if not part.strip():
            continue
        key, sep, value = part.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or key not in TRACE_FILTER_KEYS or not value:
            raise ConfigError(
                f"bad traces filter {part.strip()!r}: use key=value with keys {', '.join(TRACE_FILTER_KEYS)}"
            )
        if key in ("since", "until"):
            params[key] = _when(key, value, now)
        elif key in ("limit", "min_latency_ms"):
            try:
                number = float(value)
            except ValueError:
                raise ConfigError(f"bad {key}={value!r} in the traces source: use a number") from None
            if number < (1 if key == "limit" else 0):
                raise ConfigError(f"bad {key}={value!r} in the traces source: too small")
            if key == "limit":
                limit = int(number)
            else:
                params[key] = number
        else:
            params[key] = value
    return params, limit


def trace_requests(trace: Mapping[str, Any]) -> list[LoadRequest]:
    """The gateway calls of one exported trace (its `llm` spans recorded by the gateway, in start order) with
    their recorded input and request parameters. Calls recorded without content (capture off) are skipped."""
    out = []
    spans = sorted(trace.get("spans") or [], key=lambda s: s.get("start_time") or 0.0)
    for span in spans:
        if span.get("source") != "gateway" or span.get("kind") != "llm" or span.get("input") is None:
            continue
        value = span["input"]
        params = {k: v for k, v in (span.get("attributes") or {}).items() if k not in _NOT_REPLAYED}
        max_tokens = params.pop("max_tokens", None)
        if isinstance(value, list) and value:
            out.append(LoadRequest(messages=value, max_tokens=max_tokens, params=params))
        elif isinstance(value, str):
            out.append(LoadRequest(prompt=value, max_tokens=max_tokens, params=params))
    return out


def _exported(client: Any, params: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Traces from GET /api/v1/traces/export (JSON Lines, oldest first), read as they stream in."""
    headers = {"authorization": f"Bearer {client.api_key}"} if client.api_key else {}
    url = client.url + "/api/v1/traces/export"
    try:
        with httpx.stream("GET", url, params=dict(params), headers=headers, timeout=60.0) as response:
            if response.status_code >= 400:
                response.read()
                raise _api_error(response)
            for line in response.iter_lines():
                if line.strip():
                    yield orjson.loads(line)
    except httpx.TransportError as exc:
        raise ConfigError(
            f"cannot read traces from {client.url}: Shipyard cannot be reached ({exc}); give --server-url or "
            "set SHIPYARD_URL"
        ) from None


def _api_error(response: httpx.Response) -> ConfigError:
    try:
        message = response.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = response.text[:500] or response.reason_phrase
    hint = "; set SHIPYARD_API_KEY to a key that may read traces" if response.status_code in (401, 403) else ""
    return ConfigError(f"cannot read traces (HTTP {response.status_code}): {message}{hint}")


def _take(traces: Iterable[Mapping[str, Any]], limit: int) -> list[LoadRequest]:
    requests: list[LoadRequest] = []
    for trace in traces:
        requests.extend(trace_requests(trace))
        if len(requests) >= limit:
            return requests[:limit]
    return requests


@register_source("traces")
def _traces(spec: SourceSpec) -> RequestSource:
    params, limit = parse_trace_filter(spec.argument, time.time())
    client = _client(spec)
    try:
        requests = _take(_exported(client, params), limit)
    finally:
        client.close()
    selection = f"traces:{spec.argument or ''}"
    if not requests:
        raise ConfigError(
            f"no recorded gateway call with its input matches {selection} on {client.url} (calls recorded with "
            "tracing.capture_content off have no input to replay)"
        )
    return ServerSource(requests, f"{selection} ({len(requests)} recorded calls, replayed in order)")
