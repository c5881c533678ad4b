"""Drift per device, per model version and per fleet over a sliding window of metrics windows.

:func:`evaluate_drift` reads every window of the last ``window_s`` seconds in one query
(``fleet, device, model, bins``; a row without ``bins`` is packed from its payload), sums
the packed counts per device with ``np.bincount`` per column, then per (model version,
fleet) and per model version, and runs the registered statistics
(:mod:`edgeml.fleet.stattests`) on every group at once, feature by feature. A group with
fewer than ``min_rows`` rows for a feature is not judged (no false alarm from a quiet
device). Besides the statistics: the missing-rate rise over the reference's rate and the
out-of-range rate (values outside the training range, unseen categories).

Scopes: ``device`` (fleet, device, model version), ``fleet`` (fleet, model version; device
None) and ``model`` (model version over every fleet; fleet and device None).
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import numpy as np
from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from edgeml.fleet import stattests
from edgeml.fleet.layout import Reference, pack_window
from edgeml.fleet.schema import MetricsWindow
from edgeml.fleet.thresholds import Level, Thresholds

__all__ = ["DriftResult", "DriftScore", "GroupSums", "evaluate_drift", "load_sums"]

SCOPES = ("device", "fleet", "model")


@dataclass(frozen=True)
class DriftScore:
    """One statistic of one feature for one group, at watch or alert level."""

    scope: str
    fleet: str | None
    device: str | None
    model: str
    version: int
    feature: str  # an input name, or "prediction"
    statistic: str  # psi | ks | js | chi2 | missing_rate | out_of_range
    value: float
    threshold: float
    level: str  # watch | alert
    rows: int

    @property
    def key(self) -> tuple[Any, ...]:
        return (self.scope, self.fleet, self.device, self.model, self.version, self.feature)


@dataclass
class GroupSums:
    """Summed packed counts of one model version: per device, per fleet, and overall."""

    reference: Reference
    devices: list[tuple[str, str]]  # (fleet, device), one per row of ``per_device``
    per_device: np.ndarray  # [devices, width] float64
    windows: np.ndarray  # windows per device
    fleets: list[str] = field(default_factory=list)
    per_fleet: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))

    @property
    def total(self) -> np.ndarray:
        return self.per_device.sum(axis=0, keepdims=True)


@dataclass
class DriftResult:
    """Scores at watch or alert level, the groups judged, and the worst PSI/JS per device."""

    scores: list[DriftScore] = field(default_factory=list)
    judged: set[tuple[Any, ...]] = field(default_factory=set)  # (scope, fleet, device, model, version)
    worst: dict[tuple[str, str], tuple[str, str, float]] = field(default_factory=dict)
    sums: dict[tuple[str, int], GroupSums] = field(default_factory=dict)
    # every score of the fleet and model scopes: (scope, fleet, model, version, feature, statistic)
    values: dict[tuple[str, str | None, str, int, str, str], float] = field(default_factory=dict)
    windows: int = 0
    skipped: int = 0  # windows whose packed size did not fit their model's reference


ReferenceSource = Callable[[str, int], Reference | None]


def _fetch_plain(session: Session, stmt: Select[Any]) -> list[tuple[Any, ...]]:
    """All rows of ``stmt`` as the driver's tuples, skipping SQLAlchemy's Row objects.

    For a query of plain columns (text, integers, bytes: no result processor) this is what
    ``.all()`` returns, at a third of its cost on 60,000 rows (making and unzipping Rows).
    """
    result = session.connection().execute(stmt)
    try:
        return list(result.cursor.fetchall())
    finally:
        result.close()


@contextmanager
def _gc_paused() -> Iterator[None]:
    """No cyclic GC while 60,000 rows of tuples are built (they hold no cycles; each
    automatic collection would walk them all again)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def load_sums(session: Session, since: datetime, until: datetime,
              references: ReferenceSource) -> tuple[dict[tuple[str, int], GroupSums], int, int]:
    """Sum the packed windows with ``since < window_end <= until`` per model and device.

    The hot path is one query and a handful of numpy calls whatever the row count: the
    driver's tuples (no SQLAlchemy Row objects, no cyclic GC meanwhile) are split into
    columns once, blobs are joined and viewed as one int32 matrix, devices are numbered in
    order of first appearance and summed with one ``np.bincount`` per column.
    """
    with _gc_paused():
        return _load_sums(session, since, until, references)


