"""One Hugging Face causal LM behind transformers' continuous batching manager.

Requests are added one by one; the manager's background thread batches every active request into
each forward pass (paged attention), and hands each new token to this process's event loop.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shipyard.engines.local.sampling import SamplingParams, install_seeded_choice

__all__ = ["EngineStopped", "LocalModel", "Step"]

log = logging.getLogger("shipyard.engine.local")

_CPU_KV_TOKENS = 16384
_CPU_BATCH_TOKENS = 512
_PAGE = 256


class EngineStopped(Exception):
    """The generation loop is not running (it crashed or is shutting down)."""


@dataclass(slots=True)
class Step:
    """The state of one generation after a step: every token so far."""

    tokens: list[int]
    finished: bool
    error: str | None


class LocalModel:
    def __init__(
        self,
        path: Path,
        *,
        device: str = "auto",
        dtype: str = "auto",
        kv_cache_tokens: int | None = None,
        max_batch_tokens: int | None = None,
        threads: int | None = None,
    ) -> None:
        self.path = path
        self._device = device
        self._dtype = dtype
        self._kv_tokens = kv_cache_tokens
        self._batch_tokens = max_batch_tokens
        self._threads = threads
        self.manager: Any = None
        self.tokenizer: Any = None
        self.vocab_size = 0
        self.context_length = 0
        self.capacity = 0
        self.counts = {"started": 0, "finished": 0, "cancelled": 0}

    def load(self) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig
        from transformers.generation.configuration_utils import ContinuousBatchingConfig

        if self._threads:
            torch.set_num_threads(self._threads)
        device = self._device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        on_cpu = device == "cpu"
        dtype_name = self._dtype if self._dtype != "auto" else ("float32" if on_cpu else "bfloat16")
        self.tokenizer = AutoTokenizer.from_pretrained(self.path)
        model = AutoModelForCausalLM.from_pretrained(
            self.path, dtype=getattr(torch, dtype_name), attn_implementation="sdpa"
        ).to(device)
        model.eval()
        config = model.config.get_text_config()
        self.vocab_size = int(config.vocab_size)
        self.context_length = int(getattr(config, "max_position_embeddings", 0) or 4096)
        eos = self.tokenizer.eos_token_id if self.tokenizer.eos_token_id is not None else model.config.eos_token_id
        # Non-default temperature/top-p/top-k make transformers create the per-request processors;
        # every request then passes its own values.
        generation = GenerationConfig(
            do_sample=True,
            temperature=0.5,
            top_p=0.5,
            top_k=self.vocab_size,
            max_new_tokens=256,
            eos_token_id=eos,
            pad_token_id=self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else eos,
        )
        kv_tokens = self._kv_tokens or (_CPU_KV_TOKENS if on_cpu else None)
        cb = ContinuousBatchingConfig(
            per_request_processors=True,
            page_size=_PAGE,
            num_blocks=(kv_tokens + _PAGE - 1) // _PAGE if kv_tokens else None,
            max_batch_tokens=self._batch_tokens or (_CPU_BATCH_TOKENS if on_cpu else None),
            allow_block_sharing=True,
        )
        manager = model.init_continuous_batching(generation_config=generation, continuous_batching_config=cb)
        install_seeded_choice(manager.logit_processor)
        manager.start()
        self.manager = manager
        self.capacity = min(self.context_length, kv_tokens) if kv_tokens else self.context_length
        log.info("loaded %s on %s (%s), capacity %d tokens", self.path, device, dtype_name, self.capacity)

    @property
    def running(self) -> bool:
        return self.manager is not None and self.manager.is_running()

    def chat_prompt(self, messages: list[dict[str, Any]]) -> list[int]:
        ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        if isinstance(ids, dict) or hasattr(ids, "keys"):
            ids = ids["input_ids"]
        return list(ids)

    def text_prompt(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    async def generate(
        self, request_id: str, prompt: list[int], max_new_tokens: int, sampling: SamplingParams
    ) -> AsyncIterator[Step]:
        """Yield the growing token list until the generation ends; cancel it if the caller stops early."""
        if not self.running:
            raise EngineStopped("the generation loop is not running")
        manager = self.manager
        queue: asyncio.Queue[Any] = asyncio.Queue()
        manager.register_result_handler(request_id, queue.put_nowait)
        finished = False
        try:
            accepted = manager.add_request(
                prompt,
                request_id=request_id,
                max_new_tokens=max_new_tokens,
                streaming=True,
                **sampling.processor_kwargs(self.vocab_size),
            )
            if accepted is None:
                raise EngineStopped("the engine is not accepting requests (stopping)")
            self.counts["started"] += 1
            while not finished:
                try:
                    output = await asyncio.wait_for(queue.get(), timeout=2.0)
                except TimeoutError:
                    if not self.running:
                        raise EngineStopped("the generation loop stopped") from None
                    continue
                finished = output.is_finished()
                yield Step(list(output.generated_tokens), finished, output.error)
        finally:
            if finished:
                self.counts["finished"] += 1
            else:
                self.counts["cancelled"] += 1
                manager.cancel_request(request_id)
                # A cancelled request gets no final output, so its handler is never removed for us.
                with manager.output_router._lock:
                    manager.output_router.result_handlers.pop(request_id, None)

    def stats(self) -> dict[str, int]:
        counts = self.counts
        handlers = len(self.manager.output_router.result_handlers) if self.manager is not None else 0
        active = counts["started"] - counts["finished"] - counts["cancelled"]
        return {**counts, "active": active, "result_handlers": handlers}

    def close(self) -> None:
        if self.manager is not None and self.manager.is_running():
            self.manager.stop(block=True, timeout=10)


def default_threads() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
