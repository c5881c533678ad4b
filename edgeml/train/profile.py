"""Data profiles: the reference profile stored in model.json, and column statistics for explore.

:func:`reference_profile` follows the TEAM.md format; devices bin their live inputs on
the same edges to detect drift. All numbers are plain JSON (no NaN: ``None`` instead).
Categorical frequencies are over non-missing values; at most :data:`MAX_FREQUENCIES`
values are listed, the rest are folded into ``"__other__"``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "BINS",
    "MAX_FREQUENCIES",
    "OTHER",
    "column_stats",
    "histogram",
    "missing_mask",
    "reference_profile",
]

BINS = 10
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
    """Equal-width bins over min..max of ``values`` (finite only); a constant gets +-0.5."""
    finite = values[np.isfinite(values)] if values.size else values
    if finite.size == 0:
        counts, edges = np.histogram(np.array([], dtype=float), bins=bins, range=(0.0, 1.0))
    else:
        counts, edges = np.histogram(finite, bins=bins)
    return [float(e) for e in edges], [int(c) for c in counts]


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


def _feature_profile(series: pd.Series, kind: str) -> dict[str, Any]:
    miss = missing_mask(series, kind)
    rate = float(miss.mean()) if len(series) else 0.0
    present = series[~miss]
    if kind == "numeric":
        values = pd.to_numeric(present, errors="coerce").to_numpy(dtype=float)
        edges, counts = histogram(values)
        has = values.size > 0
        return {
            "kind": "numeric",
            "bin_edges": edges,
            "counts": counts,
            "mean": _f(values.mean()) if has else None,
            "std": _f(values.std()) if has else None,
            "min": _f(values.min()) if has else None,
            "max": _f(values.max()) if has else None,
            "missing_rate": rate,
        }
    if kind == "categorical":
        return {"kind": "categorical", "frequencies": _frequencies(present), "missing_rate": rate}
    lengths = present.astype(str).str.len().to_numpy(dtype=float)
    edges, counts = histogram(lengths)
    return {
        "kind": "text",
        "length_bin_edges": edges,
        "length_counts": counts,
        "missing_rate": rate,
    }


def _prediction_profile(task: str, predictions: np.ndarray) -> dict[str, Any]:
    pred = np.asarray(predictions)
    if task == "classification":
        return {"kind": "classification", "frequencies": _frequencies(pd.Series(pred).astype(str))}
    if task == "anomaly":
        rate = float(np.mean(pred == -1)) if pred.size else 0.0
        return {"kind": "anomaly", "anomaly_rate": rate}
    values = pred.astype(float).ravel()
    edges, counts = histogram(values)
    return {
        "kind": "regression",
        "bin_edges": edges,
        "counts": counts,
        "mean": _f(values.mean()) if values.size else None,
        "std": _f(values.std()) if values.size else None,
    }


def reference_profile(
    frame: pd.DataFrame, kinds: dict[str, str], *, task: str, predictions: np.ndarray | None
) -> dict[str, Any]:
    """The reference profile of training data (TEAM.md format) for model.json and manifests.

    ``frame`` is the raw feature frame (extra columns are ignored); ``predictions`` are the
    model's predictions on it (labels for classification, -1/1 for anomaly), or None to
    leave out the ``prediction`` part.
    """
    profile: dict[str, Any] = {
        "rows": len(frame),
        "features": {name: _feature_profile(frame[name], kind) for name, kind in kinds.items()},
    }
    if predictions is not None:
        profile["prediction"] = _prediction_profile(task, predictions)
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
