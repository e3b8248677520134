"""Alembic environment: Shipyard passes an open connection in `config.attributes`."""

from alembic import context

from shipyard.store.schema import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("Shipyard runs its migrations through shipyard.store.db.migrate()")
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
