"""Reference profiles (the training profile stored in the manifest) and column statistics.

:func:`reference_profile` describes the training data and the holdout predictions so that
devices can report the same statistics per metrics window and the fleet monitor can
compare them (:mod:`edgeml.fleet.drift`). Format ``"format": 2``::

    {"format": 2, "rows",
     "features": {name: numeric | categorical | text},
     "prediction": {...holdout prediction distribution...}}

- numeric: ``{"kind": "numeric", "binning": "quantile", "bin_edges": [q10 .. q90],
  "counts", "min", "max", "mean", "std", "missing_rate"}``. The edges are the 10..90%
  quantiles of the training values, deduplicated (a discrete feature gets fewer): the bins
  are ``(-inf, e0)``, ``[e0, e1)``, ..., ``[e_last, inf)``, so ``len(counts) ==
  len(bin_edges) + 1`` and no live value falls outside every bin. Values outside
  ``[min, max]`` are additionally counted as out of range on the device.
- categorical: ``{"kind": "categorical", "frequencies": {value: share}, "missing_rate"}``
  (over non-missing values; at most :data:`MAX_FREQUENCIES` listed, the rest under
  ``"__other__"``).
- text: the same quantile binning of text lengths (``length_bin_edges``, ``length_counts``).
- prediction (on the holdout): classification ``{"kind", "rows", "frequencies",
  "confidence": {"bin_edges": [0, 0.1, ..., 1], "counts", "accuracy": [per bin or None]}}``
  (max probability per row; ``accuracy`` is the holdout accuracy inside each confidence bin,
  which calibrates the monitor's label-free accuracy estimate); regression ``{"kind",
  "rows", "binning", "bin_edges", "counts", "mean", "std"}``; anomaly ``{"kind", "rows",
  "anomaly_rate", "binning", "bin_edges", "counts"}`` (scores).

All numbers are plain JSON (no NaN: ``None`` instead).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "BINS",
    "CONFIDENCE_BINS",
    "FORMAT",
    "MAX_FREQUENCIES",
    "OTHER",
    "column_stats",
    "confidence_edges",
    "histogram",
    "missing_mask",
    "quantile_edges",
    "reference_profile",
]

FORMAT = 2
BINS = 10
CONFIDENCE_BINS = 10
MAX_FREQUENCIES = 100
OTHER = "__other__"


def _f(value: Any) -> float | None:
    """A JSON-safe float (None for NaN/inf/None)."""
    if value is None:
        return None
    v = float(value)
    return v if math.isfinite(v) else None


def missing_mask(series: pd.Series, kind: str) -> pd.Series:
    """True where a value is missing: NaN for numeric, NaN/None/"" for categorical and text."""
    if kind == "numeric":
        return pd.to_numeric(series, errors="coerce").isna()
    return series.isna() | (series.astype(object) == "")


def histogram(values: np.ndarray, bins: int = BINS) -> tuple[list[float], list[int]]:
    """Equal-width bins over min..max of ``values`` (finite only); for explore's charts."""
    finite = values[np.isfinite(values)] if values.size else values
    if finite.size == 0:
        counts, edges = np.histogram(np.array([], dtype=float), bins=bins, range=(0.0, 1.0))
    else:
        counts, edges = np.histogram(finite, bins=bins)
    return [float(e) for e in edges], [int(c) for c in counts]


def quantile_edges(values: np.ndarray, bins: int = BINS) -> list[float]:
    """Inner edges at the 1/bins .. (bins-1)/bins quantiles of the finite values, deduplicated."""
    finite = values[np.isfinite(values)] if values.size else values
    if finite.size == 0:
        return []
    qs = np.quantile(finite, np.arange(1, bins) / bins)
    return [float(e) for e in np.unique(qs)]


def open_bin_counts(values: np.ndarray, edges: list[float]) -> list[int]:
    """Counts in ``(-inf, e0), [e0, e1), ..., [e_last, inf)`` (the device's binning)."""
    finite = values[np.isfinite(values)] if values.size else values
    idx = np.searchsorted(np.asarray(edges, dtype=float), finite, side="right")
    return [int(c) for c in np.bincount(idx, minlength=len(edges) + 1)]


def confidence_edges(bins: int = CONFIDENCE_BINS) -> list[float]:
    """``[0, 0.1, ..., 1]``: the fixed confidence histogram (the top edge is inclusive)."""
    return [round(i / bins, 10) for i in range(bins + 1)]


def _frequencies(values: pd.Series, limit: int = MAX_FREQUENCIES) -> dict[str, float]:
    if values.empty:
        return {}
    shares = values.astype(str).value_counts(normalize=True, sort=True)
    shares = shares.sort_index(kind="stable").sort_values(ascending=False, kind="stable")
    out = {str(k): float(v) for k, v in shares.iloc[:limit].items()}
    rest = float(shares.iloc[limit:].sum())
    if rest > 0:
        out[OTHER] = rest
    return out


def _binned(values: np.ndarray, prefix: str = "") -> dict[str, Any]:
    edges = quantile_edges(values)
    return {"binning": "quantile", f"{prefix}bin_edges": edges,
            f"{prefix}counts": open_bin_counts(values, edges)}


