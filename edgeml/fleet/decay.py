"""Decay: is the model still as good as on its holdout? Labelled and estimated, side by side.

- Labelled (:func:`labelled`): the feedback of the window (``edgeml.feedback/1``: a label
  joined with the sample's prediction) per device and per model version: accuracy with a
  Wilson score interval and macro F1 (classification), MAE (regression). Judged once
  ``min_labels`` labels are in: decayed when the interval's upper bound is below the
  holdout accuracy minus ``decay.accuracy_drop``, or the MAE above the holdout MAE times
  ``decay.mae_ratio``.
- Estimated without labels (:func:`estimated`, confidence-based performance estimation as
  NannyML's CBPE): the expected accuracy of the window's predictions from the reported
  max-probability histogram. When the holdout's confidence histogram shows the model
  miscalibrated (holdout mean confidence and accuracy differ by more than
  :data:`CALIBRATION_TOLERANCE`), each confidence bin counts with the holdout accuracy
  measured in that bin; otherwise the expected accuracy is the mean max probability.
"""

from __future__ import annotations

import functools
import json
import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import numpy as np
from sqlalchemy import Text, cast, select
from sqlalchemy.orm import Session

from edgeml.fleet.layout import MILLI, Reference
from edgeml.fleet.schema import Feedback

__all__ = ["CALIBRATION_TOLERANCE", "LabelledScore", "estimated", "labelled", "wilson"]

CALIBRATION_TOLERANCE = 0.02


