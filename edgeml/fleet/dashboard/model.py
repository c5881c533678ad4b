"""The data of the models page and of one model's page.

- :func:`models_data`: every model version seen, its task and how many devices run it.
- :func:`model_data`: where each version of a model runs (fleet, device, state), the drift
  of every feature on every device of one version as a heat map (rows: devices, columns:
  features; PSI, JS distance for categorical inputs) over the thresholds' window ending at
  that version's last window, and the labelled accuracy (MAE for regression) over time
  beside the holdout's.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import Any

import numpy as np
from sqlalchemy import func, select

from edgeml.errors import NotFoundError
from edgeml.fleet import stattests
from edgeml.fleet.dashboard.device import _finite, _segments, segment_statistic
from edgeml.fleet.db import Store
from edgeml.fleet.drift import load_sums
from edgeml.fleet.evaluate import References
from edgeml.fleet.schema import Device, Feedback, MetricsWindow, Model
from edgeml.fleet.thresholds import Thresholds, load_thresholds
from edgeml.fleet.views import _iso

__all__ = ["model_data", "models_data"]

ACCURACY_BUCKETS = 24


def models_data(store: Store) -> dict[str, Any]:
    m, d = Model.__table__, Device.__table__
    with store.session() as session:
        running = {(n, v): int(c) for n, v, c in session.execute(
            select(d.c.model_name, d.c.model_version, func.count())
            .group_by(d.c.model_name, d.c.model_version))}
        models = [{"name": x.name, "version": x.version, "model": f"{x.name}@{x.version}",
                   "task": x.task, "sha256": x.sha256, "first_seen": _iso(x.first_seen),
                   "devices": running.get((x.name, x.version), 0)}
                  for x in session.execute(select(m).order_by(m.c.name, m.c.version))]
    return {"models": models}


def _heatmap(store: Store, name: str, version: int, th: Thresholds) -> dict[str, Any]:
    w = MetricsWindow.__table__
    with store.session() as session:
        until = session.execute(select(func.max(w.c.window_end)).where(
            w.c.model_name == name, w.c.model_version == version)).scalar()
        if until is None:
            return {"devices": [], "features": [], "values": [], "until": None}
        refs = References(session)
        sums, _, _ = load_sums(session, until - timedelta(seconds=th.window_s), until, refs)
    group = sums.get((name, version))
    if group is None:
        return {"devices": [], "features": [], "values": [], "until": _iso(until)}
    features, columns, alert_at = [], [], []
    rules = th.rules(None, name, version)
    for seg in _segments(group.reference):
        if not seg.nbins:
            continue
        counts = group.per_device[:, seg.offset:seg.offset + seg.nbins]
        stat = segment_statistic(seg)
        values = np.asarray(stattests.get(stat)(seg.ref, counts), dtype=float)
        values = np.where(counts.sum(axis=1) >= max(th.min_rows, 1), values, np.nan)
        kind = "prediction" if seg.kind == "prediction" else seg.kind
        level = rules.drift(kind).get(stat)
        features.append({"name": seg.name, "kind": seg.kind, "statistic": stat})
        alert_at.append(level.alert if level is not None else None)
        columns.append(_finite(values))
    rows = [[col[i] for col in columns] for i in range(len(group.devices))]
    return {"devices": [{"fleet": f, "device": d} for f, d in group.devices],
            "features": features, "alert_at": alert_at, "values": rows,
            "since": _iso(until - timedelta(seconds=th.window_s)), "until": _iso(until)}


def _accuracy(store: Store, name: str, version: int, task: str | None,
              holdout: dict[str, float]) -> dict[str, Any]:
    f = Feedback.__table__
    with store.session() as session:
        rows = session.execute(select(f.c.ts, f.c.label, f.c.prediction).where(
            f.c.model_name == name, f.c.model_version == version, f.c.ts.is_not(None))
            .order_by(f.c.ts)).all()
    metric = "mae" if task == "regression" else "accuracy"
    points: list[tuple[float, float]] = []
    for r in rows:
        pred = r.prediction if isinstance(r.prediction, dict) else {}
        if metric == "mae":
            p, y = pred.get("prediction"), r.label
            if isinstance(p, (int, float)) and isinstance(y, (int, float)):
                points.append((r.ts.timestamp(), abs(float(y) - float(p))))
        elif pred.get("label") is not None and r.label is not None:
            points.append((r.ts.timestamp(), float(str(pred["label"]) == str(r.label))))
    out: dict[str, Any] = {"metric": metric, "holdout": holdout.get(metric), "t": [],
                           "value": [], "labels": []}
    if not points:
        return out
    t = np.asarray([p[0] for p in points])
    v = np.asarray([p[1] for p in points])
    edges = np.linspace(t[0], t[-1] + 1e-6, ACCURACY_BUCKETS + 1)
    which = np.clip(np.searchsorted(edges, t, side="right") - 1, 0, ACCURACY_BUCKETS - 1)
    for b in range(ACCURACY_BUCKETS):
        sel = which == b
        if sel.any():
            out["t"].append(float(t[sel].max()))
            out["value"].append(float(v[sel].mean()))
            out["labels"].append(int(sel.sum()))
    return out


def model_data(store: Store, name: str, version: int | None = None, *,
               thresholds: Thresholds | None = None) -> dict[str, Any]:
    """Where each version of ``name`` runs; drift heat map and accuracy of one version."""
    th = thresholds or load_thresholds()
    m, d = Model.__table__, Device.__table__
    with store.session() as session:
        versions = session.execute(select(m).where(m.c.name == name).order_by(m.c.version)).all()
        if not versions:
            raise NotFoundError(f"no model {name!r} in the fleet store")
        devices = session.execute(
            select(d.c.fleet, d.c.device, d.c.state, d.c.model_version, d.c.last_seen)
            .where(d.c.model_name == name).order_by(d.c.fleet, d.c.device)).all()
    chosen = next((v for v in versions if v.version == version), None) if version is not None \
        else versions[-1]
    if chosen is None:
        raise NotFoundError(f"no model {name}@{version} in the fleet store")
    runs = [{"version": v.version, "model": f"{name}@{v.version}", "task": v.task,
             "first_seen": _iso(v.first_seen),
             "devices": [{"fleet": x.fleet, "device": x.device, "state": x.state,
                          "last_seen": _iso(x.last_seen)}
                         for x in devices if x.model_version == v.version]} for v in versions]
    metrics = (chosen.reference or {}).get("metrics") if isinstance(chosen.reference, dict) else None
    holdout_raw = (metrics or {}).get("holdout") if isinstance(metrics, dict) else None
    holdout = {str(k): float(v) for k, v in (holdout_raw or {}).items()
               if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}
    return {"name": name, "version": chosen.version, "model": f"{name}@{chosen.version}",
            "task": chosen.task, "versions": runs, "holdout": holdout,
            "heatmap": _heatmap(store, name, chosen.version, th),
            "accuracy": _accuracy(store, name, chosen.version, chosen.task, holdout),
            "generated_at": _iso(datetime.now().astimezone())}
