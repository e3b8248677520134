"""Engines: every engine is an OpenAI-compatible HTTP server the gateway calls the same way.

One extension shape: a subclass of `Engine` registered by its config `kind`. Built-ins register
themselves exactly as a third party would, with `register_engine`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from shipyard.config import (
    BUNDLED_MODEL,
    LaunchEngineConfig,
    LocalEngineConfig,
    OpenAIEngineConfig,
)
from shipyard.engines.health import HealthPoller, origin
from shipyard.engines.local.follow import (
    REGISTRY_PREFIX,
    Endpoint,
    SwapController,
    WorkerHandle,
    WorkerProcess,
    parse_registry_model,
    servable_version,
)
from shipyard.engines.supervisor import ManagedProcess, free_port
from shipyard.errors import ConfigError, EngineError

if TYPE_CHECKING:
    from shipyard.registry.models import ModelService

__all__ = [
    "ENGINE_KINDS",
    "Engine",
    "LaunchEngine",
    "LocalEngine",
    "OpenAIEngine",
    "build_engine",
    "register_engine",
]

ENGINE_KINDS: dict[str, type[Engine]] = {}


def register_engine(kind: str) -> Any:
    def decorate(cls: type[Engine]) -> type[Engine]:
        ENGINE_KINDS[kind] = cls
        cls.kind = kind
        return cls

    return decorate


class Engine:
    """Base class. `base_url` ends with the API prefix (e.g. http://127.0.0.1:8101/v1)."""

    kind: ClassVar[str] = ""

    def __init__(self, name: str, config: Any, data_dir: Path) -> None:
        self.name = name
        self.config = config
        self.data_dir = data_dir
        self.base_url = ""

    @property
    def served_model(self) -> str:
        """The model name sent upstream when a target names none."""
        return self.name

    @property
    def managed(self) -> bool:
        return False

    @property
    def healthy(self) -> bool:
        return True

    def auth_headers(self) -> dict[str, str]:
        return {}

    @property
    def key_secret(self) -> str | None:
        """Name of the stored secret that holds this engine's API key, if it uses one (`api_key_secret`)."""
        return None

    def set_api_key(self, key: str) -> None:
        """Use `key` (decrypted from the secret store) as the bearer token from the next request on."""
        raise ConfigError(f"engine {self.name!r} ({self.kind}) does not take a stored API key")

    def describe(self) -> dict[str, Any]:
        """Public description (never secrets)."""
        return {"name": self.name, "kind": self.kind, "base_url": self.base_url, "healthy": self.healthy}

    async def start(self) -> None:
        """Start whatever must run (processes); return without waiting for readiness."""

    async def wait_ready(self, timeout: float | None = None) -> bool:
        return True

    async def stop(self) -> None:
        """Stop what `start` started."""


def _key_headers(env_name: str | None, engine: str) -> dict[str, str]:
    if not env_name:
        return {}
    key = os.environ.get(env_name)
    if not key:
        raise ConfigError(f"engine {engine!r}: environment variable {env_name} (its API key) is not set")
    return {"authorization": f"Bearer {key}"}


@register_engine("openai")
class OpenAIEngine(Engine):
    """A server Shipyard does not run: reached by URL, its key read from the environment at start."""

    config: OpenAIEngineConfig

    def __init__(self, name: str, config: OpenAIEngineConfig, data_dir: Path) -> None:
        super().__init__(name, config, data_dir)
        self.base_url = config.base_url
        self._headers = {**config.headers, **_key_headers(config.api_key_env, name)}
        self._poller: HealthPoller | None = None
        if config.health_path:
            url = origin(config.base_url) + "/" + config.health_path.lstrip("/")
            self._poller = HealthPoller(name, url, config.health_interval, self._headers)

    def auth_headers(self) -> dict[str, str]:
        return self._headers

    @property
    def key_secret(self) -> str | None:
        return self.config.api_key_secret

    def set_api_key(self, key: str) -> None:
        # A new dict, bound in one step: a request copying the old one (on another thread) never sees it change.
        self._headers = {**self._headers, "authorization": f"Bearer {key}"}
        if self._poller is not None:
            self._poller.headers = self._headers

    @property
    def healthy(self) -> bool:
        return self._poller is None or self._poller.healthy

    async def start(self) -> None:
        if self._poller is not None:
            self._poller.start()

    async def stop(self) -> None:
        if self._poller is not None:
            await self._poller.stop()


class _ProcessEngine(Engine):
    process: ManagedProcess | None = None

    @property
    def managed(self) -> bool:
        return True

    @property
    def healthy(self) -> bool:
        return self.process is not None and self.process.healthy

    async def wait_ready(self, timeout: float | None = None) -> bool:
        return self.process is not None and await self.process.wait_ready(timeout)

    async def stop(self) -> None:
        if self.process is not None:
            await self.process.stop()

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        if self.process is not None:
            info.update(pid=self.process.pid, restarts=self.process.restarts, last_error=self.process.last_error)
        return info


@register_engine("launch")
class LaunchEngine(_ProcessEngine):
    """An external server started from a command line and supervised."""

    config: LaunchEngineConfig

    def __init__(self, name: str, config: LaunchEngineConfig, data_dir: Path) -> None:
        super().__init__(name, config, data_dir)
        self.port = config.port or free_port(config.host)
        self.base_url = f"http://{config.host}:{self.port}{config.base_path.rstrip('/')}"
        self._headers = _key_headers(config.api_key_env, name)

    def auth_headers(self) -> dict[str, str]:
        return self._headers

    def _command(self) -> list[str]:
        values = {"port": str(self.port), "host": self.config.host}
        return [part.format(**values) for part in self.config.command]

    async def start(self) -> None:
        cfg = self.config
        self.process = ManagedProcess(
            self.name,
            self._command,
            lambda: f"http://{cfg.host}:{self.port}{cfg.health_path}",
            env=cfg.env,
            startup_timeout=cfg.startup_timeout,
            backoff=cfg.restart_backoff,
            backoff_max=cfg.restart_backoff_max,
            health_interval=cfg.health_interval,
            unhealthy_restart_after=cfg.unhealthy_restart_after,
        )
        self.process.start()


def prepare_local_model(model: str, data_dir: Path) -> Path:
    """Resolve a local engine's `model` to a folder, converting the bundled GGUF in a child process."""
    if model == BUNDLED_MODEL:
        from shipyard.engines.local.bundled import converted_dir, is_converted

        target = converted_dir(data_dir)
        if not is_converted(target):
            result = subprocess.run([sys.executable, "-m", "shipyard.engines.local.bundled", str(data_dir)])
            if result.returncode != 0:
                raise EngineError("converting the bundled model failed (see the messages above)")
        return target
    if model.startswith("bundled:"):
        raise ConfigError(f"unknown bundled model {model!r}; the bundled model is {BUNDLED_MODEL!r}")
    path = Path(model).expanduser()
    if not (path / "config.json").is_file():
        raise ConfigError(f"local engine model {model!r} is not a Hugging Face model folder (no config.json)")
    return path


@register_engine("local")
class LocalEngine(_ProcessEngine):
    """Shipyard's own worker process (`shipyard.engines.local.worker`).

    With `model: registry:NAME@ALIAS` the engine serves a registered version and follows the alias with
    blue-green swaps (`shipyard.engines.local.follow`); `endpoint` (base URL + served name) is then replaced as a
    whole at each swap, so a request never pairs one worker's URL with the other's model name.
    """

    config: LocalEngineConfig

    def __init__(self, name: str, config: LocalEngineConfig, data_dir: Path) -> None:
        super().__init__(name, config, data_dir)
        self.registry_ref = parse_registry_model(config.model) if config.model.startswith(REGISTRY_PREFIX) else None
        if config.model != BUNDLED_MODEL and self.registry_ref is None:
            prepare_local_model(config.model, data_dir)  # a bad path is a configuration error, found at once
        self.port = free_port()
        self.endpoint = Endpoint(f"http://127.0.0.1:{self.port}/v1", config.served_name or name)
        self.model_dir: Path | None = None
        self.models: ModelService | None = None  # the server's registry, given before start for registry models
        self.follower: SwapController | None = None

    @property  # type: ignore[override]
    def base_url(self) -> str:
        return self.endpoint.base_url

    @base_url.setter
    def base_url(self, value: str) -> None:
        if hasattr(self, "endpoint"):  # Engine.__init__ sets "" before the endpoint exists
            self.endpoint = Endpoint(value, self.endpoint.served_name)

    @property
    def served_model(self) -> str:
        return self.endpoint.served_name

    def use_registry(self, models: ModelService) -> None:
        self.models = models

    def _worker_command(self, model_dir: Path, served_name: str, port: int) -> list[str]:
        cfg = self.config
        command = [
            sys.executable,
            "-m",
            "shipyard.engines.local.worker",
            "--model-dir",
            str(model_dir),
            "--served-name",
            served_name,
            "--port",
            str(port),
            "--device",
            cfg.device,
            "--dtype",
            cfg.dtype,
            "--log-level",
            "warning",
        ]
        for flag, value in (
            ("--kv-cache-tokens", cfg.kv_cache_tokens),
            ("--max-batch-tokens", cfg.max_batch_tokens),
            ("--threads", cfg.threads),
        ):
            if value is not None:
                command += [flag, str(value)]
        return command

    def _command(self) -> list[str]:
        assert self.model_dir is not None
        return self._worker_command(self.model_dir, self.served_model, self.port)

    async def start(self) -> None:
        import asyncio

        if self.registry_ref is not None:
            await self._start_following()
            return
        self.model_dir = await asyncio.to_thread(prepare_local_model, self.config.model, self.data_dir)
        self.process = ManagedProcess(
            self.name,
            self._command,
            lambda: f"http://127.0.0.1:{self.port}/health",
            startup_timeout=self.config.startup_timeout,
        )
        self.process.start()

    async def _start_following(self) -> None:
        models, ref, cfg = self.models, self.registry_ref, self.config
        if models is None or ref is None:
            raise EngineError(f"engine {self.name!r}: {cfg.model} needs the server's model registry (a store)")

        def switch(worker: WorkerHandle) -> None:
            assert isinstance(worker, WorkerProcess)
            self.endpoint = worker.endpoint  # URL and name together, one assignment
            self.process = worker.process
            self.port = worker.port

        self.follower = SwapController(
            self.name,
            lambda: servable_version(models, ref),
            lambda servable: WorkerProcess(self.name, servable, self._worker_command, cfg.startup_timeout),
            switch,
            startup_timeout=cfg.startup_timeout,
            drain_timeout=cfg.drain_timeout,
            interval=cfg.follow_interval,
        )
        await self.follower.start()

    def poke(self) -> None:
        """Check the registry reference now (after an alias move through the API); any thread."""
        if self.follower is not None:
            self.follower.poke()

    async def stop(self) -> None:
        if self.follower is not None:
            await self.follower.stop()
        else:
            await super().stop()

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info["model"] = self.config.model
        info["served_model"] = self.served_model
        if self.follower is not None:
            state = self.follower.describe()
            info.update(serving=state["serving"], pending=state["pending"], swaps=state["swaps"])
            info["last_error"] = state["last_error"] or info.get("last_error")
        return info


def build_engine(name: str, config: Any, data_dir: Path) -> Engine:
    cls = ENGINE_KINDS.get(config.kind)
    if cls is None:
        raise ConfigError(f"engine {name!r}: unknown kind {config.kind!r}; known: {sorted(ENGINE_KINDS)}")
    return cls(name, config, data_dir)
