"""Loading a recipe's data into the raw feature frame (one column per model.json ``features`` entry, :mod:`edgeml.train.model_json`) and checking it.

:func:`load_dataset` reads the source (see :mod:`edgeml.train.sources`), drops
``data.drop`` columns, drops rows whose target is missing (and counts them),
decides each feature's kind (declared in ``data.columns``, else inferred) and
normalizes the frame:

- numeric features: float64, NaN for missing (booleans 0/1, datetimes as epoch seconds);
- categorical and text features: Python ``str`` (object dtype), ``""`` for missing;
- datetime features (declared only): replaced in place by their derived numeric columns
  (:mod:`edgeml.train.datetimes`); the raw values stay in ``Dataset.raw``;
- target: classification -> ``str`` labels; regression -> float64;
  anomaly -> int64 0 (normal) / 1 (anomaly).

The frame holds the features in data order, then the target column last.
Every problem is a one-line :class:`~edgeml.errors.DataError` (exit code 2).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from edgeml.bundle.manifest import DerivedInput
from edgeml.errors import DataError
from edgeml.train.recipe import DataSpec, DatetimeSpec
from edgeml.train.sources import RawData, read_source

__all__ = [
    "Dataset",
    "feature_schema",
    "infer_kind",
    "infer_task",
    "load_dataset",
    "normalize_features",
    "prepare",
]

MAX_CATEGORIES = 50  # "few distinct values": at most this many ...
CATEGORY_FRACTION = 0.05  # ... or fewer than this fraction of the rows
TEXT_MEAN_CHARS = 30  # free text: mean length above this ...
TEXT_MEAN_TOKENS = 5  # ... or at least this many words on average
MAX_CLASS_CODES = 20  # explore: an integer target with at most this many values is a class label


@dataclass(frozen=True, eq=False)
class Dataset:
    """A loaded, normalized dataset. ``frame`` = raw feature frame + target column (last)."""

    frame: pd.DataFrame
    target: str | None
    kinds: dict[str, str]  # feature -> numeric | categorical | text, in column order
    source: str
    sha256: str
    rows: int  # rows read from the source
    dropped_missing_target: int
    derived: tuple[DerivedInput, ...] = ()  # datetime columns and the features derived from them
    raw: pd.DataFrame | None = None  # the datetime columns' raw values, same index as frame

    @property
    def features(self) -> list[str]:
        return list(self.kinds)

    @property
    def X(self) -> pd.DataFrame:
        return self.frame[self.features]

    @property
    def y(self) -> pd.Series | None:
        return self.frame[self.target] if self.target else None


def _quote_list(names: Iterable[object], limit: int = 30) -> str:
    items = [str(n) for n in names]
    more = f", ... ({len(items) - limit} more)" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def _is_missing(series: pd.Series) -> pd.Series:
    """NaN/None, and ``""`` in string columns (the contract's encoding of a missing string)."""
    miss = series.isna()
    if not (pd.api.types.is_numeric_dtype(series) or pd.api.types.is_datetime64_any_dtype(series)):
        miss = miss | series.map(lambda v: isinstance(v, str) and v == "").astype(bool)
    return miss


def _to_str(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return ""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, float | np.floating) and float(value).is_integer():
        return str(int(value))
    if isinstance(value, bool | np.bool_):
        return str(bool(value))
    return str(value)


def _as_strings(series: pd.Series) -> pd.Series:
    values = [_to_str(v) for v in series.tolist()]
    return pd.Series(values, index=series.index, dtype=object, name=series.name)


def _numeric_or_none(series: pd.Series) -> pd.Series | None:
    """``series`` as float64 if it is numeric-like (every present value a number), else None."""
    if pd.api.types.is_bool_dtype(series):
        return series.astype("float64")
    if pd.api.types.is_numeric_dtype(series):
        return pd.to_numeric(series, errors="coerce").astype("float64")
    if pd.api.types.is_datetime64_any_dtype(series):
        out = (series - pd.Timestamp(0, tz=getattr(series.dt, "tz", None))).dt.total_seconds()
        return out.astype("float64")
    if pd.api.types.is_timedelta64_dtype(series):
        return series.dt.total_seconds().astype("float64")
    present = series[~_is_missing(series)]
    if present.empty or present.map(lambda v: isinstance(v, bool)).any():
        return None
    coerced = pd.to_numeric(present.map(_to_str), errors="coerce")
    if coerced.isna().any():
        return None
    out = pd.Series(np.nan, index=series.index, dtype="float64")
    out[present.index] = coerced.astype("float64")
    return out


def infer_kind(series: pd.Series) -> str:
    """numeric | categorical | text for an undeclared column (thresholds in the module constants)."""
    if _numeric_or_none(series) is not None:
        return "numeric"
    values = _as_strings(series[~_is_missing(series)])
    n = len(values)
    if n == 0:
        return "categorical"
    distinct = values.nunique()
    free_text = (
        values.str.len().mean() > TEXT_MEAN_CHARS
        or values.str.split().str.len().mean() >= TEXT_MEAN_TOKENS
    )
    few = distinct <= MAX_CATEGORIES or distinct < CATEGORY_FRACTION * n
    if free_text and distinct > 0.5 * n:
        return "text"
    if few:
        return "categorical"
    return "text" if free_text else "categorical"


def infer_task(series: pd.Series, label_names: list[str] | None = None) -> str:
    """classification | regression, for exploring a target whose task nobody declared."""
    if label_names:
        return "classification"
    numeric = _numeric_or_none(series)
    if numeric is None:
        return "classification"
    present = numeric.dropna()
    if (present == present.round()).all() and present.nunique() <= MAX_CLASS_CODES:
        return "classification"
    return "regression"


def _numeric_column(
    series: pd.Series, name: str, source: str, what: str = "is declared numeric"
) -> pd.Series:
    numeric = _numeric_or_none(series)
    if numeric is not None:
        return numeric
    miss = _is_missing(series)
    coerced = pd.to_numeric(series.where(~miss).map(_to_str), errors="coerce")
    bad = series[coerced.isna() & ~miss]
    row, value = bad.index[0], bad.iloc[0]
    raise DataError(
        f"{source}: column '{name}' {what} but has non-numeric values, "
        f"e.g. {_to_str(value)!r} in row {int(row) + 1} (rows count from 1 after the header)"
    )


def normalize_features(frame: pd.DataFrame, kinds: dict[str, str], source: str = "data") -> pd.DataFrame:
    """The raw feature frame for ``kinds`` (column order of ``kinds``), as model.json ``features`` lists them."""
    missing = [c for c in kinds if c not in frame.columns]
    if missing:
        raise DataError(
            f"{source}: missing feature column(s) {_quote_list(missing)}; "
            f"columns: {_quote_list(frame.columns)}"
        )
    out = {}
    for name, kind in kinds.items():
        series = frame[name]
        out[name] = _numeric_column(series, name, source) if kind == "numeric" else _as_strings(series)
    return pd.DataFrame(out, index=frame.index)


def _target_column(series: pd.Series, task: str, name: str, source: str, names: list[str] | None) -> pd.Series:
    if task == "regression":
        return _numeric_column(series, name, source, "is the regression target")
    if task == "anomaly":
        numeric = _numeric_or_none(series)
        if numeric is None or not numeric.isin([0.0, 1.0]).all():
            seen = _quote_list(sorted({_to_str(v) for v in series.tolist()}), 10)
            raise DataError(
                f"{source}: anomaly target '{name}' must hold 0 (normal) or 1 (anomaly); found: {seen}"
            )
        return numeric.astype("int64")
    if names is not None:  # integer codes with class names (scikit-learn bundled data)
        return pd.Series([names[int(v)] for v in series], index=series.index, dtype=object, name=name)
    labels = _as_strings(series)
    distinct = labels.unique()
    if len(distinct) < 2:
        raise DataError(
            f"{source}: target '{name}' has a single class ({distinct[0]!r}); "
            "classification needs at least two"
        )
    return labels


def prepare(raw: RawData, spec: DataSpec, *, task: str, strict: bool = True,
            datetime: DatetimeSpec | None = None) -> Dataset:
    """Clean a raw frame per ``spec`` for ``task``. ``strict=False`` tolerates all-missing columns.

    ``datetime``: the recipe's ``features.datetime`` (what datetime columns become)."""
    frame, source = raw.frame, raw.source
    frame = frame.set_axis([str(c) for c in frame.columns], axis=1)
    dupes = frame.columns[frame.columns.duplicated()].unique().tolist()
    if dupes:
        raise DataError(f"{source}: duplicate column name(s): {_quote_list(dupes)}")
    rows = len(frame)
    if rows == 0:
        raise DataError(f"{source}: no rows (the data is empty)")
    frame = frame.reset_index(drop=True)
    columns = list(frame.columns)
    unknown = [c for c in spec.drop if c not in columns]
    if unknown:
        raise DataError(
            f"{source}: data.drop names column(s) not in the data: {_quote_list(unknown)}; "
            f"columns: {_quote_list(columns)}"
        )
    target = spec.target
    if target is not None and target not in columns:
        raise DataError(
            f"{source}: target column '{target}' not found; columns: {_quote_list(columns)}"
        )
    if target is not None and target in spec.drop:
        raise DataError(f"{source}: the target column '{target}' is also listed in data.drop")
    undeclared = [c for c in spec.columns if c not in columns]
    if undeclared:
        raise DataError(
            f"{source}: data.columns names column(s) not in the data: {_quote_list(undeclared)}; "
            f"columns: {_quote_list(columns)}"
        )
    frame = frame.drop(columns=list(spec.drop))
    dropped = 0
    if target is not None:
        missing = _is_missing(frame[target])
        dropped = int(missing.sum())
        frame = frame[~missing]
        if frame.empty:
            raise DataError(
                f"{source}: no rows left after dropping {dropped} row(s) with a missing target '{target}'"
            )
    kinds: dict[str, str] = {}
    for name in frame.columns:
        if name == target:
            continue
        if strict and _is_missing(frame[name]).all():
            raise DataError(
                f"{source}: column '{name}' has no values (all missing); "
                f"remove it with `drop: [{name}]` under data: in the recipe"
            )
        kinds[name] = spec.columns.get(name) or infer_kind(frame[name])  # type: ignore[assignment]
    if not kinds:
        raise DataError(f"{source}: no feature columns (only the target '{target}')")
    from edgeml.train.datetimes import expand_datetimes

    expanded = expand_datetimes(frame, kinds, datetime, source)
    kinds = expanded.kinds
    out = normalize_features(expanded.frame, kinds, source)
    if target is not None:
        names = raw.label_names.get(target) if task == "classification" else None
        out[target] = _target_column(frame[target], task, target, source, names)
    out = out.reset_index(drop=True)
    times = expanded.raw.reset_index(drop=True)
    return Dataset(out, target, kinds, source, raw.sha256, rows, dropped, expanded.derived, times)


def load_dataset(
    spec: DataSpec, base_dir: Path, *, task: str, override: Path | None = None,
    datetime: DatetimeSpec | None = None,
) -> Dataset:
    """Read, check and normalize the data of a recipe (``override`` replaces the source file)."""
    raw = read_source(spec, Path(base_dir), override)
    return prepare(raw, spec, task=task, datetime=datetime)


def _bound(value: Any) -> float | None:
    v = float(value)
    return v if math.isfinite(v) else None


def feature_schema(frame: pd.DataFrame, kinds: dict[str, str]) -> list[dict[str, Any]]:
    """model.json ``features`` entries (same fields as the bundle's InputSpec), in ``kinds`` order.

    ``nullable`` is always true: the pipeline imputes every column, so a device may send
    NaN (numeric) or ``""`` (strings) for any feature.
    """
    out: list[dict[str, Any]] = []
    for name, kind in kinds.items():
        series = frame[name]
        entry: dict[str, Any] = {
            "name": name,
            "kind": kind,
            "dtype": "float32" if kind == "numeric" else "string",
            "nullable": True,
            "categories": None,
            "min": None,
            "max": None,
        }
        if kind == "numeric":
            values = pd.to_numeric(series, errors="coerce").dropna()
            if not values.empty:
                entry["min"], entry["max"] = _bound(values.min()), _bound(values.max())
        elif kind == "categorical":
            entry["categories"] = sorted({v for v in _as_strings(series).tolist() if v != ""})
        out.append(entry)
    return out
