"""Model versions: importing weights (a Hugging Face folder, a GGUF file, a LoRA adapter, a hosted model id),
content hashes, aliases and lineage.

Weights in pickle-based formats (`.bin`, `.pt`, `.pth`, `.ckpt`, `.pkl`) are refused at import: only safetensors
and GGUF are registered. Python files that come with a folder are never imported (the local engine loads with
transformers' `trust_remote_code` off), and a folder whose config asks for custom code (`auto_map`) is refused
unless the operator passes `allow_custom_code`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shipyard.errors import InvalidRequest, NotFound
from shipyard.registry.artifacts import ArtifactStore, safe_key
from shipyard.registry.prompts import check_label, check_name
from shipyard.store.registry import ModelRepo

__all__ = ["KINDS", "ModelRef", "ModelService", "describe_folder", "lineage_tree", "parse_model_ref"]

KINDS = ("hf", "gguf", "lora", "hosted")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".joblib", ".npy", ".npz")
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
_HUB_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken", "*.jinja", "*.gguf"]


@dataclass(frozen=True, slots=True)
class ModelRef:
    name: str
    version: int | None = None
    alias: str | None = None

    def __str__(self) -> str:
        return f"{self.name}:{self.version}" if self.version is not None else f"{self.name}@{self.alias}"


def parse_model_ref(ref: str) -> ModelRef:
    """`name:3` or `name@alias` (a bare name means `@latest`, the newest version)."""
    if "@" in ref:
        name, alias = ref.split("@", 1)
        return ModelRef(check_name(name, "model"), alias=check_label(alias))
    if ":" in ref:
        name, number = ref.rsplit(":", 1)
        if not number.isdigit() or int(number) < 1:
            raise InvalidRequest(f"Invalid model version in {ref!r}: expected a positive integer.")
        return ModelRef(check_name(name, "model"), version=int(number))
    return ModelRef(check_name(ref, "model"), alias="latest")


def _file_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def describe_folder(source: Path, *, allow_custom_code: bool = False) -> tuple[str, list[dict[str, Any]], str]:
    """(kind, files, content hash) of a local folder or file. The content hash covers every file's relative path
    and bytes, so the same weights give the same hash wherever they live."""
    if source.is_file():
        if source.suffix.lower() != ".gguf":
            raise InvalidRequest(f"{source.name}: a single file must be a .gguf model.", code="unsupported_model")
        with source.open("rb") as handle:
            if handle.read(4) != b"GGUF":
                raise InvalidRequest(f"{source.name} is not a GGUF file (bad magic).", code="unsupported_model")
        files = [{"path": source.name, "size": source.stat().st_size, "sha256": _file_hash(source)}]
        return "gguf", files, _tree_hash(files)
    if not source.is_dir():
        raise NotFound(f"{source} does not exist.", code="model_source_not_found")
    files = []
    for path in sorted(p for p in source.rglob("*") if p.is_file() or p.is_symlink()):
        rel = path.relative_to(source).as_posix()
        if rel.split("/", 1)[0] in (".git", ".cache") or path.name.startswith("."):
            continue
        if path.suffix.lower() in PICKLE_SUFFIXES:
            raise InvalidRequest(
                f"{rel}: pickle-based weights are refused (they can run code when loaded); convert them to "
                "safetensors first.",
                code="pickle_refused",
            )
        real = path.resolve()  # symlinks are followed: Hugging Face's cache links snapshot files to blobs
        if not real.is_file():
            raise InvalidRequest(f"{rel}: not a regular file.", code="unsafe_path")
        safe_key(rel)
        files.append({"path": rel, "size": real.stat().st_size, "sha256": _file_hash(real)})
    names = {f["path"] for f in files}
    if "adapter_config.json" in names:
        kind = "lora"
        if not any(n.endswith(".safetensors") for n in names):
            raise InvalidRequest("A LoRA adapter folder needs adapter_model.safetensors.", code="unsupported_model")
    elif "config.json" in names:
        kind = "hf"
        config = json.loads((source / "config.json").read_text())
        if isinstance(config, dict) and config.get("auto_map") and not allow_custom_code:
            raise InvalidRequest(
                "config.json asks for custom model code (auto_map); Shipyard never runs code from a model folder "
                "unless the operator allows it for that model (--allow-custom-code).",
                code="custom_code_refused",
            )
        if not any(n.endswith((".safetensors", ".gguf")) for n in names):
            raise InvalidRequest("The folder has no .safetensors weights.", code="unsupported_model")
    elif any(n.endswith(".gguf") for n in names) and len([n for n in names if n.endswith(".gguf")]) == 1:
        kind = "gguf"
    else:
        raise InvalidRequest(
            "Not a model folder: expected config.json (Hugging Face), adapter_config.json (LoRA) or one .gguf file.",
            code="unsupported_model",
        )
    return kind, files, _tree_hash(files)


def _tree_hash(files: list[dict[str, Any]]) -> str:
    digest = hashlib.sha256()
    for item in sorted(files, key=lambda f: f["path"]):
        digest.update(f"{item['path']}\0{item['sha256']}\n".encode())
    return digest.hexdigest()


def resolve_source(source: str, cache_dir: Path) -> Path:
    """A local path as is; otherwise a Hugging Face Hub id, downloaded (safetensors/config/tokenizer files only)."""
    path = Path(source).expanduser()
    if path.exists():
        return path
    if not _HUB_ID.match(source):
        raise NotFound(f"{source} is neither a local path nor a Hugging Face Hub id.", code="model_source_not_found")
    try:
        from huggingface_hub import snapshot_download  # comes with the local extra (transformers)
    except ImportError:
        raise InvalidRequest(f"{source}: Hub ids need huggingface_hub (pip install 'shipyard[local]').") from None

    try:
        return Path(snapshot_download(source, cache_dir=str(cache_dir), allow_patterns=_HUB_PATTERNS))
    except OSError as exc:  # not found, offline, refused: huggingface_hub's errors are OSErrors
        raise NotFound(
            f"{source} could not be fetched from the Hugging Face Hub: {exc}", code="model_source_not_found"
        ) from None


class ModelService:
    def __init__(self, repo: ModelRepo, artifacts: ArtifactStore) -> None:
        self.repo = repo
        self.artifacts = artifacts

    def get(self, ref: ModelRef | str) -> dict[str, Any]:
        ref = parse_model_ref(ref) if isinstance(ref, str) else ref
        if ref.version is not None:
            found = self.repo.get_version(ref.name, ref.version)
        elif ref.alias == "latest":
            versions = self.repo.versions(ref.name)
            found = versions[-1] if versions else None
        else:
            found = self.repo.resolve_alias(ref.name, ref.alias or "latest")
        if found is None:
            raise NotFound(f"No model version for '{ref}'.", code="model_not_found")
        return found

    def register(
        self,
        name: str,
        source: Path | None = None,
        *,
        hosted: str | None = None,
        copy: bool = True,
        base: str | None = None,
        dataset: str | None = None,
        run: str | None = None,
        metrics: Mapping[str, Any] | None = None,
        message: str = "",
        author: str = "api",
        allow_custom_code: bool = False,
        origin: str | None = None,
    ) -> tuple[dict[str, Any], bool]:
        """Register a version; returns (version, created). The same weights under the same name are recognised
        and return the existing version; under another name they share one copy in the artifact store."""
        check_name(name, "model")
        lineage = {"dataset": dataset, "run": run, "metrics": dict(metrics or {}), "message": message}
        if base is not None:
            base = _canonical(self.get(base))
        if hosted is not None:
            if source is not None:
                raise InvalidRequest("Give local weights or a hosted model id, not both.")
            fields = {"kind": "hosted", "storage": "hosted", "uri": hosted, "sha256": None, "files": [],
                      "base": base, "source": f"hosted:{hosted}", **lineage}  # fmt: skip
            return self.repo.create_version(name, fields, author), True
        if source is None:
            raise InvalidRequest("Give local weights (a folder or .gguf file) or a hosted model id.")
        kind, files, digest = describe_folder(source, allow_custom_code=allow_custom_code)
        if kind == "lora" and base is None:
            raise InvalidRequest("A LoRA adapter needs its base model version (--base NAME:VERSION or NAME@ALIAS).")
        for existing in self.repo.find_by_hash(digest):
            if existing["name"] == name:
                return existing, False
        uri = str(source.resolve())
        if copy:
            prefix = f"models/{digest}"
            for item in files:
                key = f"{prefix}/{item['path']}"
                if not self.artifacts.exists(key):
                    local = source if source.is_file() else source / item["path"]
                    self.artifacts.put_file(key, local)
            uri = prefix
        fields = {"kind": kind, "storage": "copy" if copy else "reference", "uri": uri, "sha256": digest,
                  "files": files, "base": base, "source": origin or str(source), **lineage}  # fmt: skip
        return self.repo.create_version(name, fields, author), True

    def register_converted(self, name: str, gguf: Path, work_dir: Path, **fields: Any) -> tuple[dict[str, Any], bool]:
        """Convert a GGUF file to a safetensors folder and register that (copied into the artifact store). The
        same GGUF converted twice under one name is recognised by the GGUF's own hash, before converting."""
        kind, _, digest = describe_folder(gguf)
        if kind != "gguf":
            raise InvalidRequest("Only a .gguf file can be converted.", code="unsupported_model")
        origin = f"gguf:{digest}"
        for existing in self.repo.versions(name):
            if existing["source"] == origin:
                return existing, False
        from shipyard.registry.gguf import convert_gguf

        folder = convert_gguf(gguf, work_dir)
        try:
            return self.register(name, folder, **{**fields, "copy": True, "origin": origin})
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def local_path(self, version: Mapping[str, Any]) -> Path | None:
        """Where the weights are on this machine (copied into a local artifact store, or referenced)."""
        if version["storage"] == "reference":
            return Path(version["uri"])
        if version["storage"] == "copy" and self.artifacts.local:
            return Path(self.artifacts.path(version["uri"]))
        return None

    def lineage(self, ref: str) -> dict[str, Any]:
        """The version, its ancestors (base chain) and its descendants (adapters built on it, recursively)."""
        version = self.get(ref)
        ancestors = []
        current = version
        seen = {_canonical(version)}
        while current.get("base") and current["base"] not in seen:
            seen.add(current["base"])
            current = self.get(current["base"])
            ancestors.append(_summary(current))
        return {**_summary(version), "ancestors": ancestors, "children": self._children(_canonical(version), seen)}

    def _children(self, canonical: str, seen: set[str]) -> list[dict[str, Any]]:
        out = []
        for child in self.repo.children(canonical):
            key = _canonical(child)
            if key in seen:
                continue
            seen.add(key)
            out.append({**_summary(child), "children": self._children(key, seen)})
        return out


