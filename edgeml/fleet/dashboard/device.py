"""The data of the device page: its summary, time series, drift over time and histograms.

- :func:`device_data`: the row of ``edgeml fleet device`` (:func:`edgeml.fleet.views.device_detail`)
  plus its features, model history, reconnects, spool drops, last samples and last deploy
  reports (:func:`~edgeml.fleet.dashboard.queries.device_deploys`).
- :func:`device_series`: one column per metric over the device's last windows (uPlot's
  data layout: ``t`` in epoch seconds, then one array per series), and per feature the
  drift of each window against the reference (PSI; JS distance for categorical inputs).
- :func:`feature_histogram`: a feature's live counts over the thresholds' window beside its
  reference proportions, bin for bin (labels from the reference's edges or categories).
"""

from __future__ import annotations

import itertools
import math
from datetime import timedelta
from typing import Any

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from edgeml.errors import NotFoundError
from edgeml.fleet import stattests
from edgeml.fleet.dashboard.queries import device_deploys, device_exists
from edgeml.fleet.db import Store
from edgeml.fleet.evaluate import References
from edgeml.fleet.layout import Reference, Segment, pack_window
from edgeml.fleet.schema import DeviceSession, MetricsWindow, Model, Sample
from edgeml.fleet.thresholds import load_thresholds
from edgeml.fleet.views import _iso, device_detail

__all__ = ["device_data", "device_series", "feature_histogram", "segment_statistic"]

SERIES = ("requests", "errors", "rows", "p50_ms", "p95_ms", "p99_ms", "rss_bytes", "cpu_percent",
          "temperature_c", "spool_queued", "spool_dropped_total")


def segment_statistic(seg: Segment) -> str:
    """The drift statistic the dashboard draws for a feature: JS for categories, else PSI."""
    return "js" if seg.kind == "categorical" else "psi"


def _segments(ref: Reference) -> list[Segment]:
    return [*ref.segments, *([ref.prediction] if ref.prediction else [])]


def _finite(values: np.ndarray) -> list[float | None]:
    return [float(v) if math.isfinite(v) else None for v in values.tolist()]


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def _reconnects(session: Session, fleet: str, device: str) -> int:
    """MQTT connects beyond the first, per session, from each session's last window."""
    w = MetricsWindow.__table__
    last = (select(func.max(w.c.id)).where(w.c.fleet == fleet, w.c.device == device)
            .group_by(w.c.session))
    total = 0
    for (payload,) in session.execute(select(w.c.payload).where(w.c.id.in_(last))):
        mqtt = payload.get("mqtt") if isinstance(payload, dict) else None
        connects = _num(mqtt.get("connects")) if isinstance(mqtt, dict) else None
        total += max(int(connects or 0) - 1, 0)
    return total


def _spool_drops(session: Session, fleet: str, device: str) -> int:
    w = MetricsWindow.__table__
    rows = session.execute(
        select(func.min(w.c.spool_dropped_total), func.max(w.c.spool_dropped_total))
        .where(w.c.fleet == fleet, w.c.device == device).group_by(w.c.session)).all()
    return sum(int(hi or 0) - int(lo or 0) for lo, hi in rows)


def _model_history(session: Session, fleet: str, device: str) -> list[dict[str, Any]]:
    s = DeviceSession.__table__
    out: list[dict[str, Any]] = []
    for x in session.execute(select(s.c.session, s.c.model_name, s.c.model_version,
                                    s.c.started_at, s.c.first_seen)
                             .where(s.c.fleet == fleet, s.c.device == device)
                             .order_by(s.c.first_seen)):
        model = f"{x.model_name}@{x.model_version}" if x.model_name else None
        if out and out[-1]["model"] == model:
            out[-1]["sessions"] += 1
            continue
        out.append({"model": model, "since": _iso(x.started_at or x.first_seen),
                    "session": x.session, "sessions": 1})
    return out


