"""The rows behind ``edgeml fleet status|devices|device|drift|alerts`` (read-only queries).

Each function returns plain JSON-able dicts; the CLI prints them as a rich table or, with
``--json``, as they are. Times are ISO 8601 UTC. Rates are over the last ``since_s``
seconds of windows (default one hour): requests/s = requests / window seconds, error
rate = errors / requests, p95 = the highest window p95. Drift and accuracy come from :mod:`edgeml.fleet.drift` and
:mod:`edgeml.fleet.decay` over the thresholds' sliding window; they are read, never
written (alerts are the monitor's job).
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from edgeml.errors import NotFoundError, UsageError
from edgeml.fleet.db import Store
from edgeml.fleet.schema import (
    Alert,
    Device,
    DeviceSession,
    MetricsWindow,
    Model,
    Quarantine,
    WindowSeqs,
)

__all__ = [
    "alerts_table",
    "device_detail",
    "devices_table",
    "drift_table",
    "fleet_status",
    "lost_windows_by_device",
    "lost_windows_by_fleet",
]

DEFAULT_SINCE_S = 3600.0


def _iso(ts: datetime | None) -> str | None:
    if ts is None:
        return None
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=timezone.utc)
    return ts.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _now(now: datetime | None) -> datetime:
    return now or datetime.now(timezone.utc)


def lost_windows_by_device(session: Session) -> dict[tuple[str, str], int]:
    """Windows missing from each device's seq ranges (summed over its sessions)."""
    s = WindowSeqs.__table__
    lost = func.sum(s.c.last_seq - s.c.first_seq + 1 - s.c.received)
    return {(f, d): int(n or 0) for f, d, n in session.execute(
        select(s.c.fleet, s.c.device, lost).group_by(s.c.fleet, s.c.device))}


def lost_windows_by_fleet(store: Store) -> dict[str, int]:
    s = WindowSeqs.__table__
    with store.session() as session:
        return {f: int(n or 0) for f, n in session.execute(
            select(s.c.fleet, func.sum(s.c.last_seq - s.c.first_seq + 1 - s.c.received))
            .group_by(s.c.fleet))}


def _recent(session: Session, since: datetime) -> dict[tuple[str, str], dict[str, Any]]:
    w = MetricsWindow.__table__
    rows = session.execute(
        select(w.c.fleet, w.c.device, func.count(), func.sum(w.c.requests), func.sum(w.c.errors),
               func.sum(w.c.seconds), func.max(w.c.p95_ms), func.max(w.c.received_at))
        .where(w.c.window_end > since).group_by(w.c.fleet, w.c.device)).all()
    return {(fleet, device): {"windows": int(n), "requests": int(req or 0),
                              "errors": int(err or 0), "seconds": float(secs or 0.0),
                              "p95_ms": p95, "last_received": last_rx}
            for fleet, device, n, req, err, secs, p95, last_rx in rows}


_PACKAGED: list[Any] = []


def _packaged_thresholds(load: Any) -> Any:
    """The packaged thresholds, parsed once per process (the YAML costs 5 ms per page)."""
    if not _PACKAGED:
        _PACKAGED.append(load())
    return _PACKAGED[0]


def _quality(session: Session, now: datetime) -> dict[tuple[str, str], dict[str, Any]]:
    """Worst drift feature and labelled / estimated accuracy per device (helper G's modules)."""
    try:
        from edgeml.fleet.decay import estimated, labelled
        from edgeml.fleet.drift import evaluate_drift
        from edgeml.fleet.evaluate import References
        from edgeml.fleet.thresholds import load_thresholds
    except ImportError:  # drift/decay not installed in this tree yet: leave the columns blank
        return {}
    th = _packaged_thresholds(load_thresholds)
    drift = evaluate_drift(session, now, th, References(session))
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for key, (feature, statistic, value) in drift.worst.items():
        out.setdefault(key, {}).update(drift_feature=feature, drift_statistic=statistic,
                                       drift_score=value)
    tasks = {k: g.reference.task for k, g in drift.sums.items()}
    for g in drift.sums.values():
        values = estimated(g.reference, g.per_device)
        for (fleet, device), value in zip(g.devices, values.tolist(), strict=True):
            out.setdefault((fleet, device), {})["accuracy_estimated"] = float(value)
    for score in labelled(session, now, th.window_s, tasks):
        if score.device is not None and score.fleet is not None:
            out.setdefault((score.fleet, score.device), {}).update(
                accuracy_labelled=score.accuracy, labels=score.labels)
    return out


