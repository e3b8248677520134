"""Per-request sampling on transformers' continuous batching, including reproducible `seed`.

transformers samples a whole batch with one `torch.multinomial`, so a per-request seed cannot be
given to it. `SeededChoice` runs after temperature / top-k / top-p: for a seeded request it picks
the token with the Gumbel-max trick from a generator seeded by (seed, step), which draws exactly
from the same distribution, and masks every other token so the batch sampler must take it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch
from transformers.generation.continuous_batching.cb_logits_processors import (
    ContinuousBatchingLogitsProcessor,
    ContinuousBatchingLogitsProcessorList,
)

__all__ = ["SamplingParams", "SeededChoice", "install_seeded_choice"]

_NO_SEED = -1


@dataclass(frozen=True, slots=True)
class SamplingParams:
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0: off
    seed: int | None = None

    def processor_kwargs(self, vocab_size: int) -> dict[str, float | int]:
        """Arguments for transformers' per-request processors. Temperature 0 means greedy."""
        greedy = self.temperature == 0
        kwargs: dict[str, float | int] = {
            "temperature": 1.0 if greedy else float(self.temperature),
            "top_p": 1.0 if greedy else float(self.top_p),
            "top_k": 1 if greedy else (self.top_k if 0 < self.top_k < vocab_size else vocab_size),
        }
        if self.seed is not None and not greedy:
            kwargs["seed"] = self.seed
        return kwargs


def step_seed(seed: int, step: int) -> int:
    digest = hashlib.blake2b(f"{seed}:{step}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "little") & 0x7FFFFFFF


class SeededChoice(ContinuousBatchingLogitsProcessor):
    supported_kwargs: dict[str, type] = {"seed": int}
    ignored_kwargs: tuple[str, ...] = ()

    def fill_defaults(self, int32_tensor: torch.Tensor) -> None:
        int32_tensor.fill_(_NO_SEED)

    def prepare_tensor_args(self, requests_with_new_token: list) -> torch.Tensor:
        seeds = []
        for request in requests_with_new_token:
            seed = request.state.logit_processor_kwargs.get("seed")
            seeds.append(_NO_SEED if seed is None else step_seed(seed, request.state.generated_len()))
        return torch.tensor(seeds, dtype=torch.int32, device="cpu")

    def __call__(self, scores: torch.Tensor, tensor_arg: torch.Tensor) -> torch.Tensor:
        seeds = tensor_arg[: scores.size(0)].tolist()
        if all(s == _NO_SEED for s in seeds):
            return scores
        scores = scores.clone()
        for row, seed in enumerate(seeds):
            if seed == _NO_SEED:
                continue
            generator = torch.Generator(device="cpu").manual_seed(int(seed))
            uniform = torch.rand(scores.size(1), generator=generator, dtype=torch.float32).to(scores.device)
            gumbel = -torch.log(-torch.log(uniform.clamp_(1e-20, 1.0 - 1e-7)))
            choice = int(torch.argmax(scores[row].float() + gumbel))
            scores[row].fill_(float("-inf"))
            scores[row, choice] = 0.0
        return scores


def install_seeded_choice(processors: ContinuousBatchingLogitsProcessorList) -> None:
    """Append SeededChoice to a manager's processor list (before the manager starts)."""
    processors.logits_processor.append(SeededChoice())
    processors.tensors_required += 1
    processors.supported_keys["seed"] = int
    processors.do_processing = True