def _samples(session: Session, fleet: str, device: str, limit: int = 20) -> list[dict[str, Any]]:
    t = Sample.__table__
    return [{"id": x.id, "ts": _iso(x.ts), "features": x.features, "prediction": x.prediction}
            for x in session.execute(select(t.c.id, t.c.ts, t.c.features, t.c.prediction)
                                     .where(t.c.fleet == fleet, t.c.device == device)
                                     .order_by(t.c.ts.desc()).limit(limit))]


def device_data(store: Store, fleet: str, device: str) -> dict[str, Any]:
    """Everything the device page shows besides its charts."""
    detail = device_detail(store, f"{fleet}/{device}")
    with store.session() as session:
        ref = (References(session)(detail["model_name"], int(detail["model_version"]))
               if detail.get("model_name") else None)
        detail["features"] = [{"name": s.name, "kind": s.kind, "statistic": segment_statistic(s)}
                              for s in (_segments(ref) if ref else []) if s.nbins]
        detail["model_history"] = _model_history(session, fleet, device)
        detail["reconnects"] = _reconnects(session, fleet, device)
        detail["spool_drops"] = _spool_drops(session, fleet, device)
        detail["samples"] = _samples(session, fleet, device)
        detail["deploys"] = device_deploys(session, fleet, device)
    detail["restarts"] = max(len(detail["sessions"]) - 1, 0)
    return detail


def _packed(session: Session, rows: list[Any], ref: Reference) -> np.ndarray:
    w = MetricsWindow.__table__
    missing = [r.id for r in rows if r.bins is None]
    packed: dict[int, bytes] = {}
    if missing:
        for wid, payload in session.execute(select(w.c.id, w.c.payload).where(w.c.id.in_(missing))):
            packed[wid] = pack_window(payload or {}, ref.inputs, ref.task)
    blobs = [r.bins if r.bins is not None else packed.get(r.id, b"") for r in rows]
    matrix, ok = ref.unpack(blobs)
    full = np.zeros((len(rows), ref.width), dtype=np.float64)
    full[ok] = matrix
    return full


def device_series(store: Store, fleet: str, device: str, *, limit: int = 360) -> dict[str, Any]:
    """The device's last ``limit`` windows as columns, and drift per feature per window."""
    w = MetricsWindow.__table__
    cols = [w.c[name] for name in SERIES]
    with store.session() as session:
        rows = session.execute(
            select(w.c.id, w.c.window_end, w.c.seconds, w.c.model_name, w.c.model_version,
                   w.c.bins, *cols)
            .where(w.c.fleet == fleet, w.c.device == device)
            .order_by(w.c.window_end.desc(), w.c.id.desc()).limit(limit)).all()[::-1]
        if not rows:
            device_exists(store, fleet, device)
        refs = References(session)
        drift: dict[str, list[float | None]] = {}
        statistic: dict[str, str] = {}
        groups: dict[tuple[str, int], list[int]] = {}
        for i, r in enumerate(rows):
            if r.model_name is not None:
                groups.setdefault((r.model_name, int(r.model_version or 0)), []).append(i)
        for (name, version), idx in groups.items():
            ref = refs(name, version)
            if ref is None:
                continue
            matrix = _packed(session, [rows[i] for i in idx], ref)
            for seg in _segments(ref):
                if not seg.nbins:
                    continue
                counts = matrix[:, seg.offset:seg.offset + seg.nbins]
                stat = segment_statistic(seg)
                values = stattests.get(stat)(seg.ref, counts)
                values = np.where(counts.sum(axis=1) > 0, values, np.nan)
                column = drift.setdefault(seg.name, [None] * len(rows))
                statistic[seg.name] = stat
                for i, v in zip(idx, _finite(np.asarray(values, dtype=float)), strict=True):
                    column[i] = v
    t = [r.window_end.timestamp() for r in rows]
    out: dict[str, Any] = {"fleet": fleet, "device": device, "t": t,
                           "window_id": [r.id for r in rows]}
    for name in SERIES:
        out[name] = [_num(getattr(r, name)) for r in rows]
    out["requests_per_s"] = [r.requests / r.seconds if r.seconds else None for r in rows]
    out["rss_mb"] = [None if v is None else v / 2**20 for v in out.pop("rss_bytes")]
    out["drift"] = drift
    out["drift_statistic"] = statistic
    return out


