"""Alembic environment for the fleet store: always run in-process on a given connection.

``edgeml.fleet.migrate`` passes the connection in ``config.attributes["connection"]``;
there is no alembic.ini and no offline mode. ``render_as_batch`` makes ALTERs work on SQLite.
"""

from __future__ import annotations

from alembic import context

from edgeml.fleet.schema import Base

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=True,
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
