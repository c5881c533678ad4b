"""The one module that makes database engines and sessions for the fleet store.

A store is a SQLAlchemy URL: a SQLite file by default (``sqlite:///fleet.db``; a bare path
is accepted too) or PostgreSQL through psycopg 3 (``postgresql+psycopg://user@host/db``;
``postgresql://`` is read as psycopg). Every SQLite connection gets ``journal_mode=WAL``,
``busy_timeout`` and ``foreign_keys=ON``; every pool pings before use (``pool_pre_ping``).

:func:`open_store` also checks that the schema is at the head revision of the migrations
shipped in the package and otherwise raises :class:`SchemaMismatchError`, whose message is
the command to run (``edgeml fleet db upgrade --db URL``).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event, inspect, text
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import ArgumentError, OperationalError
from sqlalchemy.exc import SQLAlchemyError as _SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from edgeml.errors import StoreError, UsageError

__all__ = [
    "DEFAULT_DB",
    "ENV_DB",
    "SQLITE_BUSY_TIMEOUT_MS",
    "Raw",
    "SchemaMismatchError",
    "Store",
    "StoreError",
    "StoreUnavailableError",
    "db_url",
    "make_engine",
    "open_store",
    "redact",
    "store_errors",
]

ENV_DB = "EDGEML_FLEET_DB"
DEFAULT_DB = "sqlite:///fleet.db"
SQLITE_BUSY_TIMEOUT_MS = 30_000
SQLAlchemyError = _SQLAlchemyError


class Raw(str):
    """JSON text already validated: the store's JSON columns write it as it is, unparsed."""

    __slots__ = ()


def _json_dumps(value: object) -> str:
    if isinstance(value, Raw):
        return str(value)
    return json.dumps(value, separators=(",", ":"), allow_nan=False)


class StoreUnavailableError(StoreError):
    """The database server cannot be reached (the monitor retries with backoff)."""


class SchemaMismatchError(StoreError):
    """The store's schema is not the one this edgeml expects; says which command fixes it."""


def db_url(value: str | None) -> str:
    """``--db URL``, else ``$EDGEML_FLEET_DB``, else ``sqlite:///fleet.db``."""
    return value or os.environ.get(ENV_DB) or DEFAULT_DB


def redact(url: str | URL) -> str:
    """The URL without its password (safe to print)."""
    try:
        return make_url(url).render_as_string(hide_password=True) if isinstance(url, str) \
            else url.render_as_string(hide_password=True)
    except ArgumentError:
        return str(url)


def _parse(url: str) -> URL:
    if "://" not in url:  # a bare file path is a SQLite file
        url = "sqlite:///" + str(Path(url))
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise UsageError(f"database URL {url!r} is not valid: use sqlite:///FILE or "
                         "postgresql+psycopg://USER@HOST/DB") from exc
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.get_backend_name() not in ("sqlite", "postgresql"):
        raise UsageError(f"database {redact(parsed)}: only SQLite and PostgreSQL are supported")
    if parsed.get_backend_name() == "postgresql" and parsed.get_driver_name() != "psycopg":
        raise UsageError(f"database {redact(parsed)}: use the psycopg 3 driver "
                         "(postgresql+psycopg://...)")
    return parsed


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    try:
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA synchronous=NORMAL")  # durable in WAL mode at each checkpoint
    finally:
        cur.close()


def make_engine(url: str, *, schema: str | None = None, **kwargs: Any) -> Engine:
    """An engine for ``url``: SQLite pragmas on every connect, pre-ping, short PG connect timeout.

    ``schema`` (PostgreSQL only) puts every table in that schema through ``search_path``;
    the tests use it to run isolated in the shared server.
    """
    parsed = _parse(url)
    options: dict[str, Any] = {"pool_pre_ping": True, "json_serializer": _json_dumps}
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            folder = Path(parsed.database).expanduser().resolve().parent
            if not folder.is_dir():
                raise UsageError(f"database {redact(parsed)}: folder {folder} does not exist")
        options["connect_args"] = {"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000,
                                   "check_same_thread": False}
    else:
        connect_args: dict[str, Any] = {"connect_timeout": 5}
        if schema:
            connect_args["options"] = f"-csearch_path={schema}"
        options["connect_args"] = connect_args
        options["pool_size"] = 4
    options.update(kwargs)
    engine = create_engine(parsed, **options)
    if parsed.get_backend_name() == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


@dataclass
class Store:
    """An engine and its session factory. ``with store.session() as s: ...`` commits or rolls back."""

    url: str
    engine: Engine
    sessions: sessionmaker[Session]

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self.sessions.begin() as session:
            yield session

    def dispose(self) -> None:
        self.engine.dispose()


@contextmanager
def store_errors(url: str | URL) -> Iterator[None]:
    """Map SQLAlchemy's errors to :class:`StoreError` at the library's edge (one line each)."""
    try:
        yield
    except OperationalError as exc:
        raise StoreUnavailableError(
            f"database {redact(url)} is unreachable: {_first_line(exc)}") from exc
    except _SQLAlchemyError as exc:
        raise StoreError(f"database {redact(url)}: {_first_line(exc)}") from exc


def connect_with_retry(engine: Engine, attempts: int = 3, delay: float = 0.5) -> None:
    """Open one connection, retrying ``attempts`` times with doubling delays (mlflow does too)."""
    for attempt in range(attempts):
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            return
        except OperationalError as exc:
            if attempt == attempts - 1:
                raise StoreUnavailableError(
                    f"database {redact(engine.url)} is unreachable: {_first_line(exc)}") from exc
            time.sleep(delay * 2**attempt)


def _first_line(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    return (str(orig).strip().splitlines() or [type(orig).__name__])[0]


def open_store(url: str | None = None, *, check: bool = True, schema: str | None = None,
               **engine_kwargs: Any) -> Store:
    """Make the engine and sessions for ``url``; with ``check`` insist on the head schema."""
    resolved = db_url(url)
    engine = make_engine(resolved, schema=schema, **engine_kwargs)
    if check:
        try:
            connect_with_retry(engine)
            check_schema(engine, resolved)
        except BaseException:
            engine.dispose()
            raise
    return Store(resolved, engine, sessionmaker(engine, expire_on_commit=False))


def check_schema(engine: Engine, url: str) -> None:
    """Raise :class:`SchemaMismatchError` unless the database is at the packaged head revision."""
    from edgeml.fleet.migrate import current_revision, head_revision

    head = head_revision()
    current = current_revision(engine)
    if current == head:
        return
    fix = f"edgeml fleet db upgrade --db {redact(url)}"
    if current is None:
        has_tables = bool(inspect(engine).get_table_names())
        what = "has tables but no edgeml schema version" if has_tables else "has no fleet schema"
        raise SchemaMismatchError(f"database {redact(url)} {what}; run: {fix}")
    raise SchemaMismatchError(
        f"database {redact(url)} is at schema revision {current}, this edgeml needs {head}; "
        f"run: {fix}")
