"""The OpenAI-compatible routes (/v1/...) and the health routes, as raw ASGI endpoints."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import orjson
from starlette.routing import Route

from shipyard.asgi import Receive, Scope, Send, api_endpoint, header, read_body, send_bytes, wait_disconnect
from shipyard.auth.access import PRINCIPAL
from shipyard.config import LimitsConfig
from shipyard.errors import InvalidRequest, NotFound, PayloadTooLarge, PermissionDenied, ServiceUnavailable
from shipyard.gateway.pipeline import Call, Gateway
from shipyard.gateway.routing import Router
from shipyard.wire.openai import RequestShape, check_chat, check_completion, parse_body

__all__ = ["GatewayRoutes", "ROUTING_HEADERS"]

# Headers some proxies use to pick an upstream. Shipyard never does; asking for it is refused.
ROUTING_HEADERS = frozenset(
    {
        b"api-base",
        b"base-url",
        b"x-api-base",
        b"x-base-url",
        b"x-upstream-url",
        b"x-target-url",
        b"x-litellm-api-base",
        b"x-forward-to",
    }
)

Checker = Callable[[dict[str, Any], LimitsConfig], RequestShape]


class GatewayRoutes:
    """Holds the gateway and the drain state that the routes consult."""

    def __init__(self, gateway: Gateway, limits: LimitsConfig) -> None:
        self.gateway = gateway
        self.limits = limits
        self.draining = False
        self.inflight = 0
        self.access: Any = None  # shipyard.auth.access.Access: the caller's deployment scope and limits (issue 6)

    def routes(self) -> list[Route]:
        return [
            Route("/v1/chat/completions", api_endpoint(self.chat)),
            Route("/v1/completions", api_endpoint(self.completion)),
            Route("/v1/models", api_endpoint(self.models, ("GET",))),
            Route("/v1/models/{model:path}", api_endpoint(self.model, ("GET",))),
            Route("/healthz", api_endpoint(self.healthz, ("GET",))),
            Route("/readyz", api_endpoint(self.readyz, ("GET",))),
            # Last: anything else under /v1 is a JSON 404. Without it, Starlette answers a path with a trailing
            # slash with a redirect built from the Host header, and the Host header must play no part.
            Route("/v1/{rest:path}", api_endpoint(self.unknown, None)),
        ]

    async def chat(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._call(scope, receive, send, "chat.completions", "/chat/completions", check_chat)

    async def completion(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._call(scope, receive, send, "completions", "/completions", check_completion)

    async def _call(self, scope: Scope, receive: Receive, send: Send, endpoint: str, path: str, check: Checker) -> None:
        for name, _ in scope["headers"]:
            if name in ROUTING_HEADERS:
                raise InvalidRequest(
                    f"The '{name.decode()}' header is refused: where a request goes is decided by the deployment.",
                    code="routing_field_refused",
                )
        raw = await read_body(scope, receive, self.limits.max_body_bytes)
        body = parse_body(raw)
        body, prompt_ref = await self._render_prompt(scope, body, endpoint)
        shape = check(body, self.limits)
        dep = self.gateway.deployment(shape.model)
        if dep.config.max_body_bytes is not None and len(raw) > dep.config.max_body_bytes:
            raise PayloadTooLarge(
                f"The request body is {len(raw)} bytes; deployment '{dep.name}' accepts at most "
                f"{dep.config.max_body_bytes}.",
                code="body_too_large",
            )
        principal, ticket = await self.access.admit(scope, dep.name) if self.access is not None else (None, None)
        call = Call(endpoint, path, body, shape)
        call.api_key_id = principal.id if principal is not None else None
        call.prompt_ref = prompt_ref
        call.traceparent = header(scope, b"traceparent")  # W3C trace context: the call joins the caller's trace
        self.inflight += 1
        # Serve in this task; a watcher cancels it if the client goes away (stopping the engine's work too).
        task = asyncio.current_task()
        assert task is not None
        state = _Watch()
        watcher = asyncio.ensure_future(_cancel_on_disconnect(receive, task, state))
        try:
            await self.gateway.serve(call, dep, send)
        except asyncio.CancelledError:
            if not state.client_gone:
                raise
            task.uncancel()
        finally:
            state.finished = True
            watcher.cancel()
            self.inflight -= 1
            if ticket is not None:
                self.access.settle(ticket, call.target.model if call.target is not None else None, call.usage)

    async def _render_prompt(
        self, scope: Scope, body: dict[str, Any], endpoint: str
    ) -> tuple[dict[str, Any], str | None]:
        """A prompt named in the request, or bound to the deployment, rendered into the body (registry/)."""
        dep = self.gateway.router.get(body["model"]) if isinstance(body.get("model"), str) else None
        if dep is None or self.gateway.prompts is None:
            return body, None  # unknown deployment: the checks below answer, and no prompt is looked up
        bound = dep.config.prompt
        if bound is None and "prompt" not in body and "variables" not in body:
            return body, None
        if endpoint == "completions" and bound is None and "variables" not in body:
            return body, None  # a plain completion: `prompt` is its text
        # Checked before any lookup, so a key learns nothing about prompts of deployments it may not call; naming
        # a prompt in the request reads the registry, so it needs prompts:read (a bound prompt is the operator's).
        principal = scope.get(PRINCIPAL)
        if principal is not None:
            if not principal.allows_deployment(dep.name):
                raise PermissionDenied(
                    f"This API key may not call deployment '{dep.name}'.", param="model", code="deployment_not_allowed"
                )
            if endpoint == "chat.completions" and "prompt" in body and not principal.has("prompts:read"):
                raise PermissionDenied("Naming a prompt needs the 'prompts:read' scope.", code="missing_scope")
        return await self.gateway.prompts.prepare(body, endpoint, bound)

    async def models(self, scope: Scope, receive: Receive, send: Send) -> None:
        data = [_model_entry(name) for name in self.gateway.router.deployments]
        await send_bytes(send, 200, orjson.dumps({"object": "list", "data": data}))

    async def model(self, scope: Scope, receive: Receive, send: Send) -> None:
        name = scope["path_params"]["model"]
        if self.gateway.router.get(name) is None:
            raise NotFound(f"The model '{name}' does not exist.", param="model", code="model_not_found")
        await send_bytes(send, 200, orjson.dumps(_model_entry(name)))

    async def unknown(self, scope: Scope, receive: Receive, send: Send) -> None:
        raise NotFound(f"No route for {scope['method']} {scope['path']}.", code="route_not_found")

    async def healthz(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send_bytes(send, 200, b'{"status":"ok"}')

    async def readyz(self, scope: Scope, receive: Receive, send: Send) -> None:
        report = readiness(self.gateway.router, self.draining)
        if not report["ready"]:
            reason = "draining" if self.draining else "not every deployment has a healthy target"
            error = ServiceUnavailable(f"Not ready: {reason}.", code="not_ready")
            body = orjson.loads(error.body())
            body.update(report)
            await send_bytes(send, 503, orjson.dumps(body))
            return
        await send_bytes(send, 200, orjson.dumps(report))


class _Watch:
    __slots__ = ("client_gone", "finished")

    def __init__(self) -> None:
        self.client_gone = False
        self.finished = False


async def _cancel_on_disconnect(receive: Receive, task: asyncio.Task, state: _Watch) -> None:
    await wait_disconnect(receive)
    if not state.finished:  # after the response, uvicorn reports "disconnect" too: that is not the client leaving
        state.client_gone = True
        task.cancel()


def _model_entry(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 0, "owned_by": "shipyard"}


def readiness(router: Router, draining: bool) -> dict[str, Any]:
    now = Router.now()
    deployments = {}
    for name, dep in router.deployments.items():
        targets = [
            {
                "engine": t.engine.name,
                "model": t.model,
                "healthy": t.engine.healthy,
                "ejected": t.ejected(now),
                "cooling": t.cooling(now),
            }
            for t in dep.targets
        ]
        deployments[name] = {"ready": dep.ready(now), "targets": targets}
    ready = not draining and all(d["ready"] for d in deployments.values())
    return {"ready": ready, "draining": draining, "deployments": deployments}
