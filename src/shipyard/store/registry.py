"""Registry tables and repositories: prompts (versions, labels, label history) and datasets (versions).

Every change to one prompt first updates that prompt's row. On PostgreSQL that takes the row lock; on SQLite it
takes the database write lock before anything is read. Either way, changes to one prompt are serialised, so a
label move reads the version it replaces and writes its history without losing a concurrent move.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    Connection,
    Engine,
    Float,
    ForeignKeyConstraint,
    Index,
    Integer,
    String,
    Table,
    Text,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError

from shipyard.store.schema import metadata

__all__ = [
    "DatasetRepo",
    "LabelProtected",
    "PromptRepo",
    "RegistryRepos",
    "ModelRepo",
    "dataset_versions",
    "datasets",
    "model_aliases",
    "model_versions",
    "models",
    "prompt_label_events",
    "prompt_labels",
    "prompt_versions",
    "prompts",
]

prompts = Table(
    "prompts",
    metadata,
    Column("name", String(128), primary_key=True),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
)

prompt_versions = Table(
    "prompt_versions",
    metadata,
    Column("name", String(128), primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("kind", String(8), nullable=False),  # "chat" | "text"
    Column("template", JSON, nullable=False),  # list of {role, content} for chat; a string for text
    Column("variables", JSON, nullable=False),
    Column("params", JSON, nullable=False),
    Column("message", Text, nullable=False),
    Column("author", String(256), nullable=False),
    Column("created_at", Float, nullable=False),
    ForeignKeyConstraint(["name"], ["prompts.name"], ondelete="CASCADE"),
)

prompt_labels = Table(
    "prompt_labels",
    metadata,
    Column("name", String(128), primary_key=True),
    Column("label", String(64), primary_key=True),
    Column("version", Integer, nullable=False),
    Column("protected", Boolean, nullable=False),
    Column("updated_at", Float, nullable=False),
    ForeignKeyConstraint(["name", "version"], ["prompt_versions.name", "prompt_versions.version"]),
)

prompt_label_events = Table(
    "prompt_label_events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(128), nullable=False),
    Column("label", String(64), nullable=False),
    Column("version", Integer, nullable=False),
    Column("previous", Integer),
    Column("actor", String(256), nullable=False),
    Column("moved_at", Float, nullable=False),
    Index("ix_prompt_label_events_name_label", "name", "label", "id"),
)

datasets = Table(
    "datasets",
    metadata,
    Column("name", String(128), primary_key=True),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
)

dataset_versions = Table(
    "dataset_versions",
    metadata,
    Column("name", String(128), primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("uri", Text, nullable=False),  # artifact key of the JSONL file
    Column("sha256", String(64), nullable=False),
    Column("rows", Integer, nullable=False),
    Column("parent", Integer),  # the version it appended to
    Column("source", String(256), nullable=False),  # "upload", "file:<name>", "api", later "traces:<filter>"
    Column("message", Text, nullable=False),
    Column("author", String(256), nullable=False),
    Column("created_at", Float, nullable=False),
    ForeignKeyConstraint(["name"], ["datasets.name"], ondelete="CASCADE"),
)


models = Table(
    "models",
    metadata,
    Column("name", String(128), primary_key=True),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
)

model_versions = Table(
    "model_versions",
    metadata,
    Column("name", String(128), primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("kind", String(16), nullable=False),  # "hf" | "gguf" | "lora" | "hosted"
    Column("storage", String(16), nullable=False),  # "copy" (in the artifact store) | "reference" | "hosted"
    Column("uri", Text, nullable=False),  # artifact key, referenced local path, or the provider's model id
    Column("sha256", String(64)),  # content hash of the weights (None for hosted)
    Column("files", JSON, nullable=False),  # [{path, size, sha256}]
    Column("base", String(200)),  # "name:version" this adapter applies to
    Column("dataset", String(200)),  # "name:version" it was trained on
    Column("run", String(200)),  # the run that produced it
    Column("metrics", JSON, nullable=False),  # evaluation results
    Column("source", Text, nullable=False),
    Column("message", Text, nullable=False),
    Column("author", String(256), nullable=False),
    Column("created_at", Float, nullable=False),
    ForeignKeyConstraint(["name"], ["models.name"], ondelete="CASCADE"),
    Index("ix_model_versions_sha256", "sha256"),
)

model_aliases = Table(
    "model_aliases",
    metadata,
    Column("name", String(128), primary_key=True),
    Column("alias", String(64), primary_key=True),
    Column("version", Integer, nullable=False),
    Column("updated_at", Float, nullable=False),
    ForeignKeyConstraint(["name", "version"], ["model_versions.name", "model_versions.version"]),
)


class LabelProtected(Exception):
    """A protected label was asked to move without force."""


def _touch(conn: Connection, table: Table, name: str, now: float) -> None:
    """Create the aggregate row if missing, then lock it (row lock / SQLite write lock) for this transaction."""
    locked = conn.execute(update(table).where(table.c.name == name).values(updated_at=now))
    if locked.rowcount:
        return
    try:
        with conn.begin_nested():
            conn.execute(insert(table).values(name=name, created_at=now, updated_at=now))
    except IntegrityError:  # created by a concurrent writer in the meantime: lock theirs
        conn.execute(update(table).where(table.c.name == name).values(updated_at=now))


class PromptRepo:
    """Prompts: immutable numbered versions and movable labels (`latest` always points at the newest)."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def create_version(self, name: str, version: Mapping[str, Any], labels: list[str], actor: str) -> dict[str, Any]:
        """Add the next version of `name` (created if new) and move `latest` and `labels` to it."""
        now = time.time()
        with self._engine.begin() as conn:
            _touch(conn, prompts, name, now)
            newest = conn.execute(
                select(func.max(prompt_versions.c.version)).where(prompt_versions.c.name == name)
            ).scalar_one()
            number = (newest or 0) + 1
            row = {
                "name": name,
                "version": number,
                "kind": version["kind"],
                "template": version["template"],
                "variables": list(version["variables"]),
                "params": dict(version.get("params") or {}),
                "message": version.get("message") or "",
                "author": version.get("author") or actor,
                "created_at": now,
            }
            conn.execute(insert(prompt_versions).values(**row))
            for label in ["latest", *[lb for lb in labels if lb != "latest"]]:
                self._move(conn, name, label, number, actor, now, force=False, protect=None)
        return row

    def move_label(
        self, name: str, label: str, version: int, actor: str, *, force: bool = False, protect: bool | None = None
    ) -> dict[str, Any]:
        """Point `label` at `version` atomically; return {label, version, previous, protected}."""
        now = time.time()
        with self._engine.begin() as conn:
            _touch(conn, prompts, name, now)
            return self._move(conn, name, label, version, actor, now, force=force, protect=protect)

    def _move(
        self,
        conn: Connection,
        name: str,
        label: str,
        version: int,
        actor: str,
        now: float,
        *,
        force: bool,
        protect: bool | None,
    ) -> dict[str, Any]:
        current = (
            conn.execute(select(prompt_labels).where(prompt_labels.c.name == name, prompt_labels.c.label == label))
            .mappings()
            .first()
        )
        protected = bool(current["protected"]) if current else False
        if protected and not force and (current["version"] != version or protect is False):
            raise LabelProtected(label)
        new_protected = protected if protect is None else protect
        if current is None:
            conn.execute(
                insert(prompt_labels).values(
                    name=name, label=label, version=version, protected=new_protected, updated_at=now
                )
            )
        else:
            conn.execute(
                update(prompt_labels)
                .where(prompt_labels.c.name == name, prompt_labels.c.label == label)
                .values(version=version, protected=new_protected, updated_at=now)
            )
        previous = current["version"] if current else None
        conn.execute(
            insert(prompt_label_events).values(
                name=name, label=label, version=version, previous=previous, actor=actor, moved_at=now
            )
        )
        return {"label": label, "version": version, "previous": previous, "protected": new_protected}

    def get_version(self, name: str, version: int) -> dict[str, Any] | None:
        with self._engine.connect() as conn:
            row = (
                conn.execute(
                    select(prompt_versions).where(prompt_versions.c.name == name, prompt_versions.c.version == version)
                )
                .mappings()
                .first()
            )
        return dict(row) if row else None

    def resolve_label(self, name: str, label: str) -> dict[str, Any] | None:
        """The version a label points at, read in one statement."""
        query = select(prompt_versions).join(
            prompt_labels,
            (prompt_labels.c.name == prompt_versions.c.name) & (prompt_labels.c.version == prompt_versions.c.version),
        )
        query = query.where(prompt_labels.c.name == name, prompt_labels.c.label == label)
        with self._engine.connect() as conn:
            row = conn.execute(query).mappings().first()
        return dict(row) if row else None

    def labels(self, name: str) -> list[dict[str, Any]]:
        query = select(prompt_labels).where(prompt_labels.c.name == name).order_by(prompt_labels.c.label)
        with self._engine.connect() as conn:
            return [dict(r) for r in conn.execute(query).mappings().all()]

    def label_history(self, name: str, label: str) -> list[dict[str, Any]]:
        query = (
            select(prompt_label_events)
            .where(prompt_label_events.c.name == name, prompt_label_events.c.label == label)
            .order_by(prompt_label_events.c.id)
        )
        with self._engine.connect() as conn:
            return [dict(r) for r in conn.execute(query).mappings().all()]

    def versions(self, name: str) -> list[dict[str, Any]]:
        query = select(prompt_versions).where(prompt_versions.c.name == name).order_by(prompt_versions.c.version)
        with self._engine.connect() as conn:
            return [dict(r) for r in conn.execute(query).mappings().all()]

    def list(self) -> list[dict[str, Any]]:
        """Every prompt with its newest version number and its labels."""
        with self._engine.connect() as conn:
            names = conn.execute(select(prompts).order_by(prompts.c.name)).mappings().all()
            newest = dict(
                conn.execute(
                    select(prompt_versions.c.name, func.max(prompt_versions.c.version)).group_by(prompt_versions.c.name)
                ).all()
            )
            labels: dict[str, dict[str, int]] = {}
            for row in conn.execute(select(prompt_labels)).mappings():
                labels.setdefault(row["name"], {})[row["label"]] = row["version"]
        return [
            {
                "name": r["name"],
                "latest_version": newest.get(r["name"]),
                "labels": labels.get(r["name"], {}),
                "created_at": r["created_at"],
                "updated_at": r["updated_at"],
            }
            for r in names
        ]


