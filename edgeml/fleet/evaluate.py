"""The periodic evaluation of a fleet: drift, decay, health, alerts and gauges in one call.

The monitor calls :func:`evaluate` every few seconds (``edgeml monitor --evaluate-every``)::

    result = evaluate(session, now, EvaluationConfig(thresholds, base_topic, publish))

It judges the sliding window ``(now - thresholds.window, now]`` (:mod:`.drift`,
:mod:`.decay`, per-device health from the windows table), turns breaches into
:class:`~edgeml.fleet.alerts.Condition` s, opens and resolves alerts
(:func:`~edgeml.fleet.alerts.reconcile`), publishes the changes and returns everything,
with the Prometheus gauges of the monitor's ``/metrics`` (:meth:`EvaluationResult.gauges`).
The caller commits ``session``. ``now`` is a parameter, never read from a clock here, so a
simulated fleet is judged at simulated times.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select, tuple_
from sqlalchemy.orm import Session

from edgeml.fleet.alerts import (
    AlertChange,
    Condition,
    Key,
    Publisher,
    Subject,
    publish_changes,
    reconcile,
)
from edgeml.fleet.decay import LabelledScore, estimated, labelled
from edgeml.fleet.drift import DriftResult, evaluate_drift
from edgeml.fleet.layout import Reference
from edgeml.fleet.schema import Device, MetricsWindow, Model
from edgeml.fleet.thresholds import Thresholds, load_thresholds
from edgeml.runtime.topics import DEFAULT_BASE

__all__ = ["EvaluationConfig", "EvaluationResult", "Gauge", "References", "evaluate"]


class References:
    """Reference of each model version, read once from the ``models`` table ($info.reference)."""

    def __init__(self, session: Session | None = None) -> None:
        self.session = session
        self._cache: dict[tuple[str, int], Reference | None] = {}

    def __call__(self, name: str, version: int) -> Reference | None:
        key = (name, version)
        if key not in self._cache or self._cache[key] is None:
            self._cache[key] = self._load(name, version)
        return self._cache[key]

    def _load(self, name: str, version: int) -> Reference | None:
        if self.session is None:
            return None
        t = Model.__table__
        raw = self.session.execute(
            select(t.c.reference).where(t.c.name == name, t.c.version == version)).scalar()
        if not isinstance(raw, dict) or not raw.get("inputs"):
            return None
        return Reference.from_reference(name, version, raw)

    def add(self, ref: Reference) -> None:
        self._cache[(ref.name, ref.version)] = ref


@dataclass
class EvaluationConfig:
    """What :func:`evaluate` needs besides the session and the time."""

    thresholds: Thresholds = field(default_factory=load_thresholds)
    base_topic: str = DEFAULT_BASE
    publish: Publisher | None = None  # (topic, payload) -> None, e.g. a paho client's publish
    references: References = field(default_factory=References)


@dataclass(frozen=True)
class Gauge:
    name: str
    help: str
    labels: dict[str, str]
    value: float


@dataclass
class EvaluationResult:
    now: datetime
    drift: DriftResult
    labelled: list[LabelledScore]
    estimated: dict[tuple[str | None, str | None, str, int], float]
    health: dict[tuple[str, str], dict[str, Any]]
    conditions: list[Condition]
    opened: list[AlertChange]
    resolved: list[AlertChange]
    open_alerts: int
    published: int = 0

    def gauges(self) -> list[Gauge]:
        """Per-device and fleet gauges for the monitor's Prometheus ``/metrics``."""
        out: list[Gauge] = [Gauge("edgeml_fleet_alerts_open", "Open alerts.", {}, self.open_alerts)]
        per_kind: dict[str, int] = {}
        per_device: dict[tuple[str, str], int] = {}
        for c in self.conditions:
            per_kind[c.kind] = per_kind.get(c.kind, 0) + 1
            if c.fleet and c.device:
                per_device[(c.fleet, c.device)] = per_device.get((c.fleet, c.device), 0) + 1
        out += [Gauge("edgeml_fleet_conditions", "Breached conditions at the last evaluation, by kind.",
                      {"kind": k}, v) for k, v in sorted(per_kind.items())]
        for (fl, dev), (feature, stat, value) in sorted(self.drift.worst.items()):
            out.append(Gauge("edgeml_fleet_device_drift_worst", "Worst drift score of a device's "
                             "features (PSI or JS distance).",
                             {"fleet": fl, "device": dev, "feature": feature,
                              "statistic": stat}, value))
        for (fl, dev), n in sorted(per_device.items()):
            out.append(Gauge("edgeml_fleet_device_conditions", "Breached conditions of a device.",
                             {"fleet": fl, "device": dev}, n))
        for (scope, sfleet, model, version, feature, stat), value in sorted(
                self.drift.values.items(), key=lambda kv: tuple(str(x) for x in kv[0])):
            out.append(Gauge("edgeml_fleet_drift", "Drift score of a feature over a fleet or model.",
                             {"scope": scope, "fleet": sfleet or "", "model": model,
                              "version": str(version), "feature": feature, "statistic": stat}, value))
        for s in self.labelled:
            if s.device is None and s.accuracy is not None:
                out.append(Gauge("edgeml_fleet_accuracy_labelled", "Accuracy over feedback labels.",
                                 {"model": s.model, "version": str(s.version)}, s.accuracy))
        for (efleet, _device, model, version), value in sorted(
                self.estimated.items(), key=lambda kv: tuple(str(x) for x in kv[0])):
            if efleet is None and math.isfinite(value):
                out.append(Gauge("edgeml_fleet_accuracy_estimated", "Accuracy estimated from "
                                 "the confidence histogram (CBPE).",
                                 {"model": model, "version": str(version)}, value))
        return out


