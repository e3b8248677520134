"""The metadata store: SQLAlchemy 2 on SQLite (default) or PostgreSQL, migrated by Alembic on open."""

from shipyard.store.db import Store

__all__ = ["Store"]