def _feature_profile(series: pd.Series, kind: str) -> dict[str, Any]:
    miss = missing_mask(series, kind)
    rate = float(miss.mean()) if len(series) else 0.0
    present = series[~miss]
    if kind == "numeric":
        values = pd.to_numeric(present, errors="coerce").to_numpy(dtype=float)
        has = values.size > 0
        return {
            "kind": "numeric",
            **_binned(values),
            "mean": _f(values.mean()) if has else None,
            "std": _f(values.std()) if has else None,
            "min": _f(values.min()) if has else None,
            "max": _f(values.max()) if has else None,
            "missing_rate": rate,
        }
    if kind == "categorical":
        return {"kind": "categorical", "frequencies": _frequencies(present), "missing_rate": rate}
    lengths = present.astype(str).str.len().to_numpy(dtype=float)
    return {"kind": "text", **_binned(lengths, "length_"), "missing_rate": rate}


def _confidence(proba: np.ndarray, correct: np.ndarray | None) -> dict[str, Any]:
    edges = confidence_edges()
    top = np.asarray(proba, dtype=float).max(axis=1)
    idx = np.minimum((np.clip(top, 0.0, 1.0) * CONFIDENCE_BINS).astype(int), CONFIDENCE_BINS - 1)
    counts = np.bincount(idx, minlength=CONFIDENCE_BINS)
    out: dict[str, Any] = {"bin_edges": edges, "counts": [int(c) for c in counts],
                           "mean": _f(top.mean()) if top.size else None}
    if correct is not None:
        hits = np.bincount(idx, weights=correct.astype(float), minlength=CONFIDENCE_BINS)
        out["accuracy"] = [float(h / c) if c else None for h, c in zip(hits, counts, strict=True)]
    return out


def _prediction_profile(
    task: str,
    predictions: np.ndarray,
    *,
    proba: np.ndarray | None = None,
    scores: np.ndarray | None = None,
    y_true: Any = None,
) -> dict[str, Any]:
    pred = np.asarray(predictions)
    rows = int(pred.shape[0]) if pred.ndim else 0
    if task == "classification":
        labels = pd.Series(pred.ravel()).astype(str)
        out: dict[str, Any] = {"kind": "classification", "rows": rows,
                               "frequencies": _frequencies(labels)}
        if proba is not None and len(proba):
            correct = None
            if y_true is not None:
                correct = np.asarray([str(v) for v in np.asarray(y_true).ravel()]) == labels.to_numpy()
            out["confidence"] = _confidence(np.asarray(proba), correct)
        return out
    if task == "anomaly":
        rate = float(np.mean(pred == -1)) if pred.size else 0.0
        out = {"kind": "anomaly", "rows": rows, "anomaly_rate": rate}
        if scores is not None:
            out.update(_binned(np.asarray(scores, dtype=float).ravel()))
        return out
    values = pred.astype(float).ravel()
    return {
        "kind": "regression",
        "rows": rows,
        **_binned(values),
        "mean": _f(values.mean()) if values.size else None,
        "std": _f(values.std()) if values.size else None,
    }


def reference_profile(
    frame: pd.DataFrame,
    kinds: dict[str, str],
    *,
    task: str,
    predictions: np.ndarray | None,
    proba: np.ndarray | None = None,
    scores: np.ndarray | None = None,
    y_true: Any = None,
) -> dict[str, Any]:
    """The reference profile (see the module docstring) for model.json and manifests.

    ``frame`` is the raw training feature frame (extra columns are ignored);
    ``predictions`` are the model's predictions on the holdout (labels for classification,
    -1/1 for anomaly), with ``proba`` (classification), ``scores`` (anomaly) and the
    holdout's true labels ``y_true`` (per-bin accuracy of the confidence histogram), or None
    to leave out the ``prediction`` part.
    """
    profile: dict[str, Any] = {
        "format": FORMAT,
        "rows": len(frame),
        "features": {name: _feature_profile(frame[name], kind) for name, kind in kinds.items()},
    }
    if predictions is not None:
        profile["prediction"] = _prediction_profile(task, predictions, proba=proba, scores=scores,
                                                    y_true=y_true)
    return profile


def column_stats(series: pd.Series, kind: str) -> dict[str, Any]:
    """Statistics for explore: missing share, distinct values, moments and quartiles or top values."""
    miss = missing_mask(series, kind)
    present = series[~miss]
    stats: dict[str, Any] = {
        "kind": kind,
        "count": len(series),
        "missing": int(miss.sum()),
        "missing_pct": 100.0 * float(miss.mean()) if len(series) else 0.0,
        "distinct": int(present.astype(str).nunique()) if kind != "numeric" else int(present.nunique()),
    }
    if kind == "numeric":
        values = pd.to_numeric(present, errors="coerce").astype(float)
        q = values.quantile([0.25, 0.5, 0.75]) if len(values) else pd.Series([np.nan] * 3)
        stats.update(
            mean=_f(values.mean()),
            std=_f(values.std()),
            min=_f(values.min()),
            q25=_f(q.iloc[0]),
            median=_f(q.iloc[1]),
            q75=_f(q.iloc[2]),
            max=_f(values.max()),
        )
        edges, counts = histogram(values.to_numpy())
        stats["histogram"] = {"bin_edges": edges, "counts": counts}
    else:
        counts = present.astype(str).value_counts()
        stats["top"] = {str(k): int(v) for k, v in counts.iloc[:10].items()}
        if kind == "text":
            lengths = present.astype(str).str.len()
            stats["mean_length"] = _f(lengths.mean()) if len(lengths) else None
            edges, hist = histogram(lengths.to_numpy(dtype=float))
            stats["histogram"] = {"bin_edges": edges, "counts": hist}
    return stats
