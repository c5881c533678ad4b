"""The data of the dashboard's fleet, alerts, window and rollouts pages (one function per page).

Each function returns plain JSON-able dicts; the HTML page renders them and its JSON twin
under ``/api/`` returns them as they are (datasette's pattern). The device rows come from
:func:`edgeml.fleet.views.devices_table` (the ``edgeml fleet devices`` CLI's rows), with
what the page adds: the ``drifting`` and ``alerting`` flags and the counts at the top.

``drifting``: the device's worst drift score (PSI or JS distance, from the views) is at or
above the alert threshold of that statistic for its fleet and model (thresholds file).
``alerting``: the device has an open alert. ``up``: its ``$state`` is ``ready``.

Rollouts (read from the deploy tables the controller fills): :func:`rollouts_data` (every
deployment, running first then newest, with its devices counted per state and per stage),
:func:`rollout_data` (one deployment, each device with its last report, its newest
:data:`EVENTS_LIMIT` events) and :func:`device_deploys` (a device's last deploy reports, for
the device page). One query per section of a page; every value is returned as stored (the
templates escape it, the scripts put it in with ``textContent``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from edgeml.errors import NotFoundError
from edgeml.fleet.db import Store
from edgeml.fleet.schema import (
    Alert,
    BundleBlob,
    DeployEvent,
    Deployment,
    DeploymentDevice,
    Device,
    MetricsWindow,
    RetrainRun,
)
from edgeml.fleet.thresholds import Thresholds, load_thresholds
from edgeml.fleet.views import _iso, alerts_table, devices_table

__all__ = ["DEVICE_STATES", "alerts_data", "device_deploys", "fleet_data",
           "open_alerts_by_device", "rollout_data", "rollouts_data", "window_data"]


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


# -- rollouts (the deploy tables: edgeml.fleet.schema Deployment, DeploymentDevice, DeployEvent)

DEPLOYMENT_STATES = ("running", "halted", "completed", "rolled_back", "cancelled")
# the bar's order; any other state the controller writes is counted after these
DEVICE_STATES = ("pending", "sent", "downloading", "verified", "switched", "committed",
                 "rolling_back", "rolled_back", "failed", "skipped")
EVENTS_LIMIT = 200
DEVICE_DEPLOYS_LIMIT = 20
ROLLOUTS_LIMIT = 500
RETRAINS_LIMIT = 50


def _counts(states: dict[str, int]) -> dict[str, int]:
    """Devices per state, every known state present (0), then any other state seen."""
    out = {s: 0 for s in DEVICE_STATES}
    for state, n in states.items():
        out[state] = out.get(state, 0) + n
    return out


def _rollout(row: Any, counts: dict[str, int], per_stage: dict[int, dict[str, int]]) -> dict[str, Any]:
    stages = [float(f) for f in (row.stages or [])]
    total = sum(counts.values())
    number = min(int(row.stage or 0) + 1, len(stages)) if stages else 0
    return {
        "id": row.id, "fleet": row.fleet, "model": f"{row.model_name}@{row.model_version}",
        "model_name": row.model_name, "model_version": row.model_version,
        "bundle_sha256": row.bundle_sha256, "state": row.state,
        "stage_index": int(row.stage or 0), "stage_number": number, "stage_count": len(stages),
        "stages": [{"number": i + 1, "fraction": f, "devices": sum(per_stage.get(i, {}).values()),
                    "committed": per_stage.get(i, {}).get("committed", 0)}
                   for i, f in enumerate(stages)],
        "stage_started_at": _iso(row.stage_started_at), "soak_until": _iso(row.soak_until),
        "soak_s": row.soak_s, "gates": row.gates or {}, "allow_downgrade": bool(row.allow_downgrade),
        "reason": row.reason, "created_at": _iso(row.created_at), "updated_at": _iso(row.updated_at),
        "devices": counts, "device_count": total,
    }


def _running_first(d: Any) -> Any:
    return (case((d.c.state == "running", 0), else_=1), d.c.created_at.desc(), d.c.id)


def rollouts_data(store: Store, *, limit: int = ROLLOUTS_LIMIT) -> dict[str, Any]:
    """Every deployment (running first, then newest), its stage and its devices per state,
    and the newest retrainings (the loop that ships challengers as rollouts).

    Three queries: the deployments, their devices counted per (deployment, stage, state),
    the retrain runs.
    """
    d, dd = Deployment.__table__, DeploymentDevice.__table__
    cols = [c for c in d.c if c.name != "details"]
    with store.session() as session:
        rows = session.execute(select(*cols).order_by(*_running_first(d)).limit(limit)).all()
        ids = [r.id for r in rows]
        grouped = session.execute(
            select(dd.c.deployment_id, dd.c.stage, dd.c.state, func.count())
            .where(dd.c.deployment_id.in_(ids))
            .group_by(dd.c.deployment_id, dd.c.stage, dd.c.state)).all() if ids else []
        rr = RetrainRun.__table__
        retrains = session.execute(select(rr.c.id, rr.c.model_name, rr.c.state, rr.c.trigger,
                                          rr.c.version, rr.c.deployment_id, rr.c.reason,
                                          rr.c.started_at, rr.c.finished_at)
                                   .order_by(rr.c.started_at.desc(), rr.c.id.desc())
                                   .limit(RETRAINS_LIMIT)).all()
    by_state: dict[str, dict[str, int]] = {}
    by_stage: dict[str, dict[int, dict[str, int]]] = {}
    for dep, stage, state, n in grouped:
        by_state.setdefault(dep, {})
        by_state[dep][state] = by_state[dep].get(state, 0) + int(n)
        by_stage.setdefault(dep, {}).setdefault(int(stage), {})[state] = int(n)
    rollouts = [_rollout(r, _counts(by_state.get(r.id, {})), by_stage.get(r.id, {})) for r in rows]
    return {"generated_at": _iso(datetime.now().astimezone()), "states": list(DEVICE_STATES),
            "counts": {s: sum(r["state"] == s for r in rollouts) for s in DEPLOYMENT_STATES},
            "rollouts": rollouts,
            "retrains": [{"id": int(x.id), "model": x.model_name, "state": x.state,
                          "trigger": x.trigger, "version": x.version,
                          "deployment_id": x.deployment_id, "reason": x.reason,
                          "started_at": _iso(x.started_at), "finished_at": _iso(x.finished_at)}
                         for x in retrains]}


def _event(x: Any) -> dict[str, Any]:
    payload = x.payload if isinstance(x.payload, dict) else {}
    raw_serving, raw_progress = payload.get("serving"), payload.get("progress")
    serving: dict[str, Any] = raw_serving if isinstance(raw_serving, dict) else {}
    progress: dict[str, Any] = raw_progress if isinstance(raw_progress, dict) else {}
    return {"id": x.id, "deployment_id": x.deployment_id, "fleet": x.fleet, "device": x.device,
            "seq": x.seq, "event": x.event, "state": x.state, "reason": x.reason,
            "at": _iso(x.at), "received_at": _iso(x.received_at),
            "serving_version": serving.get("version"),
            "have": progress.get("have"), "count": progress.get("count")}


def rollout_data(store: Store, deployment_id: str, *, events: int = EVENTS_LIMIT) -> dict[str, Any]:
    """One deployment: its row, each device (with its last report time) and its newest events.

    Three queries: the deployment (with its bundle's identity, never its bytes), its devices
    left-joined with their last report (``ix_deploy_events_deployment``), its last events.
    """
    d, dd, e, b = (Deployment.__table__, DeploymentDevice.__table__, DeployEvent.__table__,
                   BundleBlob.__table__)
    with store.session() as session:
        row = session.execute(
            select(d, b.c.size.label("bundle_size"), b.c.target.label("bundle_target"),
                   b.c.arch.label("bundle_arch"))
            .select_from(d.outerjoin(b, b.c.sha256 == d.c.bundle_sha256))
            .where(d.c.id == deployment_id)).first()
        if row is None:
            raise NotFoundError(f"no deployment {deployment_id!r} in the fleet store")
        last = (select(e.c.fleet, e.c.device, func.max(e.c.received_at).label("last_report"))
                .where(e.c.deployment_id == deployment_id)
                .group_by(e.c.fleet, e.c.device).subquery())
        devices = session.execute(
            select(dd, last.c.last_report)
            .select_from(dd.outerjoin(last, (last.c.fleet == dd.c.fleet)
                                      & (last.c.device == dd.c.device)))
            .where(dd.c.deployment_id == deployment_id)
            .order_by(dd.c.stage, dd.c.device)).all()
        timeline = session.execute(
            select(e).where(e.c.deployment_id == deployment_id)
            .order_by(e.c.received_at.desc(), e.c.id.desc()).limit(events)).all()
    counts: dict[str, int] = {}
    per_stage: dict[int, dict[str, int]] = {}
    for x in devices:
        counts[x.state] = counts.get(x.state, 0) + 1
        stage = per_stage.setdefault(int(x.stage), {})
        stage[x.state] = stage.get(x.state, 0) + 1
    out = _rollout(row, _counts(counts), per_stage)
    out["bundle"] = {"sha256": row.bundle_sha256, "size": row.bundle_size,
                     "target": row.bundle_target, "arch": row.bundle_arch}
    out["details"] = row.details
    out["states"] = list(DEVICE_STATES)
    out["device_rows"] = [{
        "fleet": x.fleet, "device": x.device, "stage": int(x.stage), "stage_number": int(x.stage) + 1,
        "state": x.state, "have": x.have, "count": x.count, "reason": x.reason,
        "from_version": x.from_version, "serving_version": x.serving_version, "sends": x.sends,
        "sent_at": _iso(x.sent_at), "committed_at": _iso(x.committed_at),
        "updated_at": _iso(x.updated_at), "last_report": _iso(x.last_report)} for x in devices]
    out["events"] = [_event(x) for x in timeline]
    out["events_limit"] = events
    out["generated_at"] = _iso(datetime.now().astimezone())
    return out


def device_deploys(session: Session, fleet: str, device: str, *,
                   limit: int = DEVICE_DEPLOYS_LIMIT) -> list[dict[str, Any]]:
    """A device's last deploy reports, each with its deployment's model (one query: the
    ``uq_deploy_events_key`` index starts with ``fleet, device``)."""
    e, d = DeployEvent.__table__, Deployment.__table__
    rows = session.execute(
        select(e, d.c.model_name, d.c.model_version, d.c.state.label("deployment_state"))
        .select_from(e.outerjoin(d, d.c.id == e.c.deployment_id))
        .where(e.c.fleet == fleet, e.c.device == device)
        .order_by(e.c.received_at.desc(), e.c.id.desc()).limit(limit)).all()
    out = []
    for x in rows:
        item = _event(x)
        item["model"] = f"{x.model_name}@{x.model_version}" if x.model_name else None
        item["deployment_state"] = x.deployment_state
        out.append(item)
    return out
