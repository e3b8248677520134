"""The registry inside a running server: prompt rendering and model aliases for the gateway, the services the
control-plane API uses, and registering the bundled model on first start.

Deployment targets may name a model by alias (`model: gpt@champion`). The gateway never waits on the store for
that: a background task keeps an alias → served-model map fresh (every `refresh` seconds), and the API refreshes it
at once after an alias move, so the next request follows the move without a restart.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shipyard.config import BUNDLED_MODEL, LocalEngineConfig
from shipyard.engines.base import LocalEngine, prepare_local_model
from shipyard.errors import ShipyardError
from shipyard.registry.artifacts import ArtifactStore
from shipyard.registry.datasets import DatasetService
from shipyard.registry.models import ModelService, parse_model_ref
from shipyard.registry.resolver import PromptResolver

if TYPE_CHECKING:
    from shipyard.server import AppState

__all__ = ["ModelResolver", "Registry", "served_name", "start_registry"]

log = logging.getLogger("shipyard.registry")
BUNDLED_NAME = "smollm2"


def served_name(version: Mapping[str, Any]) -> str:
    """The model name an engine knows a version by: the provider's id for a hosted version, else `name:version`
    (serve registry weights under that name, e.g. vLLM's --served-model-name or a LoRA adapter's name)."""
    if version["kind"] == "hosted":
        return str(version["uri"])
    return f"{version['name']}:{version['version']}"


class ModelResolver:
    """Target model names with an alias (`name@alias`) → the served name of the version the alias points at."""

    def __init__(self, models: ModelService, refs: set[str], refresh: float = 1.0) -> None:
        self.models = models
        self.refs = refs
        self.refresh_seconds = refresh
        self.mapping: dict[str, str] = {}

    def model_for(self, target_model: str) -> str:
        return self.mapping.get(target_model, target_model)

    def refresh(self) -> None:
        for ref in self.refs:
            try:
                self.mapping[ref] = served_name(self.models.get(parse_model_ref(ref)))
            except ShipyardError as exc:
                if ref in self.mapping:
                    log.warning("model alias %s no longer resolves (%s); keeping %s", ref, exc, self.mapping[ref])
                else:
                    log.warning("model alias %s does not resolve yet: %s", ref, exc)

    async def run(self) -> None:
        while True:
            try:
                await asyncio.to_thread(self.refresh)
            except Exception:  # the store may be briefly unreachable: keep the last mapping, try again
                log.exception("refreshing model aliases failed")
            await asyncio.sleep(self.refresh_seconds)


class Registry:
    """The registry services of one server."""

    def __init__(self, state: AppState) -> None:
        assert state.store is not None
        self.artifacts = ArtifactStore(state.settings.artifacts_root)
        self.models = ModelService(state.store.registry.models, self.artifacts)
        self.datasets = DatasetService(state.store.registry.datasets, self.artifacts)
        refs = {t.model for d in state.settings.deployments.values() for t in d.targets if t.model and "@" in t.model}
        self.model_resolver = ModelResolver(self.models, refs)
        self.followers = [e for e in state.engines.values() if isinstance(e, LocalEngine) and e.registry_ref]

    def models_changed(self) -> None:
        """After an alias move (any thread): target aliases re-resolved now, local engines told to look now."""
        self.model_resolver.refresh()
        for engine in self.followers:
            engine.poke()


async def start_registry(state: AppState) -> None:
    """Called once from the server's start: wire prompts and model aliases into the gateway."""
    assert state.store is not None
    registry = Registry(state)
    state.registry = registry
    state.gateway.prompts = PromptResolver(state.store.registry.prompts)
    if registry.model_resolver.refs:
        await asyncio.to_thread(registry.model_resolver.refresh)
        state.gateway.models = registry.model_resolver
        state.tasks.append(asyncio.create_task(registry.model_resolver.run()))
    # A local engine on `registry:smollm2@…` resolves the bundled model's registration on a fresh data dir: convert
    # and register it before engines start. Otherwise registering it need not hold up the start.
    if any(e.registry_ref is not None and e.registry_ref.name == BUNDLED_NAME for e in registry.followers):
        await asyncio.to_thread(prepare_local_model, BUNDLED_MODEL, state.settings.data_dir)
        await _register_bundled(registry.models, state.settings.data_dir)
    elif any(isinstance(e, LocalEngineConfig) and e.model == BUNDLED_MODEL for e in state.settings.engines.values()):
        state.tasks.append(asyncio.create_task(_register_bundled(registry.models, state.settings.data_dir)))
    for engine in registry.followers:
        engine.use_registry(registry.models)


async def _register_bundled(models: ModelService, data_dir: Path) -> None:
    try:
        await asyncio.to_thread(register_bundled, models, data_dir)
    except (ShipyardError, OSError) as exc:
        log.warning("could not register the bundled model: %s", exc)


def register_bundled(models: ModelService, data_dir: Path) -> dict[str, Any] | None:
    """First start: the converted bundled model becomes `smollm2:1` (referenced, not copied), alias `champion`."""
    from shipyard.engines.local.bundled import converted_dir, is_converted

    folder = converted_dir(data_dir)
    if not is_converted(folder) or any(v["source"] == BUNDLED_MODEL for v in models.repo.versions(BUNDLED_NAME)):
        return None
    version, created = models.register(
        BUNDLED_NAME, folder, copy=False, message="bundled SmolLM2-135M-Instruct", author="shipyard",
        origin=BUNDLED_MODEL,
    )  # fmt: skip
    if created and not models.repo.aliases(BUNDLED_NAME):
        models.repo.set_alias(BUNDLED_NAME, "champion", version["version"])
    log.info("registered the bundled model as %s:%d", BUNDLED_NAME, version["version"])
    return version