def devices_table(store: Store, *, since_s: float = DEFAULT_SINCE_S, fleet: str | None = None,
                  now: datetime | None = None) -> list[dict[str, Any]]:
    """One row per device: state, model@version, last seen, requests, rates, drift, accuracy."""
    now = _now(now)
    d = Device.__table__
    with store.session() as session:
        query = select(d).order_by(d.c.fleet, d.c.device)
        if fleet is not None:
            query = query.where(d.c.fleet == fleet)
        devices = session.execute(query).all()
        recent = _recent(session, now - timedelta(seconds=since_s))
        lost = lost_windows_by_device(session)
        quality = _quality(session, now)
    rows = []
    for dev in devices:
        key = (dev.fleet, dev.device)
        r = recent.get(key, {})
        q = quality.get(key, {})
        last_seen = max((t for t in (dev.last_seen, r.get("last_received")) if t is not None),
                        default=None)
        requests = r.get("requests", 0)
        seconds = r.get("seconds", 0.0)
        rows.append({
            "fleet": dev.fleet, "device": dev.device, "state": dev.state,
            "session": dev.session,
            "model": f"{dev.model_name}@{dev.model_version}" if dev.model_name else None,
            "model_name": dev.model_name, "model_version": dev.model_version,
            "last_seen": _iso(last_seen), "windows": r.get("windows", 0), "requests": requests,
            "requests_per_s": requests / seconds if seconds > 0 else None,
            "p95_ms": r.get("p95_ms"),
            "error_rate": r.get("errors", 0) / requests if requests else None,
            "lost_windows": lost.get(key, 0),
            "drift_feature": q.get("drift_feature"), "drift_statistic": q.get("drift_statistic"),
            "drift_score": q.get("drift_score"),
            "accuracy_labelled": q.get("accuracy_labelled"),
            "accuracy_estimated": q.get("accuracy_estimated"),
        })
    return rows


def _find(session: Session, ref: str) -> tuple[str, str]:
    d = Device.__table__
    if "/" in ref:
        fleet, device = ref.split("/", 1)
        found = session.execute(select(d.c.fleet, d.c.device).where(
            d.c.fleet == fleet, d.c.device == device)).all()
    else:
        found = session.execute(select(d.c.fleet, d.c.device).where(d.c.device == ref)).all()
    if not found:
        raise NotFoundError(f"no device {ref!r} in the fleet store")
    if len(found) > 1:
        raise UsageError(f"device {ref!r} is in several fleets "
                         f"({', '.join(f for f, _ in found)}): use FLEET/DEVICE")
    return found[0][0], found[0][1]


def device_detail(store: Store, ref: str, *, since_s: float = DEFAULT_SINCE_S, windows: int = 10,
                  now: datetime | None = None) -> dict[str, Any]:
    """One device: its row of ``devices_table``, its sessions, last windows and open alerts."""
    now = _now(now)
    with store.session() as session:
        fleet, device = _find(session, ref)
    row = next(r for r in devices_table(store, since_s=since_s, fleet=fleet, now=now)
               if r["device"] == device)
    w, s, a, q = (MetricsWindow.__table__, DeviceSession.__table__, Alert.__table__,
                  WindowSeqs.__table__)
    with store.session() as session:
        sessions = [{"session": x.session, "started_at": _iso(x.started_at),
                     "model": f"{x.model_name}@{x.model_version}", "first_seen": _iso(x.first_seen)}
                    for x in session.execute(select(s).where(s.c.fleet == fleet, s.c.device == device)
                                             .order_by(s.c.session.desc()).limit(20))]
        seqs = {x.session: {"first_seq": x.first_seq, "last_seq": x.last_seq,
                            "received": x.received,
                            "lost": x.last_seq - x.first_seq + 1 - x.received}
                for x in session.execute(select(q).where(q.c.fleet == fleet, q.c.device == device))}
        for item in sessions:
            item.update(seqs.pop(item["session"], {}))
        sessions += [{"session": k, **v} for k, v in sorted(seqs.items(), reverse=True)]
        recent = [{"session": x.session, "seq": x.seq, "window_end": _iso(x.window_end),
                   "requests": x.requests, "errors": x.errors, "p95_ms": x.p95_ms,
                   "model": f"{x.model_name}@{x.model_version}"}
                  for x in session.execute(
                      select(w.c.session, w.c.seq, w.c.window_end, w.c.requests, w.c.errors,
                             w.c.p95_ms, w.c.model_name, w.c.model_version)
                      .where(w.c.fleet == fleet, w.c.device == device)
                      .order_by(w.c.window_end.desc()).limit(windows))]
        alerts = [_alert(x) for x in session.execute(
            select(a).where(a.c.fleet == fleet, a.c.device == device, a.c.resolved_at.is_(None))
            .order_by(a.c.opened_at.desc()))]
    return {**row, "sessions": sessions, "recent_windows": recent, "open_alerts": alerts}


