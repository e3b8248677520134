"""Opening the store: engine creation, SQLite pragmas, Alembic migrations, the repositories."""

from __future__ import annotations

import logging
from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.exc import SQLAlchemyError

from shipyard.errors import StoreError
from shipyard.store.auth import AuthRepos
from shipyard.store.experiments import ExperimentRepo
from shipyard.store.loadtest import LoadtestRunRepo
from shipyard.store.online_evals import OnlineScoreRepo
from shipyard.store.registry import RegistryRepos
from shipyard.store.repos import DeploymentRepo, EngineRepo
from shipyard.store.traces import TraceRepo

__all__ = ["Store", "migrate"]

log = logging.getLogger("shipyard.store")
_MIGRATIONS = Path(__file__).parent / "migrations"


def _sqlite_pragmas(dbapi_connection, _record) -> None:  # noqa: ANN001 - DBAPI types
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _normalise(url: str) -> str:
    # Plain postgresql:// URLs use psycopg 3, the driver Shipyard installs.
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def make_engine(url: str) -> Engine:
    url = _normalise(url)
    if url.startswith("sqlite"):
        path = url.split(":///", 1)[1] if ":///" in url else ""
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5)


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest migration of every branch.

    Each aggregate (traces, prompts, load-test runs, ...) may add its migrations on a branch of its own
    that starts from 0001, so features developed side by side never fight over one revision chain.
    """
    from alembic import command
    from alembic.config import Config

    logging.getLogger("alembic").setLevel(logging.WARNING)
    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "heads")


class Store:
    """One database; one repository per aggregate."""

    def __init__(self, url: str) -> None:
        self.url = _normalise(url)
        try:
            self.engine = make_engine(self.url)
            migrate(self.engine)
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot open the store at {_redact(self.url)}: {exc}") from exc
        self.engines = EngineRepo(self.engine)
        self.deployments = DeploymentRepo(self.engine)
        self.loadtest = LoadtestRunRepo(self.engine)  # issue 7: load-test runs (shipyard.store.loadtest)
        self.traces = TraceRepo(self.engine)  # issue 3: traces and spans (shipyard.store.traces)
        self.registry = RegistryRepos(self.engine)
        self.auth = AuthRepos(self.engine)  # issue 6: keys, limit counters, audit log, secrets
        self.experiments = ExperimentRepo(self.engine)  # issue 5: evaluation runs and their rows
        self.online_scores = OnlineScoreRepo(self.engine)  # issue 5: online evaluation of live calls

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def close(self) -> None:
        self.engine.dispose()


def _redact(url: str) -> str:
    """Hide a password in a database URL before it reaches a message."""
    if "@" not in url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    credentials, host = rest.rsplit("@", 1)
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}"