def _canonical(version: Mapping[str, Any]) -> str:
    return f"{version['name']}:{version['version']}"


def _summary(version: Mapping[str, Any]) -> dict[str, Any]:
    keys = ("name", "version", "kind", "sha256", "base", "dataset", "run", "metrics")
    return {key: version.get(key) for key in keys}


def lineage_tree(lineage: Mapping[str, Any]) -> str:
    """The lineage as indented text, for `shipyard models lineage`."""
    lines = []
    chain = list(reversed(lineage["ancestors"]))
    for depth, node in enumerate(chain):
        lines.append("  " * depth + _line(node) + "  (base)")
    depth = len(chain)
    lines.append("  " * depth + _line(lineage) + "  <-")

    def walk(nodes: list[Mapping[str, Any]], level: int) -> None:
        for node in nodes:
            lines.append("  " * level + _line(node))
            walk(node.get("children", []), level + 1)

    walk(lineage["children"], depth + 1)
    return os.linesep.join(lines)


def _line(node: Mapping[str, Any]) -> str:
    extra = []
    if node.get("dataset"):
        extra.append(f"dataset {node['dataset']}")
    if node.get("run"):
        extra.append(f"run {node['run']}")
    if node.get("metrics"):
        extra.append("metrics " + ", ".join(f"{k}={v}" for k, v in sorted(node["metrics"].items())))
    sha = f" {node['sha256'][:12]}" if node.get("sha256") else ""
    return f"{node['name']}:{node['version']} [{node['kind']}]{sha}" + (f" ({'; '.join(extra)})" if extra else "")