def _alert(x: Any) -> dict[str, Any]:
    return {"id": x.id, "kind": x.kind, "severity": x.severity, "fleet": x.fleet,
            "device": x.device,
            "model": f"{x.model_name}@{x.model_version}" if x.model_name else None,
            "feature": x.feature, "value": x.value, "threshold": x.threshold,
            "message": x.message, "opened_at": _iso(x.opened_at),
            "resolved_at": _iso(x.resolved_at)}


def alerts_table(store: Store, *, include_resolved: bool = False, kind: str | None = None,
                 limit: int = 500) -> list[dict[str, Any]]:
    a = Alert.__table__
    query = select(a).order_by(a.c.opened_at.desc()).limit(limit)
    if not include_resolved:
        query = query.where(a.c.resolved_at.is_(None))
    if kind is not None:
        query = query.where(a.c.kind == kind)
    with store.session() as session:
        return [_alert(x) for x in session.execute(query)]


def drift_table(store: Store, *, model: str | None = None, feature: str | None = None,
                now: datetime | None = None) -> list[dict[str, Any]]:
    """Drift scores at watch or alert level (device, fleet and model scopes)."""
    from edgeml.fleet.drift import evaluate_drift
    from edgeml.fleet.evaluate import References
    from edgeml.fleet.thresholds import load_thresholds

    name, _, version = (model or "").partition("@")
    with store.session() as session:
        result = evaluate_drift(session, _now(now), load_thresholds(), References(session))
    rows = []
    for sc in result.scores:
        if (name and sc.model != name) or (version and str(sc.version) != version):
            continue
        if feature is not None and sc.feature != feature:
            continue
        rows.append({"scope": sc.scope, "fleet": sc.fleet, "device": sc.device,
                     "model": f"{sc.model}@{sc.version}", "feature": sc.feature,
                     "statistic": sc.statistic, "value": sc.value, "threshold": sc.threshold,
                     "level": sc.level, "rows": sc.rows})
    order = {"model": 0, "fleet": 1, "device": 2}
    rows.sort(key=lambda r: (order.get(str(r["scope"]), 3), -float(r["value"] or 0.0)))
    return rows


def fleet_status(store: Store, *, since_s: float = DEFAULT_SINCE_S,
                 now: datetime | None = None) -> dict[str, Any]:
    """Fleet totals: devices by state, models in use, windows and rates, lost, quarantined, alerts."""
    now = _now(now)
    d, w, m, a, q = (Device.__table__, MetricsWindow.__table__, Model.__table__, Alert.__table__,
                     Quarantine.__table__)
    since = now - timedelta(seconds=since_s)
    with store.session() as session:
        states = {str(s): int(n) for s, n in session.execute(
            select(d.c.state, func.count()).group_by(d.c.state))}
        devices = sum(states.values())
        models = [f"{n}@{v}" for n, v in session.execute(
            select(m.c.name, m.c.version).order_by(m.c.name, m.c.version))]
        n, req, err, secs = session.execute(select(
            func.count(), func.sum(w.c.requests), func.sum(w.c.errors), func.sum(w.c.seconds))
            .where(w.c.window_end > since)).one()
        active = session.execute(select(func.count(func.distinct(w.c.device))).where(
            w.c.window_end > since)).scalar()
        quarantined = {str(r): int(c) for r, c in session.execute(
            select(q.c.reason, func.count()).group_by(q.c.reason))}
        alerts = {str(k): int(c) for k, c in session.execute(
            select(a.c.kind, func.count()).where(a.c.resolved_at.is_(None)).group_by(a.c.kind))}
        lost = sum(lost_windows_by_device(session).values())
    window_s = float(secs or 0.0)
    devices_reporting = int(active or 0)
    return {
        "devices": devices, "states": states, "models": models,
        "since": _iso(since), "windows": int(n or 0), "devices_reporting": devices_reporting,
        "requests": int(req or 0),
        # fleet requests/s: each device's rate summed = requests / (window seconds per device)
        "requests_per_s": (int(req or 0) / (window_s / devices_reporting)
                           if window_s > 0 and devices_reporting else None),
        "error_rate": int(err or 0) / int(req) if req else None,
        "lost_windows": lost, "quarantined": quarantined,
        "open_alerts": alerts,
    }