def _health(session: Session, now: datetime, window_s: float) -> dict[tuple[str, str], dict[str, Any]]:
    t = MetricsWindow.__table__
    since = now - timedelta(seconds=window_s)
    rows = session.execute(
        select(t.c.fleet, t.c.device, t.c.session, func.count(), func.min(t.c.seq),
               func.max(t.c.seq), func.sum(t.c.requests), func.sum(t.c.errors),
               func.max(t.c.p95_ms), func.min(t.c.spool_dropped_total),
               func.max(t.c.spool_dropped_total), func.max(t.c.window_end), func.avg(t.c.seconds),
               func.max(t.c.model_name), func.max(t.c.model_version))
        .where(t.c.window_end > since, t.c.window_end <= now)
        .group_by(t.c.fleet, t.c.device, t.c.session)
    ).all()
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for (fleet, device, _sess, n, lo, hi, req, err, p95, d_lo, d_hi, last, secs, model,
         version) in rows:
        h = out.setdefault((fleet, device), {"windows": 0, "lost": 0, "requests": 0, "errors": 0,
                                             "p95_ms": None, "drops": 0, "last": None,
                                             "interval": None, "model": model, "version": version})
        h["windows"] += int(n)
        h["lost"] += int(hi - lo + 1 - n)
        h["requests"] += int(req or 0)
        h["errors"] += int(err or 0)
        if p95 is not None:
            h["p95_ms"] = max(h["p95_ms"] or 0.0, float(p95))
        h["drops"] += int((d_hi or 0) - (d_lo or 0))
        last = _aware(last)
        h["last"] = last if h["last"] is None or last > h["last"] else h["last"]
        h["interval"] = float(secs) if secs else h["interval"]
    return out


def _last_windows(session: Session, now: datetime, devices: list[tuple[str, str]]
                  ) -> dict[tuple[str, str], tuple[datetime, float | None, str | None, int | None]]:
    """Last window (end, seconds, model) before ``now`` of devices with none in the window."""
    if not devices:
        return {}
    t = MetricsWindow.__table__
    rows = session.execute(
        select(t.c.fleet, t.c.device, func.max(t.c.window_end), func.avg(t.c.seconds),
               func.max(t.c.model_name), func.max(t.c.model_version))
        .where(tuple_(t.c.fleet, t.c.device).in_(devices), t.c.window_end <= now)
        .group_by(t.c.fleet, t.c.device)).all()
    return {(f, d): (_aware(last), secs, m, v) for f, d, last, secs, m, v in rows}