class DatasetRepo:
    """Datasets: immutable numbered versions, each a content-hashed JSONL artifact."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def create_version(self, name: str, make: Any, actor: str) -> dict[str, Any]:
        """Add the next version. `make(previous_row_or_None, number)` returns the new row's fields; it runs while
        the dataset is locked, so two appends never both build on the same parent."""
        now = time.time()
        with self._engine.begin() as conn:
            _touch(conn, datasets, name, now)
            previous = (
                conn.execute(
                    select(dataset_versions)
                    .where(dataset_versions.c.name == name)
                    .order_by(dataset_versions.c.version.desc())
                    .limit(1)
                )
                .mappings()
                .first()
            )
            number = (previous["version"] if previous else 0) + 1
            fields = make(dict(previous) if previous else None, number)
            row = {"name": name, "version": number, "author": actor, "created_at": now, **fields}
            conn.execute(insert(dataset_versions).values(**row))
        return row

    def get_version(self, name: str, version: int | None = None) -> dict[str, Any] | None:
        query = select(dataset_versions).where(dataset_versions.c.name == name)
        if version is None:
            query = query.order_by(dataset_versions.c.version.desc()).limit(1)
        else:
            query = query.where(dataset_versions.c.version == version)
        with self._engine.connect() as conn:
            row = conn.execute(query).mappings().first()
        return dict(row) if row else None

    def versions(self, name: str) -> list[dict[str, Any]]:
        query = select(dataset_versions).where(dataset_versions.c.name == name).order_by(dataset_versions.c.version)
        with self._engine.connect() as conn:
            return [dict(r) for r in conn.execute(query).mappings().all()]

    def list(self) -> list[dict[str, Any]]:
        query = select(
            dataset_versions.c.name,
            func.max(dataset_versions.c.version).label("latest_version"),
            func.max(dataset_versions.c.created_at).label("updated_at"),
        ).group_by(dataset_versions.c.name)
        with self._engine.connect() as conn:
            rows = conn.execute(query.order_by(dataset_versions.c.name)).mappings().all()
        return [dict(r) for r in rows]


class ModelRepo:
    """Models: numbered versions (weights by content hash, or a hosted id), aliases, lineage fields."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def create_version(self, name: str, fields: Mapping[str, Any], actor: str) -> dict[str, Any]:
        now = time.time()
        with self._engine.begin() as conn:
            _touch(conn, models, name, now)
            newest = conn.execute(
                select(func.max(model_versions.c.version)).where(model_versions.c.name == name)
            ).scalar_one()
            row = {"name": name, "version": (newest or 0) + 1, "author": actor, "created_at": now, **fields}
            conn.execute(insert(model_versions).values(**row))
        return row

    def find_by_hash(self, sha256: str) -> list[dict[str, Any]]:
        query = select(model_versions).where(model_versions.c.sha256 == sha256).order_by(model_versions.c.created_at)
        with self._engine.connect() as conn:
            return [dict(r) for r in conn.execute(query).mappings().all()]

    def get_version(self, name: str, version: int) -> dict[str, Any] | None:
        query = select(model_versions).where(model_versions.c.name == name, model_versions.c.version == version)
        with self._engine.connect() as conn:
            row = conn.execute(query).mappings().first()
        return dict(row) if row else None

    def versions(self, name: str | None = None) -> list[dict[str, Any]]:
        query = select(model_versions).order_by(model_versions.c.name, model_versions.c.version)
        if name is not None:
            query = query.where(model_versions.c.name == name)
        with self._engine.connect() as conn:
            return [dict(r) for r in conn.execute(query).mappings().all()]

    def children(self, base: str) -> list[dict[str, Any]]:
        query = select(model_versions).where(model_versions.c.base == base).order_by(model_versions.c.created_at)
        with self._engine.connect() as conn:
            return [dict(r) for r in conn.execute(query).mappings().all()]

    def set_alias(self, name: str, alias: str, version: int) -> int | None:
        """Point `alias` at `version` atomically; return the version it pointed at before."""
        now = time.time()
        with self._engine.begin() as conn:
            _touch(conn, models, name, now)
            where = (model_aliases.c.name == name) & (model_aliases.c.alias == alias)
            previous = conn.execute(select(model_aliases.c.version).where(where)).scalar_one_or_none()
            if previous is None:
                conn.execute(insert(model_aliases).values(name=name, alias=alias, version=version, updated_at=now))
            else:
                conn.execute(update(model_aliases).where(where).values(version=version, updated_at=now))
        return previous

    def aliases(self, name: str | None = None) -> list[dict[str, Any]]:
        query = select(model_aliases).order_by(model_aliases.c.name, model_aliases.c.alias)
        if name is not None:
            query = query.where(model_aliases.c.name == name)
        with self._engine.connect() as conn:
            return [dict(r) for r in conn.execute(query).mappings().all()]

    def resolve_alias(self, name: str, alias: str) -> dict[str, Any] | None:
        query = select(model_versions).join(
            model_aliases,
            (model_aliases.c.name == model_versions.c.name) & (model_aliases.c.version == model_versions.c.version),
        )
        query = query.where(model_aliases.c.name == name, model_aliases.c.alias == alias)
        with self._engine.connect() as conn:
            row = conn.execute(query).mappings().first()
        return dict(row) if row else None

    def add_metrics(self, name: str, version: int, metrics: Mapping[str, Any]) -> dict[str, Any] | None:
        with self._engine.begin() as conn:
            where = (model_versions.c.name == name) & (model_versions.c.version == version)
            current = conn.execute(select(model_versions.c.metrics).where(where).with_for_update()).scalar_one_or_none()
            if current is None:
                return None
            merged = {**current, **metrics}
            conn.execute(update(model_versions).where(where).values(metrics=merged))
        return merged


class RegistryRepos:
    """The registry's repositories, attached to `Store` as `store.registry`."""

    def __init__(self, engine: Engine) -> None:
        self.prompts = PromptRepo(engine)
        self.datasets = DatasetRepo(engine)
        self.models = ModelRepo(engine)
