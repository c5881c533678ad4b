"""The data of the dashboard's fleet, alerts and window pages (one function per page).

Each function returns plain JSON-able dicts; the HTML page renders them and its JSON twin
under ``/api/`` returns them as they are (datasette's pattern). The device rows come from
:func:`edgeml.fleet.views.devices_table` (the ``edgeml fleet devices`` CLI's rows), with
what the page adds: the ``drifting`` and ``alerting`` flags and the counts at the top.

``drifting``: the device's worst drift score (PSI or JS distance, from the views) is at or
above the alert threshold of that statistic for its fleet and model (thresholds file).
``alerting``: the device has an open alert. ``up``: its ``$state`` is ``ready``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import func, select

from edgeml.errors import NotFoundError
from edgeml.fleet.db import Store
from edgeml.fleet.schema import Alert, Device, MetricsWindow
from edgeml.fleet.thresholds import Thresholds, load_thresholds
from edgeml.fleet.views import _iso, alerts_table, devices_table

__all__ = ["alerts_data", "fleet_data", "open_alerts_by_device", "window_data"]


def open_alerts_by_device(store: Store) -> dict[tuple[str, str], int]:
    """Open alerts per (fleet, device) (the CLI could show them as a column too)."""
    a = Alert.__table__
    with store.session() as session:
        return {(f, d): int(n) for f, d, n in session.execute(
            select(a.c.fleet, a.c.device, func.count())
            .where(a.c.resolved_at.is_(None), a.c.device.is_not(None))
            .group_by(a.c.fleet, a.c.device))}


def _drift_alert_level(th: Thresholds, row: dict[str, Any],
                       memo: dict[tuple[Any, ...], float | None]) -> float | None:
    statistic, feature = row.get("drift_statistic"), row.get("drift_feature")
    if statistic is None or row.get("drift_score") is None:
        return None
    if feature == "prediction":
        kind = "prediction"
    else:
        kind = "categorical" if statistic == "js" else "numeric"
    key = (row["fleet"], row.get("model_name"), row.get("model_version"), kind, statistic)
    if key not in memo:
        level = th.rules(*key[:3]).drift(kind).get(str(statistic))
        memo[key] = level.alert if level is not None else None
    return memo[key]


def fleet_data(store: Store, *, now: datetime | None = None,
               thresholds: Thresholds | None = None) -> dict[str, Any]:
    """Every device (the views' row + drifting/alerting), the filters' values, the counts."""
    th = thresholds or load_thresholds()
    rows = devices_table(store, now=now)
    alerts = open_alerts_by_device(store)
    counts = {"devices": len(rows), "up": 0, "lost": 0, "drifting": 0, "alerting": 0}
    memo: dict[tuple[Any, ...], float | None] = {}
    for row in rows:
        level = _drift_alert_level(th, row, memo)
        row["drift_alert_at"] = level
        row["drifting"] = bool(level is not None and float(row["drift_score"]) >= level)
        row["open_alerts"] = alerts.get((row["fleet"], row["device"]), 0)
        row["alerting"] = row["open_alerts"] > 0
        counts["up"] += row["state"] == "ready"
        counts["lost"] += row["state"] == "lost"
        counts["drifting"] += row["drifting"]
        counts["alerting"] += row["alerting"]
    return {
        "generated_at": _iso(now or datetime.now().astimezone()),
        "counts": counts,
        "fleets": sorted({r["fleet"] for r in rows}),
        "states": sorted({str(r["state"]) for r in rows if r["state"]}),
        "models": sorted({str(r["model"]) for r in rows if r["model"]}),
        "devices": rows,
    }


def alerts_data(store: Store, *, limit: int = 500) -> dict[str, Any]:
    """Open and resolved alerts, newest first, each with its device and window.

    The window is the alert's ``window_id`` when the evaluator recorded one, else the
    device's last window at the time the alert opened (the window that tipped it over).
    """
    a, w = Alert.__table__, MetricsWindow.__table__
    rows = alerts_table(store, include_resolved=True, limit=limit)
    with store.session() as session:
        windows = {i: wid for i, wid in session.execute(select(a.c.id, a.c.window_id).where(
            a.c.id.in_([r["id"] for r in rows])))} if rows else {}
        for row in rows:
            wid = windows.get(row["id"])
            if wid is None and row["device"] is not None:
                opened = session.execute(select(a.c.opened_at).where(a.c.id == row["id"])).scalar()
                wid = session.execute(
                    select(w.c.id).where(w.c.fleet == row["fleet"], w.c.device == row["device"],
                                         w.c.window_end <= opened)
                    .order_by(w.c.window_end.desc()).limit(1)).scalar()
            row["window_id"] = wid
    return {"open": [r for r in rows if r["resolved_at"] is None],
            "resolved": [r for r in rows if r["resolved_at"] is not None]}


def window_data(store: Store, window_id: int) -> dict[str, Any]:
    """One stored metrics window: its columns and the payload the device sent."""
    w = MetricsWindow.__table__
    with store.session() as session:
        row = session.execute(select(w).where(w.c.id == window_id)).first()
    if row is None:
        raise NotFoundError(f"no metrics window {window_id}")
    out = {k: v for k, v in row._mapping.items() if k not in ("bins", "payload")}
    for key in ("window_start", "window_end", "received_at"):
        out[key] = _iso(out[key])
    out["payload"] = row.payload
    return out


def device_exists(store: Store, fleet: str, device: str) -> None:
    d = Device.__table__
    with store.session() as session:
        found = session.execute(select(d.c.device).where(
            d.c.fleet == fleet, d.c.device == device)).first()
    if found is None:
        raise NotFoundError(f"no device {fleet}/{device} in the fleet store")
