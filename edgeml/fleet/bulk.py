"""Bulk writes of the hot tables, below SQLAlchemy's per-row machinery.

PostgreSQL (:func:`unnest_insert`): one ``INSERT ... SELECT FROM unnest(arrays)`` per batch.
A multi-row ``VALUES`` statement with ~28 parameters per row spends most of its time in
psycopg's query splitting, and text-format arrays in escaping JSON; here each column is
one array parameter, sent in psycopg's binary format, whatever the batch size. Used by
:mod:`edgeml.fleet.writer` for the hot tables on PostgreSQL (SQLite's executemany is
already fast). The statement runs on the SQLAlchemy connection's own DBAPI connection,
inside its transaction.

SQLite (:func:`values_insert`): multi-row ``INSERT ... VALUES (...), (...) ... RETURNING``
statements of up to SQLite's parameter limit, values converted by the columns' own bind
processors (the same conversions SQLAlchemy applies), executed on the DBAPI cursor; the
store's UTC timestamps by :func:`sqlite_utc` (one ``isoformat`` instead of a decorator
and a ``%``-format: the same text, a fifth of the time; tests/test_fleet_store.py checks).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timezone
from functools import lru_cache
from operator import itemgetter
from typing import Any

from sqlalchemy import JSON, DateTime, Float, Integer, LargeBinary, String, Table
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Connection

__all__ = ["unnest_insert", "values_insert"]

_SQLITE_MAX_PARAMS = 32766


def _pg_type(table: Table, name: str) -> tuple[str, str]:
    """(array element type for unnest, cast in the SELECT) of one column."""
    kind = table.c[name].type
    if isinstance(kind, JSON):  # json or jsonb, as the column says on PostgreSQL
        return "TEXT", kind.compile(dialect=postgresql.dialect())
    kind = getattr(kind, "impl", kind)
    if isinstance(kind, String):
        return "TEXT", ""
    if isinstance(kind, Integer):
        return "BIGINT", ""
    if isinstance(kind, Float):
        return "FLOAT8", ""
    if isinstance(kind, DateTime):
        return "TIMESTAMPTZ", ""
    if isinstance(kind, LargeBinary):
        return "BYTEA", ""
    raise TypeError(f"no PostgreSQL array type for {table.name}.{name}")


@lru_cache(maxsize=64)
def _sql(table: Table, columns: tuple[str, ...], conflict: str, returning: tuple[str, ...]) -> str:
    names = ", ".join(columns)
    arrays, selected = [], []
    for name in columns:
        element, cast = _pg_type(table, name)
        arrays.append(f"%({name})b::{element}[]")
        selected.append(f"u.{name}::{cast}" if cast else f"u.{name}")
    sql = (f"INSERT INTO {table.name} ({names}) SELECT {', '.join(selected)} "
           f"FROM unnest({', '.join(arrays)}) AS u({names}) {conflict}")
    if returning:
        sql += " RETURNING " + ", ".join(returning)
    return sql


def unnest_insert(conn: Connection, table: Table, rows: list[dict[str, Any]], conflict: str,
                  returning: tuple[str, ...] = ()) -> list[tuple[Any, ...]]:
    """Insert ``rows`` (same keys each) into ``table``; ``conflict`` is the ON CONFLICT clause."""
    if not rows:
        return []
    columns = tuple(rows[0])
    sql = _sql(table, columns, conflict, returning)
    params = {name: [row[name] for row in rows] for name in columns}
    driver = conn.connection.driver_connection
    assert driver is not None
    with driver.cursor() as cur:
        cur.execute(sql, params, binary=True)
        return list(cur.fetchall()) if returning else []


@lru_cache(maxsize=64)
def _values_sql(table: Table, columns: tuple[str, ...], rows: int, conflict: str,
                returning: tuple[str, ...]) -> str:
    one = "(" + ", ".join("?" * len(columns)) + ")"
    sql = (f"INSERT INTO {table.name} ({', '.join(columns)}) VALUES "
           f"{', '.join([one] * rows)} {conflict}")
    if returning:
        sql += " RETURNING " + ", ".join(returning)
    return sql


def sqlite_utc(value: datetime) -> str:
    """``UTCDateTime`` as SQLAlchemy's SQLite dialect stores it: naive UTC, 6-digit µs."""
    if value.tzinfo is not None and value.tzinfo is not timezone.utc:
        value = value.astimezone(timezone.utc)
    return value.replace(tzinfo=None).isoformat(" ", "microseconds")


def _memo(proc: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """``proc`` remembering its last value (a batch shares its received_at)."""
    last: list[Any] = [None, None]

    def convert(value: Any) -> Any:
        if value is not last[0]:
            last[0], last[1] = value, proc(value)
        return last[1]

    return convert


def _sqlite_proc(table: Table, name: str, dialect: Any) -> Callable[[Any], Any] | None:
    from edgeml.fleet.schema import UTCDateTime

    kind = table.c[name].type
    if isinstance(kind, UTCDateTime):
        return _memo(sqlite_utc)
    return kind._cached_bind_processor(dialect)  # type: ignore[no-any-return]


def values_insert(conn: Connection, table: Table, rows: list[dict[str, Any]], conflict: str,
                  returning: tuple[str, ...] = ()) -> list[tuple[Any, ...]]:
    """Insert ``rows`` (same keys each) into a SQLite ``table``; ``conflict``: ON CONFLICT ..."""
    if not rows:
        return []
    columns = tuple(rows[0])
    dialect = conn.dialect
    procs = [_sqlite_proc(table, name, dialect) for name in columns]
    convert = [(i, proc) for i, proc in enumerate(procs) if proc is not None]
    getter = itemgetter(*columns) if len(columns) > 1 else (lambda row: (row[columns[0]],))
    per = max(1, _SQLITE_MAX_PARAMS // len(columns))
    out: list[tuple[Any, ...]] = []
    driver = conn.connection.driver_connection
    assert driver is not None
    cur = driver.cursor()
    try:
        for start in range(0, len(rows), per):
            chunk = rows[start:start + per]
            params: list[Any] = []
            for row in chunk:
                values = list(getter(row))
                for i, proc in convert:
                    value = values[i]
                    if value is not None:
                        values[i] = proc(value)
                params += values
            cur.execute(_values_sql(table, columns, len(chunk), conflict, returning), params)
            if returning:
                out.extend(cur.fetchall())
    finally:
        cur.close()
    return out
