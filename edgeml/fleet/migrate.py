"""Alembic migrations of the fleet store, shipped in the package and run in-process.

``upgrade(url)`` (``edgeml fleet db upgrade --db URL``) brings a database to the head
revision under a lock, so that parallel monitors or upgrades never race (mlflow #19943):
``pg_advisory_xact_lock`` on PostgreSQL, an exclusive file lock beside a SQLite file.
All the DDL of one upgrade runs in one transaction (PostgreSQL; SQLite batch mode copies
tables), so a failed upgrade leaves the previous revision in place. More than one head in
the packaged scripts is an error.
"""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterator
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine

from edgeml.fleet.db import StoreError, connect_with_retry, db_url, make_engine, redact

__all__ = ["current_revision", "head_revision", "upgrade"]

MIGRATIONS = Path(__file__).parent / "migrations"
_PG_LOCK_KEY = 0x6564676D6C  # "edgml": one advisory lock for every edgeml schema upgrade


def _config(connection: Connection | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str:
    heads = ScriptDirectory.from_config(_config()).get_heads()
    if len(heads) != 1:
        raise StoreError(f"the packaged fleet migrations have {len(heads)} heads "
                         f"({', '.join(heads)}); expected exactly one")
    return heads[0]


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


@contextlib.contextmanager
def _file_lock(engine: Engine) -> Iterator[None]:
    database = engine.url.database
    if engine.dialect.name != "sqlite" or not database or database == ":memory:":
        yield
        return
    lock_path = Path(database).expanduser().with_name(Path(database).name + ".migrate-lock")
    with open(lock_path, "a+b") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def upgrade_engine(engine: Engine, revision: str = "head") -> tuple[str | None, str]:
    """Upgrade the database behind ``engine``; returns ``(revision before, revision after)``."""
    head_revision()  # refuses several heads before touching anything
    connect_with_retry(engine)
    with _file_lock(engine), engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY})
        before = MigrationContext.configure(conn).get_current_revision()
        command.upgrade(_config(conn), revision)
        after = MigrationContext.configure(conn).get_current_revision()
    if after is None:
        raise StoreError(f"upgrade of {redact(engine.url)} left no schema revision")
    return before, after


def upgrade(url: str | None = None, revision: str = "head", *,
            schema: str | None = None) -> tuple[str | None, str]:
    """``edgeml fleet db upgrade``: create or upgrade the store at ``url`` (see module doc)."""
    engine = make_engine(db_url(url), schema=schema)
    try:
        return upgrade_engine(engine, revision)
    finally:
        engine.dispose()
