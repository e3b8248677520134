"""Shared fixtures: real server processes on loopback, the real bundled model, real databases."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import FakeUpstreamProcess, PostgresServer, ShipyardProcess, start_fake_upstream

REPO = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("SHIPYARD_TEST_CACHE", REPO / ".cache" / "tests"))


@pytest.fixture(scope="session")
def bundled_model_dir() -> Path:
    """The bundled model converted once (first run ~40 s), reused by every test and later runs."""
    from shipyard.engines.local.bundled import converted_dir, ensure_converted

    data = CACHE / "bundled"
    target = converted_dir(data)
    ensure_converted(data)
    return target


def make_data_dir(base: Path, model_dir: Path | None = None) -> Path:
    """A fresh data dir whose converted bundled model is the shared one (no second conversion)."""
    base.mkdir(parents=True, exist_ok=True)
    if model_dir is not None:
        (base / "models").mkdir(exist_ok=True)
        link = base / "models" / model_dir.name
        if not link.exists():
            link.symlink_to(model_dir, target_is_directory=True)
    return base


@pytest.fixture()
def data_dir(tmp_path: Path, bundled_model_dir: Path) -> Path:
    return make_data_dir(tmp_path / "data", bundled_model_dir)


@pytest.fixture(scope="session")
def bundled_server(tmp_path_factory: pytest.TempPathFactory, bundled_model_dir: Path) -> Iterator[ShipyardProcess]:
    """`shipyard up` with the default configuration: the bundled model as deployment `smollm2`."""
    base = make_data_dir(tmp_path_factory.mktemp("bundled-server"), bundled_model_dir)
    server = ShipyardProcess(data_dir=base)
    server.start()
    try:
        server.wait_ready(timeout=180)
        yield server
    finally:
        server.stop()


@pytest.fixture()
def fake_upstream() -> Iterator[FakeUpstreamProcess]:
    fake = start_fake_upstream()
    try:
        yield fake
    finally:
        fake.stop()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A private PostgreSQL cluster (Debian's binaries), started for the test session."""
    server = PostgresServer.find()
    if server is None:
        if os.environ.get("SHIPYARD_REQUIRE_POSTGRES") == "1":
            pytest.fail("PostgreSQL binaries not found but SHIPYARD_REQUIRE_POSTGRES=1")
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql)")
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Every store test runs on both backends."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    base = request.getfixturevalue("postgres_url")
    return PostgresServer.fresh_database(base)
