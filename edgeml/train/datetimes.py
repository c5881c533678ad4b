"""``datetime`` columns on the host: expanded into derived numeric columns for training.

The values are derived by :func:`edgeml.bundle.derive.derive_datetime`, the function the
device runs on the raw timestamps it receives, so training columns and device feeds agree
by construction. A column ``timestamp`` becomes ``timestamp_month``, ``timestamp_hour_sin``,
... in its place; the raw values are kept (:class:`Expanded.raw`) for the holdout, where the
packager's parity gate and self-test feed them to the device path.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

from edgeml.bundle.derive import (
    DEFAULT_DATE_FEATURES,
    DEFAULT_TIME_FEATURES,
    BadTimestamp,
    derive_datetime,
    has_time_of_day,
    parse_timestamp,
    resolve_timezone,
)
from edgeml.bundle.manifest import DerivedInput
from edgeml.errors import DataError
from edgeml.train.recipe import DatetimeSpec

__all__ = ["Expanded", "derived_from_meta", "derived_to_meta", "epoch_seconds", "expand_datetimes",
           "raw_values"]


@dataclass(frozen=True, eq=False)
class Expanded:
    frame: pd.DataFrame  # the input frame with each datetime column replaced by derived columns
    kinds: dict[str, str]  # kinds with each datetime column replaced by its numeric features
    derived: tuple[DerivedInput, ...]
    raw: pd.DataFrame  # the datetime columns' raw values (str or number, None if missing)


def _plain(v: Any) -> Any:
    """A raw timestamp as a device sends it: str, int/float (Unix seconds) or None."""
    if v is None or v is pd.NA or v is pd.NaT:
        return None
    if isinstance(v, pd.Timestamp):  # parquet/sqlite timestamps: ISO 8601
        return v.isoformat()
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, float | np.floating):
        return None if math.isnan(float(v)) else float(v)
    return v


def raw_values(series: pd.Series) -> list[Any]:
    return [_plain(v) for v in series.tolist()]


def expand_datetimes(frame: pd.DataFrame, kinds: dict[str, str], options: DatetimeSpec | None,
                     source: str) -> Expanded:
    """Replace every ``datetime`` column of ``kinds`` by its derived features (float64, NaN
    where missing). DataError names the column and the row of an unreadable timestamp."""
    options = options or DatetimeSpec()
    dt_columns = [name for name, kind in kinds.items() if kind == "datetime"]
    if not dt_columns:
        return Expanded(frame, dict(kinds), (), pd.DataFrame(index=frame.index))
    out = frame.copy()
    new_kinds: dict[str, str] = {}
    derived: list[DerivedInput] = []
    raw: dict[str, list[Any]] = {}
    for name, kind in kinds.items():
        if kind != "datetime":
            new_kinds[name] = kind
            continue
        values = raw_values(frame[name])
        features = options.derive or (
            DEFAULT_TIME_FEATURES if has_time_of_day(values) else DEFAULT_DATE_FEATURES)
        spec = DerivedInput(source=name, features=list(features), timezone=options.timezone)
        try:
            got = derive_datetime(values, spec)
        except BadTimestamp as exc:
            row = int(frame.index[exc.row]) + 1
            raise DataError(
                f"{source}: column '{name}' is declared datetime but has a value that is not an "
                f"ISO 8601 timestamp or Unix seconds, e.g. {exc.value!r:.60} in row {row} "
                "(rows count from 1 after the header)"
            ) from exc
        taken = [n for n in spec.names if n in frame.columns]
        if taken:
            raise DataError(f"{source}: column '{taken[0]}' clashes with a feature derived from "
                            f"datetime column '{name}'; rename or drop it")
        at = list(out.columns).index(name)
        out = out.drop(columns=[name])
        for offset, (feature, arr) in enumerate(got.items()):
            out.insert(at + offset, feature, arr)
            new_kinds[feature] = "numeric"
        derived.append(spec)
        raw[name] = values
    return Expanded(out, new_kinds, tuple(derived), pd.DataFrame(raw, index=frame.index, dtype=object))


def epoch_seconds(values: list[Any], timezone: str = "UTC") -> pd.Series:
    """Each timestamp as Unix seconds (NaN if missing), e.g. to order a time-ordered split."""
    tz = resolve_timezone(timezone)
    out = []
    for i, v in enumerate(values):
        dt = parse_timestamp(v, tz, i)
        out.append(np.nan if dt is None else dt.timestamp())
    return pd.Series(out, dtype="float64")


def derived_to_meta(derived: tuple[DerivedInput, ...]) -> list[dict[str, Any]]:
    return [asdict(d) for d in derived]


def derived_from_meta(meta: dict[str, Any]) -> tuple[DerivedInput, ...]:
    """model.json's ``derived`` (absent: none) as manifest declarations."""
    return tuple(DerivedInput(**d) for d in meta.get("derived") or [])
