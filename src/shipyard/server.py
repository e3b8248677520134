"""App factory and process lifecycle: the gateway, the control-plane API, engines, store, shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from types import FrameType

import uvicorn
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import Mount, Route

from shipyard.asgi import api_endpoint, not_found
from shipyard.auth.access import Access, AccessMiddleware
from shipyard.auth.secrets import SecretBox
from shipyard.config import Settings
from shipyard.engines.base import Engine, build_engine
from shipyard.engines.secrets import EngineSecrets, resolve_engine_secrets
from shipyard.errors import ServiceUnavailable, ShipyardError
from shipyard.gateway.pipeline import Gateway
from shipyard.gateway.routes import GatewayRoutes, readiness
from shipyard.gateway.routing import Router
from shipyard.gateway.upstream import client_session
from shipyard.registry.runtime import Registry, start_registry
from shipyard.store import Store
from shipyard.tracing.service import Tracing

__all__ = ["AppState", "create_app", "serve"]

log = logging.getLogger("shipyard")


@dataclass
class AppState:
    """Everything one running server holds; built by the lifespan, reachable from every route."""

    settings: Settings
    engines: dict[str, Engine]
    router: Router
    gateway: Gateway
    routes: GatewayRoutes
    store: Store | None = None
    tracing: Tracing | None = None  # issue 3: trace writer, metrics, retention
    registry: Registry | None = None  # issue 4: artifacts, models, datasets
    access: Access | None = None  # issue 6: keys, scopes, limits, audit (shipyard.auth)
    engine_secrets: EngineSecrets | None = None  # issue 6: engines' `api_key_secret`, re-read when one changes
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


def _public_config(config: object) -> dict[str, object]:
    """Configs as stored: models dumped to JSON types (keys are only ever env-variable names)."""
    return config.model_dump(mode="json")  # type: ignore[attr-defined]


def create_app(settings: Settings, store: Store | None = None) -> Starlette:
    """The whole server as one ASGI app. Engines start in its lifespan; the store opens there too unless given."""
    from shipyard.api import create_api

    engines = {name: build_engine(name, cfg, settings.data_dir) for name, cfg in settings.engines.items()}
    router = Router(engines, settings.deployments, settings.ejection)
    gateway = Gateway(router, settings.limits, recorder=None)
    routes = GatewayRoutes(gateway, settings.limits)
    state = AppState(settings, engines, router, gateway, routes, store=store)
    state.access = routes.access = Access(settings)
    if store is not None and any(e.key_secret for e in engines.values()):  # a bad one stops `up` before it listens
        state.engine_secrets = resolve_engine_secrets(engines, SecretBox(store.auth.secrets))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await _start(state)
        try:
            yield
        finally:
            await _stop(state)

    # /metrics and OTLP's POST /v1/traces answer from `state.tracing`, built in the lifespan; listed before the
    # gateway's routes because those end with a /v1 catch-all.
    tracing_routes = [
        Route("/metrics", api_endpoint(lambda *a: _tracing(state).metrics_endpoint(*a), ("GET",))),
        Route("/v1/traces", api_endpoint(lambda *a: _tracing(state).otlp_endpoint(*a), ("POST",))),
    ]
    app = Starlette(
        routes=[*tracing_routes, *routes.routes(), Mount("/api", create_api(state))],
        lifespan=lifespan,
        middleware=[Middleware(AccessMiddleware, access=state.access)],  # every route's key check (issue 6)
    )
    app.router.default = not_found  # type: ignore[method-assign]
    app.state.shipyard = state
    return app


async def _start(state: AppState) -> None:
    settings = state.settings
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    if state.store is None:
        state.store = await asyncio.to_thread(Store, settings.store_url)
    store = state.store
    await asyncio.to_thread(store.engines.replace_all, {n: _public_config(c) for n, c in settings.engines.items()})
    await asyncio.to_thread(
        store.deployments.replace_all, {n: _public_config(c) for n, c in settings.deployments.items()}
    )
    assert state.access is not None
    await state.access.start(store)  # issue 6: first-start admin key, limit counters
    if state.engine_secrets is None:
        state.engine_secrets = await asyncio.to_thread(resolve_engine_secrets, state.engines, state.access.secrets)
    if state.engine_secrets.users:  # follow secrets replaced by other processes sharing the store
        state.tasks.append(asyncio.create_task(state.engine_secrets.run(settings.auth.secrets_refresh_seconds)))
    state.tracing = Tracing(settings, store)
    await state.tracing.start()
    if settings.tracing.enabled:
        state.gateway.recorder = state.tracing.recorder
    await start_registry(state)  # issue 4: prompts and model aliases for the gateway, the bundled model registered
    state.gateway.session = client_session()
    for engine in state.engines.values():
        await engine.start()
    state.tasks.append(asyncio.create_task(_announce_ready(state)))
    if settings.online_evals:  # issue 5: score a sample of live calls, in the background
        from shipyard.evals.online import OnlineEvaluator

        evaluator = OnlineEvaluator(list(settings.online_evals), store.online_scores)
        state.tasks.append(asyncio.create_task(evaluator.run()))
    # Everything built so far lives as long as the server: keep it out of the cyclic GC's way. Full collections
    # over it were the gateway's tail latency (p99 at concurrency 16 went from ~50 ms to ~11 ms; bench/).
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 50, 100)


def _tracing(state: AppState) -> Tracing:
    if state.tracing is None:
        raise ServiceUnavailable("Tracing is starting.", code="not_ready")
    return state.tracing


async def _announce_ready(state: AppState) -> None:
    started = time.monotonic()
    while not readiness(state.router, False)["ready"]:
        await asyncio.sleep(0.25)
    log.info(
        "ready: %d deployment(s) serving after %.1fs",
        len(state.router.deployments),
        time.monotonic() - started,
    )


async def _stop(state: AppState) -> None:
    for task in state.tasks:
        task.cancel()
    await asyncio.gather(*(engine.stop() for engine in state.engines.values()), return_exceptions=True)
    if state.gateway.session is not None:
        await state.gateway.session.close()
    if state.tracing is not None:
        await state.tracing.stop()
    if state.access is not None:
        await state.access.stop()
    if state.store is not None:
        state.store.close()


class _DrainingServer(uvicorn.Server):
    """On the first SIGTERM/SIGINT: fail /readyz, let open requests finish (up to drain_seconds), exit 0.
    A second signal exits at once."""

    def __init__(self, config: uvicorn.Config, routes: GatewayRoutes, drain_seconds: float) -> None:
        super().__init__(config)
        self._routes = routes
        self._drain_seconds = drain_seconds
        self._loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sockets: list | None = None) -> None:  # type: ignore[override]
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Not uvicorn's handler: it re-raises the signal after shutdown, which would not exit 0.
        if self._routes.draining or self._drain_seconds <= 0 or self._loop is None:
            self.force_exit = self._routes.draining
            self.should_exit = True
            return
        self._routes.draining = True
        log.info(
            "%s: draining (up to %.0fs for %d open request(s))",
            signal.Signals(sig).name,
            self._drain_seconds,
            self._routes.inflight,
        )
        self._loop.call_soon_threadsafe(lambda: self._loop.create_task(self._drain()))  # type: ignore[union-attr]

    async def _drain(self) -> None:
        deadline = time.monotonic() + self._drain_seconds
        while self._routes.inflight > 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if self._routes.inflight:
            log.warning("drain period over; closing %d open request(s)", self._routes.inflight)
        self.should_exit = True


def serve(settings: Settings) -> None:
    """Run the server in the foreground until a signal stops it."""
    logging.basicConfig(
        level=settings.server.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    # Open the store and build every engine before listening, so configuration mistakes are clear errors.
    app = create_app(settings, Store(settings.store_url))
    config = uvicorn.Config(
        app,
        host=settings.server.host,
        port=settings.server.port,
        loop="uvloop",
        http="httptools",
        log_level=settings.server.log_level,
        access_log=False,
        timeout_graceful_shutdown=2,
        proxy_headers=False,
    )
    server = _DrainingServer(config, app.state.shipyard.routes, settings.server.drain_seconds)
    server.run()
    if not server.started:
        raise ShipyardError("the server did not start (see the messages above)")
