"""Retention: metrics windows older than N days are rolled up per (device, model, hour).

:func:`roll_up` (``edgeml fleet db upgrade --retain-days N``, or a running monitor with
``--retain-days N``) moves every window whose ``window_end`` is older than the cutoff into
``metrics_hourly`` (windows, seconds, requests, errors and rows add up; p95/p99/max latency
keep the hour's maximum) and deletes it, in one transaction. Lost-window accounting lives
in ``window_seqs`` and is not affected. Samples and feedback older than the cutoff are
deleted (their windows' counts are kept in the roll-up).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import Table, delete, func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from edgeml.errors import UsageError
from edgeml.fleet.db import Store
from edgeml.fleet.schema import Feedback, MetricsHourly, MetricsWindow, Sample

__all__ = ["RollUp", "roll_up"]

_CHUNK = 5000


@dataclass(frozen=True)
class RollUp:
    windows: int
    hours: int
    samples: int
    feedback: int
    cutoff: datetime


def _hour(ts: datetime) -> datetime:
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=timezone.utc)
    return ts.astimezone(timezone.utc).replace(minute=0, second=0, microsecond=0)


def _max(a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    return a if b is None else max(a, b)


def _rowcount(result: Any) -> int:
    return int(getattr(result, "rowcount", 0) or 0)


def roll_up(store: Store, retain_days: float, now: datetime | None = None) -> RollUp:
    """Roll windows older than ``retain_days`` up per hour; see the module docstring."""
    if not retain_days > 0:
        raise UsageError(f"--retain-days {retain_days} must be > 0")
    now = now or datetime.now(timezone.utc)
    cutoff = now - timedelta(days=retain_days)
    w: Table = MetricsWindow.__table__  # type: ignore[assignment]
    h: Table = MetricsHourly.__table__  # type: ignore[assignment]
    samples_t: Table = Sample.__table__  # type: ignore[assignment]
    feedback_t: Table = Feedback.__table__  # type: ignore[assignment]
    hours: dict[tuple[str, str, str, int, datetime], dict[str, Any]] = {}
    with store.session() as session:
        max_id = session.execute(select(func.max(w.c.id)).where(w.c.window_end < cutoff)).scalar()
        windows = 0
        if max_id is not None:
            query = select(w.c.fleet, w.c.device, w.c.model_name, w.c.model_version,
                           w.c.window_end, w.c.seconds, w.c.requests, w.c.errors, w.c.rows,
                           w.c.p95_ms, w.c.p99_ms, w.c.latency_max_ms).where(
                w.c.window_end < cutoff, w.c.id <= max_id)
            for row in session.execute(query.execution_options(yield_per=_CHUNK)):
                windows += 1
                key = (row.fleet, row.device, row.model_name or "", int(row.model_version or 0),
                       _hour(row.window_end))
                acc = hours.get(key)
                if acc is None:
                    acc = hours[key] = {"windows": 0, "seconds": 0.0, "requests": 0, "errors": 0,
                                        "rows": 0, "p95_ms_max": None, "p99_ms_max": None,
                                        "latency_max_ms": None}
                acc["windows"] += 1
                acc["seconds"] += float(row.seconds or 0.0)
                acc["requests"] += int(row.requests or 0)
                acc["errors"] += int(row.errors or 0)
                acc["rows"] += int(row.rows or 0)
                acc["p95_ms_max"] = _max(acc["p95_ms_max"], row.p95_ms)
                acc["p99_ms_max"] = _max(acc["p99_ms_max"], row.p99_ms)
                acc["latency_max_ms"] = _max(acc["latency_max_ms"], row.latency_max_ms)
            ins = (pg_insert if store.dialect == "postgresql" else sqlite_insert)(h)
            hi = func.greatest if store.dialect == "postgresql" else func.max
            stmt = ins.on_conflict_do_update(
                index_elements=["fleet", "device", "model_name", "model_version", "hour"],
                set_={"windows": h.c.windows + ins.excluded.windows,
                      "seconds": h.c.seconds + ins.excluded.seconds,
                      "requests": h.c.requests + ins.excluded.requests,
                      "errors": h.c.errors + ins.excluded.errors,
                      "rows": h.c.rows + ins.excluded.rows,
                      "p95_ms_max": hi(func.coalesce(h.c.p95_ms_max, ins.excluded.p95_ms_max),
                                       func.coalesce(ins.excluded.p95_ms_max, h.c.p95_ms_max)),
                      "p99_ms_max": hi(func.coalesce(h.c.p99_ms_max, ins.excluded.p99_ms_max),
                                       func.coalesce(ins.excluded.p99_ms_max, h.c.p99_ms_max)),
                      "latency_max_ms": hi(
                          func.coalesce(h.c.latency_max_ms, ins.excluded.latency_max_ms),
                          func.coalesce(ins.excluded.latency_max_ms, h.c.latency_max_ms))},
            )
            rows = [{"fleet": f, "device": d, "model_name": m, "model_version": v, "hour": hr,
                     **acc} for (f, d, m, v, hr), acc in sorted(hours.items())]
            for start in range(0, len(rows), _CHUNK):
                session.execute(stmt, rows[start:start + _CHUNK])
            session.execute(delete(w).where(w.c.window_end < cutoff, w.c.id <= max_id))
        samples = _rowcount(session.execute(delete(samples_t).where(
            samples_t.c.received_at < cutoff)))
        feedback = _rowcount(session.execute(delete(feedback_t).where(
            feedback_t.c.received_at < cutoff)))
    return RollUp(windows, len(hours), int(samples or 0), int(feedback or 0), cutoff)
