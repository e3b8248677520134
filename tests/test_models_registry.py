"""The model registry: content-hashed versions, refused formats, aliases, lineage (SQLite and PostgreSQL), a
deployment following an alias move without a restart, and the bundled model registered on first start."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import openai
import pytest

from shipyard.errors import InvalidRequest, NotFound
from shipyard.registry.artifacts import ArtifactStore
from shipyard.registry.models import ModelService, lineage_tree
from shipyard.store import Store
from tests.helpers import PostgresServer, ShipyardProcess, wait_until


def _hf_folder(path: Path, weights: bytes = b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ", **config: object) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"model_type": "llama", **config}))
    (path / "model.safetensors").write_bytes(weights)
    (path / "tokenizer.json").write_text("{}")
    return path


@pytest.mark.postgres
def test_import_hash_alias_lineage(store_url: str, tmp_path: Path) -> None:
    store = Store(store_url)
    artifacts = ArtifactStore(tmp_path / "artifacts")
    svc = ModelService(store.registry.models, artifacts)
    folder = _hf_folder(tmp_path / "base")
    one, created = svc.register("base", folder, dataset="pretrain:1", message="first")
    assert created and one["version"] == 1 and one["kind"] == "hf" and one["storage"] == "copy"
    assert artifacts.exists(f"models/{one['sha256']}/model.safetensors")
    assert svc.local_path(one) == Path(artifacts.path(f"models/{one['sha256']}"))
    again, created = svc.register("base", tmp_path / "base")  # same weights, same name: recognised
    assert not created and again["version"] == 1
    copy_elsewhere = tmp_path / "copy"
    copy_elsewhere.mkdir()
    for item in folder.iterdir():
        (copy_elsewhere / item.name).write_bytes(item.read_bytes())
    other, created = svc.register("renamed", copy_elsewhere, copy=False)  # same hash, another name: a reference
    assert created and other["sha256"] == one["sha256"] and other["storage"] == "reference"
    changed = _hf_folder(tmp_path / "base2", weights=b"\x08\x00\x00\x00\x00\x00\x00\x00{}  2   ")
    two, _ = svc.register("base", changed, metrics={"accuracy": 0.7})
    assert two["version"] == 2 and two["sha256"] != one["sha256"]

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text('{"r": 8}')
    (adapter / "adapter_model.safetensors").write_bytes(b"lora")
    with pytest.raises(InvalidRequest, match="base model"):
        svc.register("tuned", adapter)
    store.registry.models.set_alias("base", "champion", 2)
    tuned, _ = svc.register("tuned", adapter, base="base@champion", dataset="qa:3", run="run-42")
    assert tuned["kind"] == "lora" and tuned["base"] == "base:2"
    assert svc.get("base@champion")["version"] == 2 and svc.get("base")["version"] == 2
    assert store.registry.models.set_alias("base", "champion", 1) == 2
    hosted, _ = svc.register("gpt", hosted="provider-model-1")
    assert hosted["kind"] == "hosted" and hosted["sha256"] is None

    tree = svc.lineage("tuned:1")
    assert [a["version"] for a in tree["ancestors"]] == [2] and tree["run"] == "run-42"
    text = lineage_tree(svc.lineage("base:2"))
    assert text.splitlines()[0].startswith("base:2 [hf]") and "accuracy=0.7" in text
    assert text.splitlines()[1].strip().startswith("tuned:1 [lora]") and "dataset qa:3; run run-42" in text
    assert store.registry.models.add_metrics("tuned", 1, {"f1": 0.5}) == {"f1": 0.5}
    with pytest.raises(NotFound):
        svc.get("base:9")
    store.close()


def test_refused_sources(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    svc = ModelService(store.registry.models, ArtifactStore(tmp_path / "artifacts"))
    pickled = _hf_folder(tmp_path / "pickled")
    (pickled / "pytorch_model.bin").write_bytes(b"\x80\x04pickle")
    with pytest.raises(InvalidRequest, match="pickle-based weights are refused"):
        svc.register("x", pickled)
    custom = _hf_folder(tmp_path / "custom", auto_map={"AutoModel": "modeling_evil.Evil"})
    (custom / "modeling_evil.py").write_text("import os; os.system('touch /tmp/pwned')")
    with pytest.raises(InvalidRequest, match="custom model code"):
        svc.register("x", custom)
    allowed, _ = svc.register("x", custom, allow_custom_code=True)  # stored, never imported
    assert allowed["kind"] == "hf"
    fake_gguf = tmp_path / "model.gguf"
    fake_gguf.write_bytes(b"NOPE")
    with pytest.raises(InvalidRequest, match="bad magic"):
        svc.register("g", fake_gguf)
    real_gguf = tmp_path / "ok.gguf"
    real_gguf.write_bytes(b"GGUF" + b"\0" * 60)
    assert svc.register("g", real_gguf)[0]["kind"] == "gguf"
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InvalidRequest, match="Not a model folder"):
        svc.register("e", empty)
    with pytest.raises(NotFound):
        svc.register("e", tmp_path / "missing")
    store.close()


@pytest.mark.postgres
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_deployment_follows_alias_moves_without_restart(
    backend: str, tmp_path: Path, fake_upstream, request: pytest.FixtureRequest
) -> None:
    env = {"HF_HUB_OFFLINE": "1"}  # the Hub code path runs against a local cache, never the network
    if backend == "postgresql":
        env["SHIPYARD_DATABASE_URL"] = PostgresServer.fresh_database(request.getfixturevalue("postgres_url"))
    snapshot = tmp_path / "data" / "hub" / "models--org--tiny-hub" / "snapshots" / "abc123"
    _hf_folder(snapshot)
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text("abc123")
    config = {
        "engines": {"fake": {"kind": "openai", "base_url": fake_upstream.base_url}},
        "deployments": {"assistant": {"targets": [{"engine": "fake", "model": "gpt@champion"}]}},
    }
    server = ShipyardProcess(tmp_path / "data", config=config, env=env)
    server.start()
    try:
        server.wait_ready(60)

        def cli(*args: str, ok: bool = True) -> str:
            command = [sys.executable, "-m", "shipyard.cli.main", "models", *args, "--url", server.url]
            result = subprocess.run(command, capture_output=True, text=True, timeout=60)
            assert (result.returncode == 0) == ok, result.stderr
            return result.stdout if ok else result.stderr

        assert "gpt:1 [hosted] registered (hosted)" in cli("import", "gpt", "--hosted", "provider-model-1")
        assert "gpt:2 [hosted]" in cli("import", "gpt", "--hosted", "provider-model-2")
        assert cli("alias", "gpt", "1", "champion").strip() == "gpt@champion -> v1"
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
        client.chat.completions.create(model="assistant", messages=[{"role": "user", "content": "hi"}])
        assert fake_upstream.stats()["last_body"]["model"] == "provider-model-1"
        assert cli("alias", "gpt", "2", "champion").strip() == "gpt@champion -> v2 (was v1)"
        client.chat.completions.create(model="assistant", messages=[{"role": "user", "content": "hi"}])
        assert fake_upstream.stats()["last_body"]["model"] == "provider-model-2"

        folder = _hf_folder(tmp_path / "weights")
        assert "tiny:1 [hf] registered (copy) sha256" in cli("import", "tiny", str(folder), "--metric", "acc=0.5")
        assert "already registered as tiny:1" in cli("import", "tiny", str(folder))
        assert cli("list").splitlines() == ["gpt\tv2\thosted\tchampion=2", "tiny\tv1\thf"]
        assert "tiny:1 [hf]" in cli("lineage", "tiny:1") and "acc=0.5" in cli("lineage", "tiny:1")
        assert "hubbed:1 [hf] registered (copy)" in cli("import", "hubbed", "org/tiny-hub")  # a Hub id
        assert json.loads(cli("show", "hubbed:1"))["source"] == "org/tiny-hub"
        assert "could not be fetched from the Hugging Face Hub" in cli("import", "x", "org/missing", ok=False)
        shown = json.loads(cli("show", "gpt@champion"))
        assert shown["uri"] == "provider-model-2"
        pickled = tmp_path / "pickled"
        _hf_folder(pickled)
        (pickled / "pytorch_model.bin").write_bytes(b"x")
        refused = httpx.post(server.url + "/api/v1/models/p/versions", json={"source": str(pickled)}, timeout=10)
        assert refused.status_code == 400 and refused.json()["error"]["code"] == "pickle_refused"
        bad_alias = httpx.put(server.url + "/api/v1/models/gpt/aliases/champion", json={"version": 9}, timeout=5)
        assert bad_alias.status_code == 404
    finally:
        server.stop()


@pytest.mark.model
def test_bundled_model_is_registered_on_first_start(bundled_server: ShipyardProcess) -> None:
    def registered() -> bool:
        return httpx.get(bundled_server.url + "/api/v1/models/smollm2", timeout=5).status_code == 200

    wait_until(registered, 60, 0.5, "the bundled model to be registered")
    info = httpx.get(bundled_server.url + "/api/v1/models/smollm2", timeout=5).json()
    [version] = info["versions"]
    assert version["kind"] == "hf" and version["storage"] == "reference" and version["source"] == "bundled:smollm2"
    assert any(f["path"] == "model.safetensors" for f in version["files"])
    assert info["aliases"] == [{**info["aliases"][0], "alias": "champion", "version": 1}]


@pytest.mark.model
@pytest.mark.slow
def test_gguf_is_converted_on_request(tmp_path: Path) -> None:
    """The bundled SmolLM2 GGUF, converted to safetensors at import; importing it again converts nothing."""
    from shipyard.engines.local.bundled import bundled_gguf_path

    gguf = bundled_gguf_path()
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    artifacts = ArtifactStore(tmp_path / "artifacts")
    svc = ModelService(store.registry.models, artifacts)
    version, created = svc.register_converted("smol", gguf, tmp_path / "work", message="from gguf")
    assert created and version["kind"] == "hf" and version["storage"] == "copy"
    assert version["source"].startswith("gguf:")
    names = {f["path"] for f in version["files"]}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= names
    assert not any(n.endswith(".bin") for n in names)
    assert list((tmp_path / "work").iterdir()) == []  # the conversion folder is cleaned up
    again, created = svc.register_converted("smol", gguf, tmp_path / "work")
    assert not created and again["version"] == 1
    plain, _ = svc.register("smol-gguf", gguf, copy=False)  # without conversion: a GGUF version
    assert plain["kind"] == "gguf"
    store.close()


@pytest.mark.model
@pytest.mark.parametrize(
    "template",
    [
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
        "{% for m in messages %}{{ m.__class__.__init__.__globals__ }}{% endfor %}",
    ],
)
def test_chat_templates_from_model_folders_run_sandboxed(
    template: str, bundled_model_dir: Path, tmp_path: Path
) -> None:
    """A chat template shipped in a model folder is rendered by transformers in Jinja2's immutable sandbox (the
    local engine's path): escape attempts fail instead of reaching Python."""
    import shutil

    from jinja2.exceptions import SecurityError, UndefinedError
    from transformers import AutoTokenizer

    folder = tmp_path / "evil"
    folder.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (bundled_model_dir / name).exists():
            shutil.copy(bundled_model_dir / name, folder / name)
    (folder / "chat_template.jinja").write_text(template)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    with pytest.raises((SecurityError, UndefinedError)):
        tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