def _load_sums(session: Session, since: datetime, until: datetime,
               references: ReferenceSource) -> tuple[dict[tuple[str, int], GroupSums], int, int]:
    t = MetricsWindow.__table__
    rows = _fetch_plain(session, select(
        t.c.model_name, t.c.model_version, t.c.fleet, t.c.device, t.c.bins, t.c.id)
        .where(t.c.window_end > since, t.c.window_end <= until))
    out: dict[tuple[str, int], GroupSums] = {}
    if not rows:
        return out, 0, 0
    names, versions, fleets, devices, blobs, ids = (list(c) for c in zip(*rows, strict=True))
    del rows
    first = next((b for b in blobs if b is not None), b"")
    if not isinstance(first, bytes):  # a driver that returns memoryview for binary columns
        blobs = [b if b is None else bytes(b) for b in blobs]
    keys = list(zip(fleets, devices, strict=True))
    models = sorted({(n, int(v or 0)) for n, v in set(zip(names, versions, strict=True))
                     if n is not None})
    skipped = names.count(None)
    for name, version in models:
        if len(models) == 1:
            idx = list(range(len(names))) if not skipped else [
                i for i, n in enumerate(names) if n is not None]
        else:
            idx = [i for i, (n, v) in enumerate(zip(names, versions, strict=True))
                   if n == name and int(v or 0) == version]
        ref = references(name, version)
        if ref is None:
            skipped += len(idx)
            continue
        whole = len(idx) == len(names)
        group_blobs = blobs if whole else [blobs[i] for i in idx]
        missing = [ids[i] for i, b in zip(idx, group_blobs, strict=True) if b is None] \
            if None in group_blobs else []
        if missing:
            packed = {wid: pack_window(payload or {}, ref.inputs, ref.task) for wid, payload in
                      session.execute(select(t.c.id, t.c.payload).where(t.c.id.in_(missing)))}
            group_blobs = [b if b is not None else packed.get(ids[i], b"")
                           for i, b in zip(idx, group_blobs, strict=True)]
        matrix, ok = ref.unpack(group_blobs)
        skipped += int((~ok).sum())
        if not len(matrix):
            continue
        if ok.all():
            fit_keys = keys if whole else [keys[i] for i in idx]
        else:
            fit_keys = [keys[i] for i in np.asarray(idx, dtype=np.int64)[ok].tolist()]
        # devices numbered in order of first appearance
        number = {k: i for i, k in enumerate(dict.fromkeys(fit_keys))}
        inv = np.fromiter(map(number.__getitem__, fit_keys), dtype=np.int64, count=len(fit_keys))
        pairs = list(number)
        per_device = np.empty((len(pairs), ref.width), dtype=np.float64)
        for j in range(ref.width):
            per_device[:, j] = np.bincount(inv, weights=matrix[:, j], minlength=len(pairs))
        fleet_names = sorted({f for f, _ in pairs})
        finv = np.searchsorted(np.asarray(fleet_names, dtype=object), [f for f, _ in pairs])
        per_fleet = np.zeros((len(fleet_names), ref.width))
        np.add.at(per_fleet, finv, per_device)
        out[(name, version)] = GroupSums(ref, pairs, per_device,
                                         np.bincount(inv, minlength=len(pairs)), fleet_names,
                                         per_fleet)
    return out, len(names), skipped


def _levels(value: np.ndarray, level: Level, direction: str) -> tuple[np.ndarray, np.ndarray]:
    def hit(th: float | None) -> np.ndarray:
        if th is None:
            return np.zeros(value.shape, dtype=bool)
        with np.errstate(invalid="ignore"):
            return (value >= th) if direction == "higher" else (value < th)

    return hit(level.watch), hit(level.alert)