def _aware(ts: Any) -> Any:
    from datetime import timezone

    return ts.replace(tzinfo=timezone.utc) if ts is not None and ts.tzinfo is None else ts


def _health_conditions(session: Session, now: datetime, th: Thresholds,
                       health: dict[tuple[str, str], dict[str, Any]],
                       judged: set[Subject]) -> list[Condition]:
    out: list[Condition] = []
    d = Device.__table__
    states = {(f, dev): (s, m, v) for f, dev, s, m, v in session.execute(
        select(d.c.fleet, d.c.device, d.c.state, d.c.model_name, d.c.model_version))}
    for (fleet, device), (state, _model, _version) in states.items():
        judged.add(("device_lost", fleet, device, None, None))
        if state == "lost":
            out.append(Condition("device_lost", fleet, device, None, None, None, None, None,
                                 f"{fleet}/{device}: $state is lost (its last will)"))
    # devices without a window in the sliding window: silent since their last one (if any)
    idle = [k for k, (state, _m, _v) in states.items()
            if k not in health and state not in ("disconnected", "lost")]
    for dev_key, (last, secs, model, version) in _last_windows(session, now, idle).items():
        health[dev_key] = {"windows": 0, "lost": 0, "requests": 0, "errors": 0, "p95_ms": None,
                       "drops": 0, "last": last, "interval": float(secs) if secs else None,
                       "model": model, "version": version}
    for (fleet, device), h in health.items():
        rules = th.rules(fleet, h["model"], h["version"])
        subject = (fleet, device, None, None)
        for kind in ("device_silent", "error_rate", "latency_p95", "lost_windows", "spool_drops"):
            judged.add((kind, *subject))
        interval = h["interval"] or 10.0
        silent_n = rules.value("health", "silent_windows")
        quiet = (now - h["last"]).total_seconds() if h["last"] is not None else math.inf
        if states.get((fleet, device), ("",))[0] != "disconnected" and quiet > silent_n * interval:
            out.append(Condition("device_silent", fleet, device, None, None, None, quiet,
                                 silent_n * interval, f"{fleet}/{device}: no metrics window for "
                                 f"{quiet:.0f} s ({silent_n:g} intervals of {interval:g} s)"))
        if h["requests"] >= rules.value("health", "min_requests"):
            rate = h["errors"] / h["requests"]
            limit = rules.value("health", "error_rate")
            if rate >= limit:
                out.append(Condition("error_rate", fleet, device, None, None, None, rate, limit,
                                     f"{fleet}/{device}: error rate {rate:.1%} >= {limit:.1%}"))
        limit = rules.value("health", "p95_ms")
        if h["p95_ms"] is not None and h["p95_ms"] >= limit:
            out.append(Condition("latency_p95", fleet, device, None, None, None, h["p95_ms"], limit,
                                 f"{fleet}/{device}: p95 latency {h['p95_ms']:.1f} ms >= {limit:g} ms"))
        for kind, name, what in (("lost_windows", "lost", "metrics windows lost"),
                                 ("spool_drops", "drops", "telemetry messages dropped by the spool")):
            limit = rules.value("health", kind)
            if h[name] >= limit:
                out.append(Condition(kind, fleet, device, None, None, None, float(h[name]), limit,
                                     f"{fleet}/{device}: {h[name]} {what}"))
    return out


def _drift_hold(drift: DriftResult) -> set[Key]:
    """Keys of watch-level drift scores: their open alerts stay open (hysteresis)."""
    kinds = {"missing_rate": "missing_rate", "out_of_range": "out_of_range"}
    return {(kinds.get(s.statistic, "drift"), s.fleet, s.device, s.model, s.version, s.feature)
            for s in drift.scores if s.level == "watch"}


