"""Read-only access to the fleet store for the dashboard.

The dashboard never writes: a SQLite file is opened with ``mode=ro`` (a URI filename, so
SQLite itself refuses every write, whatever a query tries), and every PostgreSQL
connection starts with ``SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY``. The
engines come from :func:`edgeml.fleet.db.make_engine` (PostgreSQL) or are made here
around ``sqlite3.connect(uri=True)`` (SQLite), and the schema is checked like the CLI's.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any
from urllib.parse import quote

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import sessionmaker
from sqlalchemy.pool import QueuePool

from edgeml.errors import UsageError
from edgeml.fleet.db import (
    SQLITE_BUSY_TIMEOUT_MS,
    Store,
    _parse,
    check_schema,
    connect_with_retry,
    db_url,
    make_engine,
    redact,
)

__all__ = ["open_readonly", "readonly_store"]


def _sqlite_ro_engine(path: str) -> Engine:
    file = Path(path).expanduser().resolve()
    if not file.is_file():
        raise UsageError(f"database {file} does not exist: start `edgeml monitor --db "
                         f"sqlite:///{file}` first (or run `edgeml fleet db upgrade`)")
    uri = f"file:{quote(str(file))}?mode=ro"

    def connect() -> sqlite3.Connection:
        conn = sqlite3.connect(uri, uri=True, check_same_thread=False,
                               timeout=SQLITE_BUSY_TIMEOUT_MS / 1000)
        conn.execute("PRAGMA query_only=ON")
        return conn

    return create_engine("sqlite://", creator=connect, poolclass=QueuePool, pool_size=4,
                         pool_pre_ping=True)


def _pg_read_only(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    try:
        cur.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
    finally:
        cur.close()
    dbapi_conn.commit()


def open_readonly(url: str | None = None, *, check: bool = True) -> Store:
    """A :class:`Store` on ``url`` (``--db``, else ``$EDGEML_FLEET_DB``) that cannot write."""
    resolved = db_url(url)
    parsed = _parse(resolved)
    if parsed.get_backend_name() == "sqlite":
        if not parsed.database or parsed.database == ":memory:":
            raise UsageError("the dashboard needs a database file or server, not :memory:")
        engine = _sqlite_ro_engine(parsed.database)
    else:
        engine = make_engine(resolved)
        event.listen(engine, "connect", _pg_read_only)
    if check:
        try:
            connect_with_retry(engine)
            check_schema(engine, resolved)
        except BaseException:
            engine.dispose()
            raise
    return Store(redact(make_url(parsed)), engine, sessionmaker(engine, expire_on_commit=False))


def readonly_store(source: Store | Engine | str | None) -> Store:
    """What :func:`~edgeml.fleet.dashboard.create_app` accepts, as a store.

    A URL is opened read-only; an engine or a store given by the caller (the monitor
    mounting the dashboard beside its own writer) is used as it is.
    """
    if isinstance(source, Store):
        return source
    if isinstance(source, Engine):
        return Store(redact(source.url), source, sessionmaker(source, expire_on_commit=False))
    return open_readonly(source)
