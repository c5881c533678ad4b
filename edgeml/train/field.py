"""Labelled field rows: the feedback a fleet sent for one model, checked against its features.

A device captures a sample (``edgeml.sample/1``: id, features, prediction) and, when the true
label arrives, sends ``edgeml.feedback/1`` with the same id, the label and (normally) the same
features. The monitor stores both (``samples`` and ``feedback`` tables, unique ids). A field
row is one feedback row of the model; its features are the feedback's, or those of the sample
with the same id when the feedback came without them.

Every row is checked against the feature schema of the registered model (``model.json``
``features``: names, kinds, categories; ``target.classes``) and left out with a counted reason
when it fails; nothing here raises for bad rows:

- ``no-features``: neither the feedback nor its sample carries features;
- ``missing-feature``: a feature of the model is absent from the row;
- ``wrong-type``: a numeric feature that is not a number (booleans too), a categorical or text
  feature that is not a string;
- ``unknown-category``: a categorical value the model never saw in training;
- ``bad-label``: a label outside ``target.classes`` (classification), not a number
  (regression), not 0/1 (anomaly);
- ``duplicate``: the same reading (device, sample time, features) labelled again under
  another id: the first (oldest label) is kept;
- ``no-feedback``: a captured sample of the model that never got its label.

Rows are ordered by the time of the reading (``sample_ts``, else the label's ``ts``, else
when it was received), then id. The database is read through SQLAlchemy (``edgeml[fleet]``),
imported here only, lazily by the caller.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import pandas as pd

from edgeml.errors import UsageError
from edgeml.train.model_json import Feature

__all__ = ["REASONS", "FieldData", "load_field_rows", "parse_since", "validate_rows"]

REASONS = ("no-features", "missing-feature", "wrong-type", "unknown-category", "bad-label",
           "duplicate", "no-feedback")
_RELATIVE = re.compile(r"^(\d+)\s*([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_since(value: str | None, now: datetime | None = None) -> datetime | None:
    """``--since``: ISO 8601 (``2026-12-01``, ``2026-12-01T10:00:00Z``) or an age (``7d``, ``12h``)."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    m = _RELATIVE.match(text)
    if m:
        now = now or datetime.now(timezone.utc)
        return now - timedelta(seconds=int(m.group(1)) * _UNITS[m.group(2)])
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(f"--since {value!r}: expected an ISO 8601 time (2026-12-01T10:00:00Z) "
                         "or an age such as 7d, 12h, 30m") from None
    return when.replace(tzinfo=timezone.utc) if when.tzinfo is None else when


@dataclass(frozen=True)
class FieldData:
    """The valid field rows (oldest first) and what was left out, by reason."""

    X: pd.DataFrame  # raw feature frame in ``features`` order (model.json dtypes)
    y: pd.Series
    ts: list[datetime]
    ids: list[str]
    devices: list[str]  # "fleet/device" per row
    excluded: dict[str, int] = field(default_factory=dict)
    seen: int = 0  # feedback rows read (valid + excluded, without no-feedback)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def sha256(self) -> str:
        """Hash of the valid rows (id, features, label) as canonical JSON."""
        h = hashlib.sha256()
        for i, rid in enumerate(self.ids):
            row = {"id": rid, "features": {c: _plain(self.X[c].iloc[i]) for c in self.X.columns},
                   "label": _plain(self.y.iloc[i])}
            h.update(json.dumps(row, sort_keys=True, separators=(",", ":")).encode())
            h.update(b"\n")
        return h.hexdigest()

    def take(self, index: Sequence[int]) -> FieldData:
        idx = list(index)
        return FieldData(self.X.iloc[idx].reset_index(drop=True),
                         self.y.iloc[idx].reset_index(drop=True),
                         [self.ts[i] for i in idx], [self.ids[i] for i in idx],
                         [self.devices[i] for i in idx], dict(self.excluded), self.seen)


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_features(raw: dict[str, Any], features: Sequence[Feature]) -> tuple[str | None, dict[str, Any]]:
    out: dict[str, Any] = {}
    for f in features:
        if f.name not in raw:
            return "missing-feature", {}
        value = raw[f.name]
        if value is None or (f.kind != "numeric" and value == ""):
            if not f.nullable:
                return "wrong-type", {}
            out[f.name] = math.nan if f.kind == "numeric" else ""
            continue
        if f.kind == "numeric":
            if not _is_number(value) or not math.isfinite(float(value)):
                return "wrong-type", {}
            out[f.name] = float(value)
        else:
            if not isinstance(value, str):
                return "wrong-type", {}
            if f.kind == "categorical" and f.categories is not None and value not in f.categories:
                return "unknown-category", {}
            out[f.name] = value
    return None, out