def _drift_conditions(drift: DriftResult, judged: set[Subject]) -> list[Condition]:
    kinds = {"missing_rate": "missing_rate", "out_of_range": "out_of_range"}
    out: list[Condition] = []
    for _scope, fleet, device, model, version in drift.judged:
        for kind in ("drift", "missing_rate", "out_of_range"):
            judged.add((kind, fleet, device, model, version))
    ordered = sorted((s for s in drift.scores if s.level == "alert"), key=lambda s: -s.value)
    for s in ordered:
        kind = kinds.get(s.statistic, "drift")
        where = "/".join(x for x in (s.fleet, s.device) if x) or "all fleets"
        out.append(Condition(kind, s.fleet, s.device, s.model, s.version, s.feature, s.value,
                             s.threshold, f"{where}: {s.model}@{s.version} {s.feature} "
                             f"{s.statistic} {s.value:.3g} (alert at {s.threshold:g}, {s.rows} rows)",
                             {"statistic": s.statistic, "scope": s.scope, "rows": s.rows}))
    return out


def _decay_conditions(scores: list[LabelledScore], refs: References, th: Thresholds,
                      judged: set[Subject]) -> list[Condition]:
    out: list[Condition] = []
    for s in scores:
        ref = refs(s.model, s.version)
        if ref is None or s.labels < th.min_labels:
            continue
        rules = th.rules(s.fleet, s.model, s.version)
        judged.add(("decay", s.fleet, s.device, s.model, s.version))
        where = "/".join(x for x in (s.fleet, s.device) if x) or "all fleets"
        if s.accuracy is not None and "accuracy" in ref.holdout and s.accuracy_high is not None:
            floor = ref.holdout["accuracy"] - rules.value("decay", "accuracy_drop")
            if s.accuracy_high < floor:
                out.append(Condition("decay", s.fleet, s.device, s.model, s.version, "accuracy",
                                     s.accuracy, floor, f"{where}: {s.model}@{s.version} accuracy "
                                     f"{s.accuracy:.3f} (95% CI {s.accuracy_low:.3f}-"
                                     f"{s.accuracy_high:.3f}, {s.labels} labels) below "
                                     f"{floor:.3f} (holdout {ref.holdout['accuracy']:.3f})"))
        if s.mae is not None and "mae" in ref.holdout:
            ceiling = ref.holdout["mae"] * rules.value("decay", "mae_ratio")
            if s.mae > ceiling:
                out.append(Condition("decay", s.fleet, s.device, s.model, s.version, "mae", s.mae,
                                     ceiling, f"{where}: {s.model}@{s.version} MAE {s.mae:.4g} "
                                     f"({s.labels} labels) above {ceiling:.4g}"))
    return out


def _estimates(drift: DriftResult) -> dict[tuple[str | None, str | None, str, int], float]:
    out: dict[tuple[str | None, str | None, str, int], float] = {}
    for (name, version), g in drift.sums.items():
        ref = g.reference
        if ref.task != "classification":
            continue
        per_device = estimated(ref, g.per_device)
        for (fleet, device), value in zip(g.devices, per_device.tolist(), strict=True):
            out[(fleet, device, name, version)] = float(value)
        out[(None, None, name, version)] = float(estimated(ref, g.total)[0])
    return out


def evaluate(session: Session, now: datetime, config: EvaluationConfig | None = None) -> EvaluationResult:
    """One evaluation round at ``now`` (an aware datetime); see the module docstring."""
    config = config or EvaluationConfig()
    th = config.thresholds
    refs = config.references
    refs.session = session
    drift = evaluate_drift(session, now, th, refs)
    tasks = {key: g.reference.task for key, g in drift.sums.items()}
    t = Model.__table__
    for name, version, task in session.execute(select(t.c.name, t.c.version, t.c.task)):
        if task:
            tasks.setdefault((name, int(version)), task)
    confidence = th.rules().value("decay", "confidence")
    scores = labelled(session, now, th.window_s, tasks, confidence)
    health = _health(session, now, th.window_s)
    judged: set[Subject] = set()
    conditions = [*_health_conditions(session, now, th, health, judged),
                  *_drift_conditions(drift, judged),
                  *_decay_conditions(scores, refs, th, judged)]
    opened, resolved, still_open = reconcile(session, now, conditions, judged, _drift_hold(drift))
    result = EvaluationResult(now, drift, scores, _estimates(drift), health, conditions, opened,
                              resolved, still_open)
    result.published = publish_changes(config.publish, config.base_topic, [*opened, *resolved])
    return result
