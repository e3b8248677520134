"""Converting a GGUF file into a Hugging Face safetensors folder (on request, at model import).

Needs the `local` extra (torch, transformers, gguf). transformers de-quantizes the GGUF weights; the result is
rebuilt as a plain model from its config (a GGUF-loaded model refuses to save) and written as safetensors.
"""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

from shipyard.errors import EngineError, InvalidRequest

__all__ = ["convert_gguf"]


def convert_gguf(source: Path, work_dir: Path) -> Path:
    """A new folder under `work_dir` holding `source` converted to safetensors (float32) and its tokenizer."""
    if source.suffix.lower() != ".gguf" or not source.is_file():
        raise InvalidRequest(f"{source.name}: only a .gguf file can be converted.", code="unsupported_model")
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as exc:
        raise EngineError(f"converting GGUF needs the local extra (pip install 'shipyard[local]'): {exc}") from None
    target = work_dir / f"gguf-{uuid.uuid4().hex}"
    target.mkdir(parents=True)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
        loaded = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32)
        config = loaded.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        config._name_or_path = source.stem
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(loaded.state_dict(), strict=True)
        model.generation_config = loaded.generation_config
        model.save_pretrained(target)
        tokenizer.save_pretrained(target)
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        shutil.rmtree(target, ignore_errors=True)
        raise InvalidRequest(f"{source.name} could not be converted: {exc}", code="gguf_conversion_failed") from None
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)
        raise
    return target
