"""Derived inputs: calendar and cyclical features computed from a raw timestamp.

ONNX cannot parse dates, so a ``datetime`` column is turned into numeric features *before*
the graph, by this one function on both sides: the trainer builds its training columns with
it (:mod:`edgeml.train.data`) and the runtime builds its feeds with it
(:func:`edgeml.bundle.feeds.to_feeds`). The manifest declares what to derive
(:class:`~edgeml.bundle.manifest.DerivedInput`). Device-safe: standard library and numpy.

Values: an ISO 8601 string (date or date-time, with or without an offset, ``Z`` for UTC,
what ``datetime.fromisoformat`` reads) or Unix seconds (int or float). ``None``, ``""`` and
NaN are missing: every derived feature is NaN (the pipeline's imputer fills it). Naive
values are wall-clock time in the declared ``timezone``; values with an offset and Unix
seconds are instants, converted to that timezone. ``UTC`` (the default) needs no time zone
database; any other IANA name needs one on the device (``/usr/share/zoneinfo`` or tzdata).

Features (``DATETIME_FEATURES``), as pandas' ``.dt`` accessors define them: ``year``,
``month`` (1-12), ``day`` (of month), ``weekday`` (0 = Monday), ``dayofyear`` (1-366),
``hour``, ``minute``, ``weekend`` (1 on Saturday and Sunday), and cyclical encodings on
the unit circle: ``dayofyear_sin/cos`` (angle ``2 pi (dayofyear - 1) / days in that year``,
so 31 December sits next to 1 January), ``weekday_sin/cos`` (``2 pi weekday / 7``) and
``hour_sin/cos`` (``2 pi (hour + minute / 60 + second / 3600) / 24``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone, tzinfo
from typing import Any

import numpy as np

from edgeml.bundle.manifest import DATETIME_FEATURES, DerivedInput, InputSpec
from edgeml.errors import BundleError, InputError

__all__ = [
    "DATETIME_FEATURES",
    "DEFAULT_DATE_FEATURES",
    "DEFAULT_TIME_FEATURES",
    "FEATURES",
    "BadTimestamp",
    "derive_columns",
    "derive_datetime",
    "derive_rows",
    "has_time_of_day",
    "parse_timestamp",
    "request_inputs",
    "resolve_timezone",
]

DEFAULT_DATE_FEATURES = ("month", "weekday", "dayofyear_sin", "dayofyear_cos")
DEFAULT_TIME_FEATURES = (*DEFAULT_DATE_FEATURES, "hour_sin", "hour_cos")
_TAU = 2.0 * math.pi
_NUMBER = (int, float, np.integer, np.floating)


class BadTimestamp(ValueError):
    """A value that is neither an ISO 8601 timestamp nor Unix seconds (``row``: its index)."""

    def __init__(self, row: int, value: Any) -> None:
        super().__init__(f"row {row}: {value!r:.60}")
        self.row = row
        self.value = value


def resolve_timezone(name: str) -> tzinfo:
    """``UTC`` without any database, else ``zoneinfo.ZoneInfo(name)``; BundleError if missing."""
    if name in ("UTC", "Etc/UTC", "Z"):
        return timezone.utc
    try:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError
    except ImportError as exc:  # pragma: no cover - Python >= 3.9 has zoneinfo
        raise BundleError(f"timezone {name!r}: zoneinfo is not available") from exc
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise BundleError(
            f"timezone {name!r} is not available here: not an IANA time zone name, or no time "
            "zone database (install tzdata, or the system's /usr/share/zoneinfo)"
        ) from exc


def _is_missing(v: Any) -> bool:
    return v is None or (isinstance(v, str) and v == "") or (
        isinstance(v, (float, np.floating)) and math.isnan(v))


def parse_timestamp(v: Any, tz: tzinfo, row: int = 0) -> datetime | None:
    """``v`` as an aware datetime in ``tz``; None if missing; BadTimestamp if unreadable."""
    if _is_missing(v):
        return None
    if isinstance(v, bytes):
        v = v.decode("utf-8", "replace")
    try:
        if isinstance(v, str):
            dt = datetime.fromisoformat(v.strip())
            if dt.tzinfo is None:
                return dt.replace(tzinfo=tz)
            return dt.astimezone(tz)
        if isinstance(v, _NUMBER) and not isinstance(v, (bool, np.bool_)):
            return datetime.fromtimestamp(float(v), tz=timezone.utc).astimezone(tz)
    except (ValueError, OverflowError, OSError) as exc:
        raise BadTimestamp(row, v) from exc
    raise BadTimestamp(row, v)


def has_time_of_day(values: Sequence[Any]) -> bool:
    """True if any present value carries a time (Unix seconds, or a string with a time part)."""
    for v in values:
        if _is_missing(v):
            continue
        if isinstance(v, str):
            if len(v.strip()) > 10:  # longer than YYYY-MM-DD: a time part
                return True
        elif isinstance(v, _NUMBER):
            return True
    return False


def _leap(year: int) -> bool:
    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)


def _doy_angle(dt: datetime) -> float:
    return _TAU * (dt.timetuple().tm_yday - 1) / (366.0 if _leap(dt.year) else 365.0)


def _weekday_angle(dt: datetime) -> float:
    return _TAU * dt.weekday() / 7.0


def _hour_angle(dt: datetime) -> float:
    return _TAU * (dt.hour + dt.minute / 60.0 + dt.second / 3600.0) / 24.0


# One function per feature of DATETIME_FEATURES (tests check the two agree).
FEATURES: dict[str, Callable[[datetime], float]] = {
    "year": lambda dt: float(dt.year),
    "month": lambda dt: float(dt.month),
    "day": lambda dt: float(dt.day),
    "weekday": lambda dt: float(dt.weekday()),
    "dayofyear": lambda dt: float(dt.timetuple().tm_yday),
    "hour": lambda dt: float(dt.hour),
    "minute": lambda dt: float(dt.minute),
    "weekend": lambda dt: 1.0 if dt.weekday() >= 5 else 0.0,
    "dayofyear_sin": lambda dt: math.sin(_doy_angle(dt)),
    "dayofyear_cos": lambda dt: math.cos(_doy_angle(dt)),
    "weekday_sin": lambda dt: math.sin(_weekday_angle(dt)),
    "weekday_cos": lambda dt: math.cos(_weekday_angle(dt)),
    "hour_sin": lambda dt: math.sin(_hour_angle(dt)),
    "hour_cos": lambda dt: math.cos(_hour_angle(dt)),
}


def derive_datetime(values: Sequence[Any], spec: DerivedInput) -> dict[str, np.ndarray]:
    """``spec``'s derived features of ``values`` (float64, NaN where missing), by feature name.

    Raises BadTimestamp naming the first unreadable row.
    """
    tz = resolve_timezone(spec.timezone)
    unknown = [f for f in spec.features if f not in FEATURES]
    if unknown:
        raise BundleError(f"unknown datetime feature {unknown[0]!r}; known: {', '.join(FEATURES)}")
    funcs = [(name, FEATURES[f]) for name, f in zip(spec.names, spec.features, strict=True)]
    out = {name: np.full(len(values), np.nan, dtype=np.float64) for name, _ in funcs}
    for i, v in enumerate(values):
        dt = parse_timestamp(v, tz, i)
        if dt is None:
            continue
        for name, fn in funcs:
            out[name][i] = fn(dt)
    return out


def derive_columns(derived: Sequence[DerivedInput], columns: Mapping[str, Any]) -> Mapping[str, Any]:
    """``columns`` (feature -> values, as a device sends them) with each derived input's raw
    column replaced by its derived features. InputError names the feature and the row.

    Columns that already hold every derived feature and not the raw one (a simulator sampling
    the reference profile) pass as they are."""
    if not derived or not isinstance(columns, Mapping):
        return columns
    out = dict(columns)
    for spec in derived:
        if spec.source not in out and all(name in out for name in spec.names):
            continue
        if spec.source not in out:
            raise InputError(f"missing feature {spec.source!r} (a {spec.kind} value)")
        values = out.pop(spec.source)
        if isinstance(values, (str, bytes)) or not hasattr(values, "__len__"):
            raise InputError(f"feature {spec.source!r}: expected a list of values")
        if isinstance(values, np.ndarray):
            values = values.reshape(-1).tolist()
        try:
            got = derive_datetime(values, spec)
        except BadTimestamp as exc:
            raise InputError(
                f"feature {spec.source!r} row {exc.row}: expected an ISO 8601 timestamp or Unix "
                f"seconds, got {exc.value!r:.60}"
            ) from exc
        for name, arr in got.items():
            if name in out:
                raise InputError(f"unexpected feature {name!r}: it is derived from {spec.source!r}")
            out[name] = arr
    return out


def derive_rows(derived: Sequence[DerivedInput], rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Rows with each raw timestamp replaced by its derived features (floats, NaN if missing)."""
    rows = list(rows)
    if not derived:
        return [dict(r) for r in rows]
    out = [{k: v for k, v in r.items() if k not in {d.source for d in derived}} for r in rows]
    for spec in derived:
        got = derive_columns([spec], {spec.source: [r.get(spec.source) for r in rows]})
        for name in spec.names:
            for i, value in enumerate(got[name]):
                out[i][name] = float(value)
    return out


def request_inputs(inputs: Sequence[InputSpec], derived: Sequence[DerivedInput]) -> list[InputSpec]:
    """What a request carries: ``inputs`` with each derived input's features replaced, at the
    place of its first feature, by its raw source (a string: OIP ``BYTES``)."""
    if not derived:
        return list(inputs)
    first = {d.names[0]: d for d in derived}
    gone = {name for d in derived for name in d.names}
    out: list[InputSpec] = []
    for spec in inputs:
        if spec.name in first:
            out.append(InputSpec(name=first[spec.name].source, kind="datetime", dtype="string"))
        elif spec.name not in gone:
            out.append(spec)
    return out
