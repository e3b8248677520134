"""Shipyard's local engine: a separate process that serves one model over the OpenAI HTTP API.

    python -m shipyard.engines.local.worker --model-dir DIR --served-name smollm2 --port 8101

The gateway reaches it like any other engine. Parameters the engine cannot honour are refused
with a 400 naming them; nothing is silently ignored.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.routing import Route

from shipyard.asgi import Receive, Scope, Send, SseStream, api_endpoint, read_body, send_bytes
from shipyard.config import LimitsConfig
from shipyard.engines.local.runtime import EngineStopped, LocalModel
from shipyard.engines.local.sampling import SamplingParams
from shipyard.engines.local.textstream import IncrementalDecoder, StopMatcher
from shipyard.errors import ApiError, InvalidRequest, NotFound, ServiceUnavailable
from shipyard.wire.openai import check_chat, check_completion, now, parse_body

__all__ = ["LocalWorker", "main"]

log = logging.getLogger("shipyard.engine.local")

# The gateway enforces the configured caps; the worker only guards against absurd input.
_WORKER_LIMITS = LimitsConfig(max_n=64, max_tokens=1 << 20, max_stop=16, max_stop_chars=1024, max_messages=100_000)
_MAX_BODY = 64 * 1024 * 1024


def _unsupported(param: str, what: str) -> InvalidRequest:
    return InvalidRequest(
        f"'{param}' {what} is not supported by the local engine; remove it or route to an engine that supports it.",
        param=param,
        code="unsupported_parameter",
    )


def _refuse_common(body: dict[str, Any]) -> None:
    if body.get("logit_bias"):
        raise _unsupported("logit_bias", "")
    for name in ("presence_penalty", "frequency_penalty"):
        if body.get(name):
            raise _unsupported(name, "other than 0")
    if body.get("min_p"):
        raise _unsupported("min_p", "")
    if body.get("repetition_penalty") not in (None, 1, 1.0):
        raise _unsupported("repetition_penalty", "other than 1")


def _refuse_chat(body: dict[str, Any]) -> None:
    _refuse_common(body)
    fmt = body.get("response_format")
    if fmt and fmt.get("type") != "text":
        raise _unsupported("response_format", f"of type {fmt.get('type')!r}")
    if body.get("logprobs") or body.get("top_logprobs"):
        raise _unsupported("logprobs", "")
    if body.get("tools") or body.get("functions"):
        raise _unsupported("tools", "(tool calling)")
    if body.get("tool_choice") not in (None, "none") or body.get("function_call") not in (None, "none"):
        raise _unsupported("tool_choice", "")
    for name in ("audio", "prediction", "web_search_options", "reasoning_effort", "verbosity"):
        if body.get(name) is not None:
            raise _unsupported(name, "")
    if body.get("modalities") not in (None, ["text"]):
        raise _unsupported("modalities", "other than ['text']")
    if body.get("store"):
        raise _unsupported("store", "= true")
    if body.get("service_tier") not in (None, "auto", "default"):
        raise _unsupported("service_tier", f"{body.get('service_tier')!r}")


def _refuse_completion(body: dict[str, Any]) -> None:
    _refuse_common(body)
    if body.get("logprobs") is not None:
        raise _unsupported("logprobs", "")
    if body.get("suffix"):
        raise _unsupported("suffix", "")
    if body.get("best_of") not in (None, body.get("n") or 1):
        raise _unsupported("best_of", "other than n")


def _message_text(index: int, message: dict[str, Any]) -> dict[str, Any]:
    content = message.get("content")
    if isinstance(content, list):
        parts = []
        for part in content:
            if part.get("type") != "text":
                raise _unsupported(f"messages[{index}].content", f"part of type {part.get('type')!r}")
            parts.append(part["text"])
        content = "".join(parts)
    role = "system" if message["role"] == "developer" else message["role"]
    return {"role": role, "content": content or ""}


def _sampling(body: dict[str, Any], seed_offset: int = 0) -> SamplingParams:
    temperature = body.get("temperature")
    top_p = body.get("top_p")
    seed = body.get("seed")
    return SamplingParams(
        temperature=1.0 if temperature is None else float(temperature),
        top_p=1.0 if top_p is None else float(top_p),
        top_k=max(0, body.get("top_k") or 0),
        seed=None if seed is None else seed + seed_offset,
    )


def _stops(body: dict[str, Any]) -> list[str]:
    stop = body.get("stop")
    return [] if stop is None else [stop] if isinstance(stop, str) else list(stop)


@dataclass(slots=True)
class Job:
    """One choice to generate."""

    index: int
    prompt: list[int]
    max_new: int
    sampling: SamplingParams
    stops: list[str]
    text: str = ""
    finish_reason: str | None = None
    completion_tokens: int = 0


class LocalWorker:
    def __init__(self, model: LocalModel, served_name: str) -> None:
        self.model = model
        self.served_name = served_name
        self.requests = 0  # generation requests being answered now: what a blue-green swap drains (local/follow)
        self._eos: set[int] = set()

    def app(self) -> Starlette:
        tokenizer = self.model.tokenizer
        if tokenizer is not None and tokenizer.eos_token_id is not None:
            self._eos = {int(tokenizer.eos_token_id)}

        @contextlib.asynccontextmanager
        async def lifespan(app: Starlette) -> AsyncIterator[None]:
            yield
            await asyncio.to_thread(self.model.close)

        return Starlette(
            routes=[
                Route("/v1/chat/completions", api_endpoint(self._counted(self.chat))),
                Route("/v1/completions", api_endpoint(self._counted(self.completion))),
                Route("/v1/models", api_endpoint(self.models, ("GET",))),
                Route("/health", api_endpoint(self.health, ("GET",))),
                Route("/stats", api_endpoint(self.stats, ("GET",))),
            ],
            lifespan=lifespan,
        )

    # -- routes ---------------------------------------------------------------------------------

    async def health(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self.model.running:
            raise ServiceUnavailable("The generation loop is not running.", code="engine_stopped")
        await send_bytes(send, 200, b'{"status":"ok"}')

    async def stats(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Generation counters: started, finished, cancelled, active, and live result handlers."""
        await send_bytes(send, 200, orjson.dumps({**self.model.stats(), "requests": self.requests}))

    async def models(self, scope: Scope, receive: Receive, send: Send) -> None:
        entry = {
            "id": self.served_name,
            "object": "model",
            "created": 0,
            "owned_by": "shipyard",
            "max_model_len": self.model.capacity,
        }
        await send_bytes(send, 200, orjson.dumps({"object": "list", "data": [entry]}))

    async def chat(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = parse_body(await read_body(scope, receive, _MAX_BODY))
        shape = check_chat(body, _WORKER_LIMITS)
        _refuse_chat(body)
        self._check_model(shape.model)
        messages = [_message_text(i, m) for i, m in enumerate(body["messages"])]
        prompt = await asyncio.to_thread(self.model.chat_prompt, messages)
        max_new = self._budget(len(prompt), shape.max_tokens)
        jobs = [Job(i, prompt, max_new, _sampling(body, i), _stops(body)) for i in range(shape.n)]
        await self._respond(scope, receive, send, "chat", jobs, len(prompt), shape.stream, shape.include_usage)

    async def completion(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = parse_body(await read_body(scope, receive, _MAX_BODY))
        shape = check_completion(body, _WORKER_LIMITS)
        _refuse_completion(body)
        self._check_model(shape.model)
        raw = body["prompt"]
        if isinstance(raw, str):
            prompts = [self.model.text_prompt(raw)]
        elif all(isinstance(p, str) for p in raw):
            prompts = [self.model.text_prompt(p) for p in raw]
        elif all(isinstance(t, int) for t in raw):
            prompts = [list(raw)]
        else:
            prompts = [list(p) for p in raw]
        for prompt in prompts:
            if any(t < 0 or t >= self.model.vocab_size for t in prompt):
                raise InvalidRequest("'prompt' holds token ids outside the vocabulary.", param="prompt")
        jobs = []
        for p_index, prompt in enumerate(prompts):
            max_new = self._budget(len(prompt), shape.max_tokens)
            for j in range(shape.n):
                index = p_index * shape.n + j
                jobs.append(Job(index, prompt, max_new, _sampling(body, index), _stops(body)))
                if body.get("echo"):
                    jobs[-1].text = self.model.tokenizer.decode(prompt)
        prompt_tokens = sum(len(p) for p in prompts)
        await self._respond(scope, receive, send, "completion", jobs, prompt_tokens, shape.stream, shape.include_usage)

    # -- helpers --------------------------------------------------------------------------------

    def _counted(self, handler: Callable[[Scope, Receive, Send], Awaitable[None]]) -> Any:
        async def counted(scope: Scope, receive: Receive, send: Send) -> None:
            self.requests += 1
            try:
                await handler(scope, receive, send)
            finally:
                self.requests -= 1

        return counted

    def _check_model(self, model: str) -> None:
        if model != self.served_name:
            raise NotFound(
                f"The model '{model}' does not exist; this engine serves '{self.served_name}'.",
                param="model",
                code="model_not_found",
            )

    def _budget(self, prompt_tokens: int, max_tokens: int | None) -> int:
        room = self.model.capacity - prompt_tokens
        if room < 1 or (max_tokens is not None and max_tokens > room):
            asked = f" and max_tokens asks for {max_tokens}" if max_tokens is not None else ""
            raise InvalidRequest(
                f"This model's maximum context length is {self.model.capacity} tokens; the prompt uses "
                f"{prompt_tokens} tokens{asked}. Shorten the prompt or lower max_tokens.",
                param="messages",
                code="context_length_exceeded",
            )
        return room if max_tokens is None else max_tokens

    async def _run(self, job: Job, request_id: str) -> AsyncIterator[str]:
        """Generate one choice, yielding text deltas; sets job.finish_reason and job.completion_tokens."""
        decoder = IncrementalDecoder(self.model.tokenizer)
        matcher = StopMatcher(job.stops)
        async for step in self.model.generate(request_id, job.prompt, job.max_new, job.sampling):
            if step.error:
                raise ServiceUnavailable(f"Generation failed: {step.error}", code="engine_error")
            job.completion_tokens = len(step.tokens)
            text = matcher.feed(decoder.push(step.tokens))
            if matcher.stopped:
                job.finish_reason = "stop"
            elif step.finished:
                text += matcher.feed(decoder.flush())
                text += matcher.flush()
                hit_eos = bool(step.tokens) and step.tokens[-1] in self._eos
                job.finish_reason = "stop" if hit_eos or matcher.stopped else "length"
            if text:
                yield text
            if job.finish_reason:
                return

    async def _respond(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        kind: str,
        jobs: list[Job],
        prompt_tokens: int,
        stream: bool,
        include_usage: bool,
    ) -> None:
        prefix = "chatcmpl" if kind == "chat" else "cmpl"
        cid = f"{prefix}-{uuid.uuid4().hex}"
        created = now()
        events: asyncio.Queue[tuple[Job, str | None, BaseException | None]] = asyncio.Queue()

        async def produce(job: Job) -> None:
            try:
                async for delta in self._run(job, f"{cid}-{job.index}"):
                    events.put_nowait((job, delta, None))
                events.put_nowait((job, None, None))
            except (ApiError, EngineStopped) as exc:
                events.put_nowait((job, None, exc))

        tasks = [asyncio.create_task(produce(job)) for job in jobs]
        disconnect = asyncio.create_task(_await_disconnect(receive))
        sse = SseStream(send) if stream else None
        try:
            if sse is not None:
                for job in jobs:
                    if kind == "chat" or job.text:
                        await sse.write(self._chunk(kind, cid, created, job, job.text, first=True))
            remaining = len(jobs)
            while remaining:
                getter = asyncio.create_task(events.get())
                done, _ = await asyncio.wait({getter, disconnect}, return_when=asyncio.FIRST_COMPLETED)
                if disconnect in done:
                    getter.cancel()
                    return
                job, delta, error = getter.result()
                if error is not None:
                    api_error = (
                        error if isinstance(error, ApiError) else ServiceUnavailable(str(error), code="engine_stopped")
                    )
                    if sse is None:
                        raise api_error
                    await sse.write(b"data: " + api_error.body() + b"\n\n")
                    await sse.close()
                    return
                if delta is None:
                    remaining -= 1
                    if sse is not None:
                        await sse.write(self._chunk(kind, cid, created, job, None))
                    continue
                if sse is not None:
                    await sse.write(self._chunk(kind, cid, created, job, delta))
                else:
                    job.text += delta
            usage = {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": sum(j.completion_tokens for j in jobs),
            }
            usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
            if sse is not None:
                if include_usage:
                    payload = {
                        "id": cid,
                        "object": self._object(kind, True),
                        "created": created,
                        "model": self.served_name,
                        "choices": [],
                        "usage": usage,
                    }
                    await sse.write(b"data: " + orjson.dumps(payload) + b"\n\n")
                await sse.write(b"data: [DONE]\n\n")
                await sse.close()
            else:
                await send_bytes(send, 200, self._final(kind, cid, created, jobs, usage))
        finally:
            disconnect.cancel()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    @staticmethod
    def _object(kind: str, chunk: bool) -> str:
        if kind == "chat":
            return "chat.completion.chunk" if chunk else "chat.completion"
        return "text_completion"

    def _chunk(self, kind: str, cid: str, created: int, job: Job, delta: str | None, first: bool = False) -> bytes:
        finish = job.finish_reason if delta is None else None
        if kind == "chat":
            if first:
                body: dict[str, Any] = {"role": "assistant", "content": ""}
            else:
                body = {} if delta is None else {"content": delta}
            choice = {"index": job.index, "delta": body, "logprobs": None, "finish_reason": finish}
        else:
            choice = {"index": job.index, "text": delta or "", "logprobs": None, "finish_reason": finish}
        payload = {
            "id": cid,
            "object": self._object(kind, True),
            "created": created,
            "model": self.served_name,
            "system_fingerprint": "shipyard-local",
            "choices": [choice],
        }
        return b"data: " + orjson.dumps(payload) + b"\n\n"

    def _final(self, kind: str, cid: str, created: int, jobs: list[Job], usage: dict[str, int]) -> bytes:
        choices: list[dict[str, Any]] = []
        for job in sorted(jobs, key=lambda j: j.index):
            if kind == "chat":
                message = {"role": "assistant", "content": job.text, "refusal": None}
                choices.append(
                    {
                        "index": job.index,
                        "message": message,
                        "logprobs": None,
                        "finish_reason": job.finish_reason,
                    }
                )
            else:
                choices.append(
                    {
                        "index": job.index,
                        "text": job.text,
                        "logprobs": None,
                        "finish_reason": job.finish_reason,
                    }
                )
        payload = {
            "id": cid,
            "object": self._object(kind, False),
            "created": created,
            "model": self.served_name,
            "system_fingerprint": "shipyard-local",
            "choices": choices,
            "usage": usage,
        }
        return orjson.dumps(payload)


async def _await_disconnect(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m shipyard.engines.local.worker", description=__doc__)
    parser.add_argument("--model-dir", required=True, type=Path)
    parser.add_argument("--served-name", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--kv-cache-tokens", type=int)
    parser.add_argument("--max-batch-tokens", type=int)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--log-level", default="info")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import uvicorn

    if not (args.model_dir / "config.json").is_file():
        raise SystemExit(f"shipyard: {args.model_dir} is not a Hugging Face model folder (no config.json)")
    model = LocalModel(
        args.model_dir,
        device=args.device,
        dtype=args.dtype,
        kv_cache_tokens=args.kv_cache_tokens,
        max_batch_tokens=args.max_batch_tokens,
        threads=args.threads,
    )
    model.load()
    worker = LocalWorker(model, args.served_name)
    uvicorn.run(
        worker.app(),
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        access_log=False,
        loop="uvloop",
        http="httptools",
        timeout_graceful_shutdown=5,
    )


if __name__ == "__main__":
    main()