def wilson(successes: float, n: float, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion (statsmodels' proportion_confint method='wilson')."""
    if n <= 0:
        return (0.0, 1.0)
    z = _z(confidence)
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


@functools.lru_cache(maxsize=32)
def _z(confidence: float) -> float:
    """Two-sided normal quantile for ``confidence`` (bisection on erf; exact to 1e-12).

    Cached: every group of an evaluation asks for the same confidence (1,000 devices
    spent 100,000 ``erf`` calls on the same number)."""
    target = 1.0 - (1.0 - confidence) / 2.0
    lo, hi = 0.0, 10.0
    for _ in range(100):
        mid = (lo + hi) / 2
        if 0.5 * (1 + math.erf(mid / math.sqrt(2))) < target:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


@dataclass(frozen=True)
class LabelledScore:
    """Labelled performance of one group (device None: the model version over the fleet)."""

    fleet: str | None
    device: str | None
    model: str
    version: int
    labels: int
    accuracy: float | None = None
    accuracy_low: float | None = None
    accuracy_high: float | None = None
    f1_macro: float | None = None
    mae: float | None = None


def _macro_f1(true: list[str], pred: list[str]) -> float:
    """Macro F1 over the classes seen in either list (one pass of counting, not one per class)."""
    pairs = Counter(zip(true, pred, strict=True))
    tp: Counter[str] = Counter()
    fp: Counter[str] = Counter()
    fn: Counter[str] = Counter()
    for (t, p), n in pairs.items():
        if t == p:
            tp[t] += n
        else:
            fp[p] += n
            fn[t] += n
    classes = sorted(set(true) | set(pred))
    scores = [2 * tp[c] / (2 * tp[c] + fp[c] + fn[c]) if tp[c] + fp[c] + fn[c] else 0.0
              for c in classes]
    return float(np.mean(scores)) if scores else 0.0


def _score(group: tuple[str | None, str | None, str, int], task: str, pairs: list[tuple[Any, Any]],
           confidence: float) -> LabelledScore:
    fleet, device, model, version = group
    n = len(pairs)
    if task == "regression":
        errors = [abs(float(t) - float(p)) for t, p in pairs]
        return LabelledScore(fleet, device, model, version, n, mae=float(np.mean(errors)) if n else None)
    true = [str(t) for t, _ in pairs]
    pred = [str(p) for _, p in pairs]
    hits = sum(1 for t, p in zip(true, pred, strict=True) if t == p)
    low, high = wilson(hits, n, confidence)
    return LabelledScore(fleet, device, model, version, n, accuracy=hits / n if n else None,
                         accuracy_low=low, accuracy_high=high, f1_macro=_macro_f1(true, pred))


def _predicted(prediction: Any, task: str) -> Any:
    if not isinstance(prediction, dict):
        return None
    return prediction.get("prediction") if task == "regression" else prediction.get("label")


def labelled(session: Session, now: datetime, window_s: float, tasks: dict[tuple[str, int], str],
             confidence: float = 0.95) -> list[LabelledScore]:
    """Labelled scores per device and per model version from the window's feedback."""
    t = Feedback.__table__
    since = now - timedelta(seconds=window_s)
    # label and prediction as JSON text, decoded once per distinct text:
    # a fleet sends a few labels and predictions thousands of times
    rows = session.execute(
        select(t.c.fleet, t.c.device, t.c.model_name, t.c.model_version,
               cast(t.c.label, Text), cast(t.c.prediction, Text))
        .where(t.c.ts > since, t.c.ts <= now)
    ).all()
    decode = functools.lru_cache(maxsize=4096)(json.loads)
    groups: dict[tuple[str | None, str | None, str, int], list[tuple[Any, Any]]] = {}
    for fleet, device, model_name, model_version, label_doc, prediction_doc in rows:
        if model_name is None:
            continue
        key = (model_name, int(model_version or 0))
        task = tasks.get(key)
        if task not in ("classification", "regression"):
            continue
        pred = _predicted(_json(prediction_doc, decode), task)
        label = _json(label_doc, decode)
        if pred is None or label is None:
            continue
        if task == "regression" and not (_is_number(pred) and _is_number(label)):
            continue
        groups.setdefault((fleet, device, *key), []).append((label, pred))
        groups.setdefault((None, None, *key), []).append((label, pred))
    return [_score(g, tasks[(g[2], g[3])], pairs, confidence) for g, pairs in sorted(
        groups.items(), key=lambda kv: tuple(str(x) for x in kv[0]))]


def _json(doc: str | None, decode: Callable[[str], Any]) -> Any:
    """A JSON column read as text (``CAST(... AS TEXT)``): NULL stays None."""
    return None if doc is None else decode(doc)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def calibrated(ref: Reference) -> bool:
    """True when the holdout's confidence histogram shows the model miscalibrated."""
    counts = np.asarray(ref.confidence_counts, dtype=float)
    acc = ref.confidence_accuracy
    if not counts.size or len(acc) != counts.size or counts.sum() <= 0:
        return False
    hold_acc = sum(c * (a or 0.0) for c, a in zip(counts.tolist(), acc, strict=True)) / counts.sum()
    if ref.confidence_mean is not None:
        hold_conf = float(ref.confidence_mean)
    else:
        centres = (np.arange(counts.size) + 0.5) / counts.size
        hold_conf = float((counts * centres).sum() / counts.sum())
    return abs(hold_conf - hold_acc) > CALIBRATION_TOLERANCE


def estimated(ref: Reference, sums: np.ndarray) -> np.ndarray:
    """CBPE accuracy estimate per row of packed sums ``[groups, width]`` (NaN: no confidence)."""
    if ref.task != "classification" or ref.conf_offset < 0:
        return np.full(sums.shape[0], np.nan)
    o = ref.conf_offset
    n = sums[:, o]
    bins = sums[:, o + 2:o + 2 + len(ref.confidence_counts or [0] * 10)]
    with np.errstate(invalid="ignore", divide="ignore"):
        if calibrated(ref):
            acc = np.asarray([np.nan if a is None else a for a in ref.confidence_accuracy])
            centres = (np.arange(acc.size) + 0.5) / acc.size
            acc = np.where(np.isnan(acc), centres, acc)  # no holdout row in a bin: trust the score
            est = (bins[:, :acc.size] * acc).sum(axis=1) / n
        else:
            est = sums[:, o + 1] / MILLI / n
    return np.where(n > 0, est, np.nan)
