"""Settings: precedence (flag > environment > file > default), defaults, and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from shipyard.config import BUNDLED_MODEL, LocalEngineConfig, load_settings
from shipyard.docsgen import configuration_reference
from shipyard.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent


def _write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "shipyard.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_defaults_serve_the_bundled_model() -> None:
    settings = load_settings(environ={})
    assert settings.server.host == "127.0.0.1"
    assert settings.server.port == 8000
    assert settings.data_dir == Path("~/.shipyard").expanduser()
    assert settings.store_url == f"sqlite:///{settings.data_dir / 'shipyard.db'}"
    engine = settings.engines["local"]
    assert isinstance(engine, LocalEngineConfig) and engine.model == BUNDLED_MODEL
    assert engine.served_name == "smollm2"
    assert [t.engine for t in settings.deployments["smollm2"].targets] == ["local"]


def test_precedence_flag_over_env_over_file_over_default(tmp_path: Path) -> None:
    path = _write(tmp_path, {"server": {"port": 7001, "log_level": "warning"}, "data_dir": str(tmp_path / "file")})
    from_file = load_settings(path, environ={})
    assert from_file.server.port == 7001
    assert from_file.data_dir == tmp_path / "file"
    assert from_file.server.host == "127.0.0.1"  # default kept
    env = {"SHIPYARD_PORT": "7002", "SHIPYARD_DATA_DIR": str(tmp_path / "env")}
    from_env = load_settings(path, environ=env)
    assert from_env.server.port == 7002
    assert from_env.data_dir == tmp_path / "env"
    assert from_env.server.log_level == "warning"  # file value kept where env is silent
    from_flag = load_settings(path, {("server", "port"): 7003}, environ=env)
    assert from_flag.server.port == 7003
    assert from_flag.data_dir == tmp_path / "env"


def test_config_path_from_environment(tmp_path: Path) -> None:
    path = _write(tmp_path, {"server": {"port": 7100}})
    assert load_settings(environ={"SHIPYARD_CONFIG": str(path)}).server.port == 7100


def test_declared_fleet_replaces_the_default(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        {
            "engines": {"up": {"kind": "openai", "base_url": "http://127.0.0.1:9/v1/", "api_key_env": "K"}},
            "deployments": {"chat": {"targets": [{"engine": "up", "model": "m", "weight": 2}], "retries": 1}},
        },
    )
    settings = load_settings(path, environ={})
    assert list(settings.engines) == ["up"]
    assert settings.engines["up"].base_url == "http://127.0.0.1:9/v1"  # trailing slash removed
    assert settings.deployments["chat"].targets[0].weight == 2


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ({"server": {"port": "eighty"}}, "server.port"),
        ({"server": {"prot": 1}}, "server.prot"),
        ({"engines": {"e": {"kind": "nope"}}}, "engines.e"),
        ({"engines": {"e": {"kind": "openai", "base_url": "ftp://x"}}}, "http:// or https://"),
        (
            {"engines": {"e": {"kind": "launch", "command": []}}, "deployments": {"d": {"targets": [{"engine": "e"}]}}},
            "engines.e.launch.command",
        ),
        (
            {
                "engines": {"e": {"kind": "openai", "base_url": "http://x"}},
                "deployments": {"d": {"targets": [{"engine": "missing"}]}},
            },
            "unknown engine 'missing'",
        ),
        (
            {
                "engines": {"e": {"kind": "openai", "base_url": "http://x"}},
                "deployments": {"d": {"targets": [{"engine": "e"}], "fallbacks": ["d"]}},
            },
            "invalid fallback 'd'",
        ),
        ({"engines": {"bad name": {"kind": "openai", "base_url": "http://x"}}}, "engine name 'bad name'"),
        ({"deployments": {"d": {"targets": []}}, "engines": {}}, "deployments.d.targets"),
    ],
)
def test_invalid_configuration_names_the_problem(tmp_path: Path, data: dict, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(_write(tmp_path, data), environ={})
    assert fragment in str(info.value)


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.yaml", environ={})
    bad = tmp_path / "bad.yaml"
    bad.write_text("server: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(bad, environ={})
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_settings(bad, environ={})


def test_configuration_docs_are_generated_from_the_code() -> None:
    committed = (REPO / "docs" / "configuration.md").read_text()
    assert committed == configuration_reference(), "run: shipyard config docs > docs/configuration.md"
