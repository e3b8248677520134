"""`shipyard.Client`: the registry from Python, over the control-plane REST API.

    from shipyard import Client

    client = Client("http://127.0.0.1:8000")
    prompt = client.prompts.get("support-bot", label="production")
    messages = prompt.render(question="Where is my parcel?")

Prompts are cached for `cache_ttl` seconds, then served stale-while-revalidate: an older cached copy is returned
at once (marked `stale=True`) while one background thread per prompt fetches the current version, for up to
`max_stale` seconds past the TTL; a failed refresh keeps the cached copy. So an application neither waits on nor
breaks during a brief outage of the server.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import httpx

from shipyard.errors import (
    ApiError,
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
    PermissionDenied,
    ServerError,
    ServiceUnavailable,
)

__all__ = ["Client", "DatasetsClient", "ExperimentsClient", "ModelsClient", "Prompt", "PromptsClient"]

log = logging.getLogger("shipyard.sdk")

_BY_STATUS: dict[int, type[ApiError]] = {
    400: InvalidRequest,
    403: PermissionDenied,
    404: NotFound,
    413: PayloadTooLarge,
}


@dataclasses.dataclass(frozen=True)
class Prompt:
    """One prompt version as fetched from the server."""

    name: str
    version: int
    kind: str  # "chat" | "text"
    template: Any
    variables: list[str]
    params: dict[str, Any]
    message: str = ""
    author: str = ""
    stale: bool = False  # older than cache_ttl: served from the cache while (or after) a refresh runs

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"

    def render(self, variables: Mapping[str, Any] | None = None, /, **kwargs: Any) -> list[dict[str, Any]] | str:
        """Messages (chat) or text, rendered locally in the same sandbox the server uses."""
        from shipyard.registry.prompts import render_version

        values = {**(variables or {}), **kwargs}
        return render_version({"name": self.name, "version": self.version, "kind": self.kind,
                               "template": self.template}, values)  # fmt: skip


class PromptsClient:
    """Prompt versions, cached stale-while-revalidate: within `cache_ttl` the cached copy; after it the cached
    copy at once (`stale=True`) while one background thread per prompt reference fetches the current one; past
    `cache_ttl + max_stale` the fetch happens on the calling thread again and its error, if any, is raised."""

    def __init__(self, client: Client) -> None:
        self._client = client
        self._cache: dict[tuple[str, str | None, int | None], tuple[float, Prompt]] = {}
        self._refreshing: dict[tuple[str, str | None, int | None], threading.Thread] = {}
        self._lock = threading.Lock()

    def get(self, name: str, *, label: str | None = None, version: int | None = None) -> Prompt:
        """A version by label (default `latest`) or number, cached; stale copies cover server outages."""
        if label is not None and version is not None:
            raise ValueError("give a label or a version, not both")
        key = (name, label, version)
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(key)
            # Numbered versions are immutable: cached for good. Labels move: cached for cache_ttl.
            if hit is not None and (version is not None or now - hit[0] < self._client.cache_ttl):
                return hit[1]
            if hit is not None and now - hit[0] < self._client.cache_ttl + self._client.max_stale:
                if key not in self._refreshing:
                    thread = threading.Thread(target=self._refresh, args=(key,), daemon=True,
                                              name=f"shipyard-prompt-refresh-{name}")  # fmt: skip
                    self._refreshing[key] = thread
                    thread.start()
                return dataclasses.replace(hit[1], stale=True)
        return self._fetch(key)  # never fetched, or too old to serve: the caller waits (and sees the error)

    def refreshing(self, name: str, *, label: str | None = None, version: int | None = None) -> bool:
        """Whether a background refresh of this reference is under way."""
        with self._lock:
            return (name, label, version) in self._refreshing

    def _fetch(self, key: tuple[str, str | None, int | None]) -> Prompt:
        name, label, version = key
        path = f"/prompts/{name}/labels/{label or 'latest'}"
        if version is not None:
            path = f"/prompts/{name}/versions/{version}"
        fetched_at = time.monotonic()
        prompt = _prompt(self._client.request("GET", path))
        with self._lock:
            current = self._cache.get(key)
            if current is None or current[0] <= fetched_at:  # a slower, older fetch never replaces a newer one
                self._cache[key] = (fetched_at, prompt)
        return prompt

    def _refresh(self, key: tuple[str, str | None, int | None]) -> None:
        try:
            self._fetch(key)
        except ApiError as exc:  # unreachable, 5xx, or gone: keep serving the cached copy until max_stale
            log.warning("refreshing prompt %s failed (%s); serving the cached copy", key[0], exc.message)
        except Exception:  # e.g. the client was closed while the refresh ran
            log.exception("refreshing prompt %s failed", key[0])
        finally:
            with self._lock:
                self._refreshing.pop(key, None)

    def push(self, name: str, spec: Mapping[str, Any], labels: Iterable[str] = ()) -> Prompt:
        """Create the next version from a prompt spec (the YAML file's fields) and move `labels` to it."""
        body = {**spec, "labels": [*spec.get("labels", []), *labels]}
        return _prompt(self._client.request("POST", f"/prompts/{name}/versions", json=body))

    def push_file(self, name: str, path: str | Path, labels: Iterable[str] = ()) -> Prompt:
        import yaml

        spec = yaml.safe_load(Path(path).read_text())
        if not isinstance(spec, dict):
            raise InvalidRequest(f"{path} must hold a mapping (messages or template, variables, params, ...).")
        return self.push(name, spec, labels)

    def list(self) -> list[dict[str, Any]]:
        return self._client.request("GET", "/prompts")["data"]

    def show(self, name: str) -> dict[str, Any]:
        return self._client.request("GET", f"/prompts/{name}")

    def label(
        self, name: str, version: int, label: str, *, force: bool = False, protected: bool | None = None
    ) -> dict[str, Any]:
        body = {"version": version, "force": force, "protected": protected, "actor": _actor()}
        result = self._client.request("PUT", f"/prompts/{name}/labels/{label}", json=body)
        with self._lock:
            for key in [k for k in self._cache if k[0] == name]:
                del self._cache[key]
        return result

    def diff(self, name: str, a: str | int, b: str | int) -> str:
        return self._client.request("GET", f"/prompts/{name}/diff", params={"a": str(a), "b": str(b)})["diff"]

    def render(self, name: str, variables: Mapping[str, Any], ref: str | None = None) -> dict[str, Any]:
        """Render on the server (`ref` is '@label' or ':3')."""
        return self._client.request("POST", f"/prompts/{name}/render", json={"ref": ref, "variables": variables})


class DatasetsClient:
    def __init__(self, client: Client) -> None:
        self._client = client

    def create(self, name: str, rows: list[Mapping[str, Any]], *, message: str = "", append: bool = False) -> dict:
        body = {"rows": list(rows), "message": message, "append": append, "author": _actor()}
        return self._client.request("POST", f"/datasets/{name}/versions", json=body)

    def upload(self, name: str, path: str | Path, *, message: str = "", append: bool = False) -> dict[str, Any]:
        """Create a version from a .jsonl, .csv or .parquet file (checked on the server, which names a bad row)."""
        file = Path(path)
        params = {"message": message, "append": str(append).lower(), "format": file.suffix.lstrip("."),
                  "source": f"file:{file.name}", "author": _actor()}  # fmt: skip
        return self._client.request("POST", f"/datasets/{name}/upload", params=params, content=file.read_bytes())

    def from_traces(self, name: str, *, append: bool = False, message: str = "", **where: Any) -> dict[str, Any]:
        """A version made of the traces a filter selects (`deployment`, `since`, `until`, `status`, `user`,
        `project`, `source`, `metadata`, `min_latency_ms`, `q`, `limit`)."""
        body = {**where, "append": append, "message": message, "author": _actor()}
        return self._client.request("POST", f"/datasets/{name}/from-traces", json=body)

    def list(self) -> list[dict[str, Any]]:
        return self._client.request("GET", "/datasets")["data"]

    def show(self, name: str) -> dict[str, Any]:
        return self._client.request("GET", f"/datasets/{name}")

    def rows(self, name: str, version: int | None = None) -> list[dict[str, Any]]:
        params = {"version": version} if version is not None else {}
        return self._client.request("GET", f"/datasets/{name}/rows", params=params)["data"]


class ModelsClient:
    def __init__(self, client: Client) -> None:
        self._client = client

    def register(self, name: str, source: str | None = None, *, hosted: str | None = None, **fields: Any) -> dict:
        """A version from weights on the server's machine (`source`: folder, .gguf or Hub id) or a hosted id;
        `fields`: copy_weights, base, dataset, run, metrics, message, allow_custom_code."""
        body = {"source": source, "hosted": hosted, "author": _actor(), **fields}
        return self._client.request("POST", f"/models/{name}/versions", json=body)

    def list(self) -> list[dict[str, Any]]:
        return self._client.request("GET", "/models")["data"]

    def show(self, name: str) -> dict[str, Any]:
        return self._client.request("GET", f"/models/{name}")

    def get(self, name: str, ref: str | int = "latest") -> dict[str, Any]:
        """A version by number or alias."""
        return self._client.request("GET", f"/models/{name}/resolve/{ref}")

    def alias(self, name: str, version: int, alias: str) -> dict[str, Any]:
        return self._client.request("PUT", f"/models/{name}/aliases/{alias}", json={"version": version})

    def lineage(self, name: str, ref: str | int) -> dict[str, Any]:
        return self._client.request("GET", f"/models/{name}/lineage/{ref}")

    def add_metrics(self, name: str, version: int, metrics: Mapping[str, Any]) -> dict[str, Any]:
        return self._client.request("POST", f"/models/{name}/versions/{version}/metrics", json={"metrics": metrics})


class ExperimentsClient:
    """Evaluation runs: run a suite from Python, read results, compare two runs."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def run(self, suite: Any, *, resume: str | None = None) -> dict[str, Any]:
        """Run a suite (a `shipyard.evals.suite.Suite`, a dict, or a path to a YAML file) over its registry
        dataset through this server's gateway; returns the experiment with its summary."""
        import asyncio

        from shipyard.evals.runner import ApiSink, run_experiment
        from shipyard.evals.suite import Suite, load_suite

        if isinstance(suite, str | Path):
            suite = load_suite(suite)
        elif not isinstance(suite, Suite):
            suite = Suite.model_validate(suite)
        name, version = suite.dataset_ref()
        params = {"version": version} if version is not None else {}
        page = self._client.request("GET", f"/datasets/{name}/rows", params={**params, "limit": 100_000})
        return asyncio.run(
            run_experiment(suite, page["data"], ApiSink(self._client), gateway_url=self._client.url,
                           api_key=self._client.api_key, dataset_version=page["version"], resume=resume)
        )  # fmt: skip

    def list(self, name: str | None = None) -> list[dict[str, Any]]:
        return self._client.request("GET", "/experiments", params={"name": name} if name else {})["data"]

    def get(self, experiment_id: str) -> dict[str, Any]:
        return self._client.request("GET", f"/experiments/{experiment_id}")

    def rows(self, experiment_id: str) -> list[dict[str, Any]]:
        return self._client.request("GET", f"/experiments/{experiment_id}/rows")["data"]

    def compare(self, a: str, b: str) -> dict[str, Any]:
        return self._client.request("GET", "/experiments/compare", params={"a": a, "b": b})


class Client:
    """A client for one Shipyard server. Thread-safe; close it (or use `with`) when done."""

    def __init__(
        self,
        url: str | None = None,
        *,
        api_key: str | None = None,
        timeout: float = 10.0,
        cache_ttl: float = 30.0,
        max_stale: float = 3600.0,
    ) -> None:
        self.url = (url or os.environ.get("SHIPYARD_URL") or "http://127.0.0.1:8000").rstrip("/")
        api_key = api_key or os.environ.get("SHIPYARD_API_KEY")
        self.api_key = api_key
        headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self.cache_ttl = cache_ttl
        self.max_stale = max_stale
        self._http = httpx.Client(base_url=self.url + "/api/v1", headers=headers, timeout=timeout)
        self.prompts = PromptsClient(self)
        self.datasets = DatasetsClient(self)
        self.models = ModelsClient(self)
        self.experiments = ExperimentsClient(self)

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """One API call; errors come back as shipyard.errors.ApiError subclasses with the server's message."""
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise ServiceUnavailable(f"Shipyard at {self.url} cannot be reached: {exc}", code="unreachable") from None
        if response.status_code < 400:
            return response.json()
        try:
            error = response.json()["error"]
            message, code, param = error["message"], error.get("code"), error.get("param")
        except (ValueError, KeyError, TypeError):
            message, code, param = response.text[:500] or response.reason_phrase, None, None
        kind = _BY_STATUS.get(response.status_code)
        if kind is None:
            kind = ServiceUnavailable if response.status_code in (502, 503, 504) else ServerError
            if response.status_code < 500:
                kind = InvalidRequest
        raise kind(message, code=code, param=param, status=response.status_code)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _prompt(data: Mapping[str, Any]) -> Prompt:
    return Prompt(
        name=data["name"],
        version=int(data["version"]),
        kind=data["kind"],
        template=data["template"],
        variables=list(data["variables"]),
        params=dict(data["params"]),
        message=data.get("message") or "",
        author=data.get("author") or "",
    )


def _actor() -> str:
    return os.environ.get("SHIPYARD_ACTOR") or os.environ.get("USER") or "sdk"
