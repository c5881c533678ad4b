"""Write a batch of classified messages to the store in one transaction, idempotently.

Every insert is ``INSERT ... ON CONFLICT DO NOTHING`` (SQLite and PostgreSQL dialects of
SQLAlchemy), keyed by (fleet, device, session, seq) for windows and by id for samples and
feedback, so a redelivered message never makes a second row. The rows actually inserted
come back through ``RETURNING`` and feed, in the same transaction, the per-session seq
accounting of ``window_seqs`` (lost windows = last - first + 1 - received). ``$state`` and
``$info`` are upserts guarded by the session on record: a ``lost`` will from an older
session than the one stored changes nothing.

Rows are written in a stable key order so that two monitors of one group rarely deadlock (a
deadlock PostgreSQL breaks is a transient error: the caller retries the batch).
A batch the database refuses (not a connection problem) is retried one message per
transaction; a message refused alone goes to quarantine as ``db-rejected``.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import Table, and_, or_
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from edgeml.fleet.bulk import unnest_insert, values_insert
from edgeml.fleet.db import Store
from edgeml.fleet.ingest import Parsed, Rejected
from edgeml.fleet.schema import (
    Device,
    DeviceSession,
    Feedback,
    MetricsWindow,
    Model,
    Quarantine,
    Sample,
    WindowSeqs,
)
from edgeml.runtime import topics

__all__ = ["Item", "WriteResult", "Writer", "is_transient"]

log = logging.getLogger(__name__)

QUARANTINE_KEEP_BYTES = 64 * 1024
DEVICES = Device.__table__
WINDOWS = MetricsWindow.__table__
SEQS = WindowSeqs.__table__
SAMPLES = Sample.__table__
FEEDBACK = Feedback.__table__
SESSIONS = DeviceSession.__table__
MODELS = Model.__table__
QUARANTINE = Quarantine.__table__
_WINDOW_KEY = ("fleet", "device", "session", "seq")
_WINDOW_CONFLICT = "ON CONFLICT (fleet, device, session, seq) DO NOTHING"
_SEQS_CONFLICT = (
    "ON CONFLICT (fleet, device, session) DO UPDATE SET "
    "first_seq = least(window_seqs.first_seq, excluded.first_seq), "
    "last_seq = greatest(window_seqs.last_seq, excluded.last_seq), "
    "received = window_seqs.received + excluded.received, updated_at = excluded.updated_at"
)
_SEQS_CONFLICT_SQLITE = _SEQS_CONFLICT.replace("least(", "min(").replace("greatest(", "max(")
_TOUCH_CONFLICT = ("ON CONFLICT (fleet, device) DO UPDATE SET last_seen = excluded.last_seen "
                   "WHERE devices.last_seen < excluded.last_seen")


@dataclass
class Item:
    """One received message: what it became, and where it came from."""

    topic: str
    payload: bytes
    result: Parsed | Rejected | None


@dataclass
class WriteResult:
    stored: Counter[str] = field(default_factory=Counter)
    duplicates: Counter[str] = field(default_factory=Counter)
    quarantined: Counter[str] = field(default_factory=Counter)
    stale_states: int = 0
    seconds: float = 0.0

    def add(self, other: WriteResult) -> None:
        self.stored.update(other.stored)
        self.duplicates.update(other.duplicates)
        self.quarantined.update(other.quarantined)
        self.stale_states += other.stale_states


def is_transient(exc: BaseException) -> bool:
    """A connection or lock problem worth retrying the same batch later (not a bad row)."""
    if isinstance(exc, (OperationalError, InterfaceError)):
        return True
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


def _t(table: Any) -> Table:
    return table  # type: ignore[no-any-return]


class Writer:
    """Writes batches to ``store``. Not thread-safe: one writer thread owns it."""

    def __init__(self, store: Store, touch_interval: float = 30.0) -> None:
        self.store = store
        self.dialect = store.dialect
        self.touch_interval = touch_interval
        self._touched: dict[tuple[str, str], float] = {}

    # -- public -------------------------------------------------------------------------

    def write(self, items: Sequence[Item]) -> WriteResult:
        """Store ``items`` in one transaction (falls back to one per item for bad rows).

        Raises the database's error when it is transient (connection lost, locked): the
        caller keeps the batch, waits and calls again.
        """
        start = time.perf_counter()
        try:
            result, touched = self._write_all(items)
        except Exception as exc:
            if is_transient(exc):
                raise
            log.warning("the database refused a batch (%s); storing it message by message",
                        type(exc).__name__)
            result, touched = WriteResult(), {}
            for item in items:
                try:
                    one, seen = self._write_all([item])
                except Exception as single:
                    if is_transient(single):
                        raise
                    detail = str(getattr(single, "orig", None) or single).splitlines()[0][:500]
                    one, seen = self._write_all([Item(item.topic, item.payload,
                                                      Rejected("db-rejected", detail))])
                result.add(one)
                touched.update(seen)
        self._touched.update(touched)
        result.seconds = time.perf_counter() - start
        return result

    # -- one transaction ------------------------------------------------------------------

    def _insert(self, table: Any) -> Any:
        return (pg_insert if self.dialect == "postgresql" else sqlite_insert)(_t(table))

    def _write_all(self, items: Sequence[Item]) -> tuple[WriteResult, dict[tuple[str, str], float]]:
        result = WriteResult()
        windows: list[dict[str, Any]] = []
        samples: list[dict[str, Any]] = []
        feedback: list[dict[str, Any]] = []
        rejected: list[dict[str, Any]] = []
        ordered: list[Parsed] = []  # $state / $info, applied in arrival order
        now = datetime.now(timezone.utc)
        for item in items:
            r = item.result
            if isinstance(r, Rejected):
                rejected.append(_quarantine_row(item, r, now))
                result.quarantined[r.reason] += 1
            elif isinstance(r, Parsed):
                if r.kind == topics.METRICS:
                    windows.append(r.row)
                elif r.kind == topics.SAMPLES:
                    samples.append(r.row)
                elif r.kind == topics.FEEDBACK:
                    feedback.append(r.row)
                else:
                    ordered.append(r)
        touched: dict[tuple[str, str], float] = {}
        with self.store.engine.begin() as conn:
            if windows:
                touched = self._windows(conn, windows, result, now)
            for kind, table, rows in ((topics.SAMPLES, SAMPLES, samples),
                                      (topics.FEEDBACK, FEEDBACK, feedback)):
                if rows:
                    rows.sort(key=lambda row: row["id"])
                    stmt = self._insert(table).on_conflict_do_nothing(
                        index_elements=["id"]).returning(_t(table).c.id)
                    inserted = len(conn.execute(stmt, rows).all())
                    result.stored[kind] += inserted
                    result.duplicates[kind] += len(rows) - inserted
            for parsed in ordered:
                if parsed.kind == topics.STATE:
                    if self._state(conn, parsed.row):
                        result.stored[topics.STATE] += 1
                    else:
                        result.stale_states += 1
                else:
                    self._info(conn, parsed.row)
                    result.stored[topics.INFO] += 1
            if rejected:
                conn.execute(self._insert(QUARANTINE), rejected)
        return result, touched

    def _windows(self, conn: Connection, rows: list[dict[str, Any]], result: WriteResult,
                 now: datetime) -> dict[tuple[str, str], float]:
        rows.sort(key=lambda r: (r["fleet"], r["device"], r["session"], r["seq"]))
        pg = self.dialect == "postgresql"
        w = _t(WINDOWS)
        if pg:
            inserted = unnest_insert(conn, w, rows, _WINDOW_CONFLICT, _WINDOW_KEY)
        else:
            inserted = values_insert(conn, w, rows, _WINDOW_CONFLICT, _WINDOW_KEY)
        result.stored[topics.METRICS] += len(inserted)
        result.duplicates[topics.METRICS] += len(rows) - len(inserted)
        spans: dict[tuple[str, str, int], list[int]] = {}
        for fleet, device, session, seq in inserted:
            span = spans.get((fleet, device, session))
            if span is None:
                spans[(fleet, device, session)] = [seq, seq, 1]
            else:
                span[0] = min(span[0], seq)
                span[1] = max(span[1], seq)
                span[2] += 1
        seqs = [{"fleet": f, "device": d, "session": sess, "first_seq": a, "last_seq": b,
                 "received": n, "updated_at": now}
                for (f, d, sess), (a, b, n) in sorted(spans.items())]
        if seqs and pg:
            unnest_insert(conn, _t(SEQS), seqs, _SEQS_CONFLICT)
        elif seqs:  # one key per row: a multi-row upsert is safe
            values_insert(conn, _t(SEQS), seqs, _SEQS_CONFLICT_SQLITE)
        # last_seen of devices, at most once per touch_interval per device and monitor
        clock = time.monotonic()
        latest: dict[tuple[str, str], datetime] = {}
        for row in rows:
            key = (row["fleet"], row["device"])
            if clock - self._touched.get(key, -1e18) >= self.touch_interval:
                latest[key] = now
        touch = [{"fleet": f, "device": dev, "first_seen": t, "last_seen": t}
                 for (f, dev), t in sorted(latest.items())]
        if touch and pg:
            unnest_insert(conn, _t(DEVICES), touch, _TOUCH_CONFLICT)
        elif touch:
            values_insert(conn, _t(DEVICES), touch, _TOUCH_CONFLICT)
        return dict.fromkeys(latest, clock)

    def _state(self, conn: Connection, row: dict[str, Any]) -> bool:
        d = _t(DEVICES)
        ins = self._insert(DEVICES)
        new_session = ins.excluded.state_session
        fresh = or_(new_session.is_(None),
                    and_(or_(d.c.session.is_(None), new_session >= d.c.session),
                         or_(d.c.state_session.is_(None), new_session >= d.c.state_session)))
        stmt = ins.values(
            fleet=row["fleet"], device=row["device"], state=row["state"],
            state_session=row["state_session"], state_at=row["now"],
            first_seen=row["now"], last_seen=row["now"],
        ).on_conflict_do_update(
            index_elements=["fleet", "device"],
            set_={"state": ins.excluded.state, "state_session": new_session,
                  "state_at": ins.excluded.state_at, "last_seen": ins.excluded.last_seen},
            where=fresh,
        ).returning(d.c.fleet)
        return conn.execute(stmt).first() is not None

    def _info(self, conn: Connection, row: dict[str, Any]) -> None:
        now = row["now"]
        d = _t(DEVICES)
        ins = self._insert(DEVICES)
        conn.execute(ins.values(
            fleet=row["fleet"], device=row["device"], session=row["session"],
            model_name=row["model_name"], model_version=row["model_version"],
            first_seen=now, last_seen=now,
        ).on_conflict_do_update(
            index_elements=["fleet", "device"],
            set_={"session": ins.excluded.session, "model_name": ins.excluded.model_name,
                  "model_version": ins.excluded.model_version,
                  "last_seen": ins.excluded.last_seen},
            where=or_(d.c.session.is_(None), d.c.session <= ins.excluded.session),
        ))
        conn.execute(self._insert(SESSIONS).values(
            fleet=row["fleet"], device=row["device"], session=row["session"],
            started_at=row["started_at"], model_name=row["model_name"],
            model_version=row["model_version"], info=row["info"], first_seen=now,
        ).on_conflict_do_nothing(index_elements=["fleet", "device", "session"]))
        m = _t(MODELS)
        ins = self._insert(MODELS)
        conn.execute(ins.values(
            name=row["model_name"], version=row["model_version"], task=row["task"],
            sha256=row["sha256"], created_at=row["created_at"], classes=row["classes"],
            reference=row["reference"], first_seen=now,
        ).on_conflict_do_update(
            index_elements=["name", "version"],
            set_={"reference": ins.excluded.reference},
            where=m.c.reference.is_(None),
        ))


def _quarantine_row(item: Item, rejected: Rejected, now: datetime) -> dict[str, Any]:
    kept = item.payload[:QUARANTINE_KEEP_BYTES]
    text = kept.decode("utf-8", errors="replace").replace("\x00", "\ufffd")
    return {"received_at": now, "topic": item.topic.replace("\x00", "\ufffd"),
            "reason": rejected.reason, "detail": rejected.detail.replace("\x00", "\ufffd"),
            "size": len(item.payload), "payload": kept, "text": text}