class _Judge:
    """Runs the statistics of one scope's matrix and collects scores."""

    def __init__(self, result: DriftResult, thresholds: Thresholds, ref: Reference) -> None:
        self.result = result
        self.thresholds = thresholds
        self.ref = ref

    def run(self, scope: str, labels: list[tuple[str | None, str | None]], sums: np.ndarray) -> None:
        ref, th = self.ref, self.thresholds
        fleets = sorted({f for f, _ in labels}, key=lambda f: f or "")
        for fleet in fleets:
            idx = np.asarray([i for i, (f, _) in enumerate(labels) if f == fleet], dtype=np.int64)
            rules = th.rules(fleet, ref.name, ref.version)
            block = sums[idx]
            sub = [labels[i] for i in idx]
            judged_any = np.zeros(len(idx), dtype=bool)
            for seg in [*ref.segments, *([ref.prediction] if ref.prediction else [])]:
                if seg.kind == "prediction":
                    counts = block[:, seg.offset:seg.offset + seg.nbins]
                    present = count = counts.sum(axis=1)
                    kind = "prediction"
                else:
                    count = block[:, seg.start]
                    counts = block[:, seg.offset:seg.offset + seg.nbins]
                    present = count - block[:, seg.start + 1]
                    kind = seg.kind
                ok = present >= max(th.min_rows, 1)
                judged_any |= ok
                if not ok.any():
                    continue
                if seg.nbins:
                    for name, level in rules.drift(kind).items():
                        test = stattests.get(name)
                        values = test(seg.ref, counts)
                        self._collect(scope, sub, seg.name, name, values, level, test.direction,
                                      present, ok)
                        if name in ("psi", "js") and scope == "device":
                            self._worst(sub, seg.name, name, values, ok)
                if seg.kind != "prediction":
                    with np.errstate(invalid="ignore", divide="ignore"):
                        miss = block[:, seg.start + 1] / np.where(count > 0, count, 1) - seg.missing_rate
                        oor = block[:, seg.start + 2] / np.where(present > 0, present, 1)
                    self._collect(scope, sub, seg.name, "missing_rate", miss,
                                  rules.level("missing_rate_rise"), "higher", count, count >= th.min_rows)
                    self._collect(scope, sub, seg.name, "out_of_range", oor,
                                  rules.level("out_of_range_rate"), "higher", present, ok)
            for (f, d), judged in zip(sub, judged_any.tolist(), strict=True):
                if judged:
                    self.result.judged.add((scope, f, d, ref.name, ref.version))

    def _collect(self, scope: str, labels: list[tuple[str | None, str | None]], feature: str,
                 statistic: str, values: np.ndarray, level: Level, direction: str,
                 rows: np.ndarray, ok: np.ndarray) -> None:
        watch, alert = _levels(values, level, direction)
        if scope != "device":
            for i in np.flatnonzero(ok & np.isfinite(values)).tolist():
                key = (scope, labels[i][0], self.ref.name, self.ref.version, feature, statistic)
                self.result.values[key] = float(values[i])
        hits = np.flatnonzero((watch | alert) & ok)
        for i in hits.tolist():
            is_alert = bool(alert[i])
            threshold = level.alert if is_alert else level.watch
            fleet, device = labels[i]
            self.result.scores.append(DriftScore(
                scope, fleet, device, self.ref.name, self.ref.version, feature, statistic,
                float(values[i]), float(threshold if threshold is not None else np.nan),
                "alert" if is_alert else "watch", int(rows[i])))

    def _worst(self, labels: list[tuple[str | None, str | None]], feature: str, statistic: str,
               values: np.ndarray, ok: np.ndarray) -> None:
        worst = self.result.worst
        for i in np.flatnonzero(ok & np.isfinite(values)).tolist():
            fleet, device = labels[i]
            key = (str(fleet), str(device))
            v = float(values[i])
            if key not in worst or v > worst[key][2]:
                worst[key] = (feature, statistic, v)


def evaluate_drift(session: Session, now: datetime, thresholds: Thresholds,
                   references: ReferenceSource) -> DriftResult:
    """Judge drift over ``(now - window, now]`` for every device, fleet and model version."""
    since = now - timedelta(seconds=thresholds.window_s)
    sums, windows, skipped = load_sums(session, since, now, references)
    result = DriftResult(sums=sums, windows=windows, skipped=skipped)
    for g in sums.values():
        judge = _Judge(result, thresholds, g.reference)
        judge.run("device", [(f, d) for f, d in g.devices], g.per_device)
        judge.run("fleet", [(f, None) for f in g.fleets], g.per_fleet)
        judge.run("model", [(None, None)], g.total)
    return result