def _check_label(label: Any, task: str, classes: Sequence[str] | None) -> tuple[bool, Any]:
    if task == "classification":
        if isinstance(label, bool) or not isinstance(label, (str, int, float)):
            return False, None
        text = label if isinstance(label, str) else (
            str(int(label)) if _is_number(label) and float(label).is_integer() else str(label))
        return (classes is None or text in classes), text
    if task == "regression":
        ok = _is_number(label) and math.isfinite(float(label))
        return ok, float(label) if ok else None
    ok = _is_number(label) and float(label) in (0.0, 1.0)
    return ok, int(label) if ok else None


def validate_rows(rows: Sequence[dict[str, Any]], features: Sequence[Feature], *, task: str,
                  classes: Sequence[str] | None, unlabelled: int = 0) -> FieldData:
    """Check joined rows ``{id, fleet, device, when, sample_ts, features, label}`` (any order)."""
    excluded: Counter[str] = Counter()
    if unlabelled:
        excluded["no-feedback"] = unlabelled
    ordered = sorted(rows, key=lambda r: (r["when"], str(r["id"])))
    kept: list[tuple[dict[str, Any], dict[str, Any], Any]] = []
    seen: set[tuple[str, str, str]] = set()
    for r in ordered:
        raw = r.get("features")
        if not isinstance(raw, dict):
            excluded["no-features"] += 1
            continue
        reason, values = _check_features(raw, features)
        if reason is not None:
            excluded[reason] += 1
            continue
        ok, label = _check_label(r.get("label"), task, classes)
        if not ok:
            excluded["bad-label"] += 1
            continue
        key = (f"{r['fleet']}/{r['device']}", str(r.get("sample_ts")),
               json.dumps(raw, sort_keys=True, default=str))
        if key in seen:
            excluded["duplicate"] += 1
            continue
        seen.add(key)
        kept.append((r, values, label))
    kinds = {f.name: f.kind for f in features}
    frame = pd.DataFrame([v for _, v, _ in kept], columns=list(kinds))
    for name, kind in kinds.items():
        frame[name] = frame[name].astype("float64") if kind == "numeric" else \
            frame[name].astype(object)
    y = pd.Series([lab for _, _, lab in kept],
                  dtype=object if task == "classification" else
                  ("float64" if task == "regression" else "int64"))
    return FieldData(frame, y, [r["when"] for r, _, _ in kept], [str(r["id"]) for r, _, _ in kept],
                     [f"{r['fleet']}/{r['device']}" for r, _, _ in kept],
                     {k: excluded[k] for k in REASONS if excluded[k]}, len(rows))


def load_field_rows(store: Any, *, model: str, features: Sequence[Feature], task: str,
                    classes: Sequence[str] | None, since: datetime | None = None) -> FieldData:
    """Read the feedback of ``model`` (labelled at or after ``since``) joined with its samples."""
    from sqlalchemy import func, select

    from edgeml.fleet.db import store_errors
    from edgeml.fleet.schema import Feedback, Sample

    fb, sm = Feedback.__table__, Sample.__table__
    label_time = func.coalesce(fb.c.ts, fb.c.received_at)
    query = (select(fb.c.id, fb.c.fleet, fb.c.device, fb.c.label, fb.c.ts, fb.c.sample_ts,
                    fb.c.received_at, fb.c.features, sm.c.features.label("sample_features"),
                    sm.c.ts.label("sample_time"))
             .select_from(fb.outerjoin(sm, sm.c.id == fb.c.id))
             .where(fb.c.model_name == model))
    unlabelled_q = (select(func.count()).select_from(sm.outerjoin(fb, fb.c.id == sm.c.id))
                    .where(sm.c.model_name == model, fb.c.id.is_(None)))
    if since is not None:
        query = query.where(label_time >= since)
        unlabelled_q = unlabelled_q.where(func.coalesce(sm.c.ts, sm.c.received_at) >= since)
    with store_errors(store.url), store.engine.connect() as conn:
        result = conn.execute(query).mappings().all()
        unlabelled = int(conn.execute(unlabelled_q).scalar() or 0)
    rows = []
    for r in result:
        feats = r["features"] if isinstance(r["features"], dict) else r["sample_features"]
        when = r["sample_ts"] or r["sample_time"] or r["ts"] or r["received_at"]
        rows.append({"id": r["id"], "fleet": r["fleet"], "device": r["device"],
                     "when": when, "sample_ts": r["sample_ts"] or r["sample_time"],
                     "features": feats, "label": r["label"]})
    return validate_rows(rows, features, task=task, classes=classes, unlabelled=unlabelled)