def _fmt(x: float) -> str:
    return f"{x:.3g}"


def bin_labels(raw_ref: dict[str, Any], seg: Segment, classes: list[str]) -> list[str]:
    """Readable labels of a segment's bins, from the reference's edges or categories."""
    profile = raw_ref.get("profile") or {}
    if seg.kind == "categorical":
        cats = [str(c) for c in (raw_ref.get("categories") or {}).get(seg.name) or []]
        return [*cats, "(unseen)"][:seg.nbins]
    if seg.kind == "prediction" and classes and seg.nbins == len(classes):
        return [str(c) for c in classes]
    fr = (profile.get("prediction") if seg.kind == "prediction"
          else (profile.get("features") or {}).get(seg.name)) or {}
    edges = fr.get("length_bin_edges" if seg.kind == "text" else "bin_edges") or []
    edges = [float(e) for e in edges if isinstance(e, (int, float))]
    if fr.get("binning") == "quantile" and len(edges) + 1 == seg.nbins:
        if not edges:
            return ["all"]
        return ([f"< {_fmt(edges[0])}"]
                + [f"{_fmt(a)} – {_fmt(b)}" for a, b in itertools.pairwise(edges)]
                + [f"≥ {_fmt(edges[-1])}"])
    if len(edges) - 1 == seg.nbins:
        return [f"{_fmt(a)} – {_fmt(b)}" for a, b in itertools.pairwise(edges)]
    return [f"bin {i + 1}" for i in range(seg.nbins)]


def feature_histogram(store: Store, fleet: str, device: str, feature: str, *,
                      window_s: float | None = None) -> dict[str, Any]:
    """A feature's live proportions over the window ending at the device's last window."""
    window_s = window_s or load_thresholds().window_s
    w, m = MetricsWindow.__table__, Model.__table__
    detail_model = None
    with store.session() as session:
        last = session.execute(
            select(w.c.window_end, w.c.model_name, w.c.model_version)
            .where(w.c.fleet == fleet, w.c.device == device)
            .order_by(w.c.window_end.desc()).limit(1)).first()
        if last is None or last.model_name is None:
            raise NotFoundError(f"device {fleet}/{device} has sent no metrics window yet")
        detail_model = (last.model_name, int(last.model_version or 0))
        ref = References(session)(*detail_model)
        raw = session.execute(select(m.c.reference).where(
            m.c.name == detail_model[0], m.c.version == detail_model[1])).scalar()
        seg = next((s for s in (_segments(ref) if ref else []) if s.name == feature), None)
        if ref is None or seg is None or not seg.nbins or not isinstance(raw, dict):
            raise NotFoundError(f"model {detail_model[0]}@{detail_model[1]} has no binned "
                                f"feature {feature!r}")
        since = last.window_end - timedelta(seconds=window_s)
        rows = session.execute(
            select(w.c.id, w.c.bins).where(
                w.c.fleet == fleet, w.c.device == device, w.c.model_name == detail_model[0],
                w.c.model_version == detail_model[1], w.c.window_end > since)).all()
        matrix = _packed(session, list(rows), ref)
    counts = matrix[:, seg.offset:seg.offset + seg.nbins].sum(axis=0)
    total = float(counts.sum())
    live = counts / total if total > 0 else np.zeros_like(counts)
    stat = segment_statistic(seg)
    score = stattests.get(stat)(seg.ref, counts[None, :])[0] if total > 0 else math.nan
    return {"fleet": fleet, "device": device, "model": f"{detail_model[0]}@{detail_model[1]}",
            "feature": feature, "kind": seg.kind, "labels": bin_labels(raw, seg, ref.classes),
            "live": _finite(live), "reference": _finite(np.asarray(seg.ref, dtype=float)),
            "rows": int(total), "windows": len(rows), "statistic": stat,
            "score": _num(float(score)), "since": _iso(since), "until": _iso(last.window_end)}
