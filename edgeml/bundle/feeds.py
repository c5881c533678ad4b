"""Turning raw feature values into onnxruntime feeds, validated against the input schema.

Device-safe: standard library and numpy only. Each raw feature is one ONNX input of
shape ``[rows, 1]``: float32 for numeric features (``None`` becomes NaN where the
schema allows it), strings for categorical and text features (``None`` becomes ``""``).
Every error is an :class:`~edgeml.errors.InputError` that names the feature and row.
Derived inputs (a raw timestamp, see :mod:`edgeml.bundle.derive`) are expanded first.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from edgeml.bundle.derive import derive_columns
from edgeml.bundle.manifest import DerivedInput, InputSpec
from edgeml.errors import InputError

__all__ = ["rows_to_columns", "to_feeds"]

_NUMBER_TYPES = (int, float, np.integer, np.floating)


def rows_to_columns(rows: Sequence[Any]) -> dict[str, list[Any]]:
    """``[{"a": 1, "b": "x"}, ...]`` -> ``{"a": [1, ...], "b": ["x", ...]}``.

    Every row must be an object with the same keys as the first one.
    """
    if not isinstance(rows, Sequence) or isinstance(rows, (str, bytes)):
        raise InputError("instances must be a list of objects")
    if not rows:
        raise InputError("empty batch: send at least one row")
    first = rows[0]
    if not isinstance(first, Mapping):
        raise InputError(f"row 0: expected an object of feature values, got {type(first).__name__}")
    keys = list(first.keys())
    columns: dict[str, list[Any]] = {k: [] for k in keys}
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise InputError(f"row {i}: expected an object of feature values, got {type(row).__name__}")
        if len(row) != len(keys) or any(k not in columns for k in row):
            missing = sorted(set(keys) - set(row))
            extra = sorted(set(row) - set(keys))
            what = f"missing {missing[0]!r}" if missing else f"unexpected {extra[0]!r}"
            raise InputError(f"row {i}: has different features from row 0 ({what})")
        for k in keys:
            columns[k].append(row[k])
    return columns


def _numeric(spec: InputSpec, values: Any, n: int) -> np.ndarray:
    if isinstance(values, np.ndarray) and values.dtype.kind in "fiu":
        arr = values.astype(np.float32, copy=False).reshape(n, 1)
    else:
        out = np.empty(n, dtype=np.float32)
        for i, v in enumerate(values):
            if v is None:
                out[i] = np.nan
            elif isinstance(v, _NUMBER_TYPES) and not isinstance(v, (bool, np.bool_)):
                out[i] = v
            else:
                raise InputError(
                    f"feature {spec.name!r} row {i}: expected a number, got {type(v).__name__} {v!r:.40}"
                )
        arr = out.reshape(n, 1)
    if not spec.nullable and np.isnan(arr).any():
        row = int(np.argmax(np.isnan(arr[:, 0])))
        raise InputError(f"feature {spec.name!r} row {row}: missing value (NaN/null) is not allowed")
    return arr


def _string(spec: InputSpec, values: Any, n: int) -> np.ndarray:
    out = np.empty((n, 1), dtype=object)
    for i, v in enumerate(values):
        if v is None:
            v = ""
        elif not isinstance(v, str):
            if isinstance(v, float) and math.isnan(v):
                v = ""
            else:
                raise InputError(
                    f"feature {spec.name!r} row {i}: expected a string, got {type(v).__name__} {v!r:.40}"
                )
        if v == "" and not spec.nullable:
            raise InputError(f"feature {spec.name!r} row {i}: missing value is not allowed")
        out[i, 0] = v
    return out


def to_feeds(inputs: Sequence[InputSpec], columns: Mapping[str, Any],
             derived: Sequence[DerivedInput] = ()) -> dict[str, np.ndarray]:
    """Validate ``columns`` (feature -> values) against ``inputs`` and build the ONNX feeds.

    ``derived`` (the manifest's): raw columns to expand into numeric inputs first."""
    if not isinstance(columns, Mapping):
        raise InputError("expected an object mapping feature names to values")
    columns = derive_columns(derived, columns)
    expected = [spec.name for spec in inputs]
    unknown = [k for k in columns if k not in set(expected)]
    if unknown:
        raise InputError(f"unknown feature {unknown[0]!r} (expected: {', '.join(expected)})")
    missing = [k for k in expected if k not in columns]
    if missing:
        raise InputError(f"missing feature {missing[0]!r} (expected: {', '.join(expected)})")
    n = -1
    feeds: dict[str, np.ndarray] = {}
    for spec in inputs:
        values = columns[spec.name]
        if isinstance(values, (str, bytes)) or not hasattr(values, "__len__"):
            raise InputError(f"feature {spec.name!r}: expected a list of values")
        if n < 0:
            n = len(values)
            if n == 0:
                raise InputError("empty batch: send at least one row")
        elif len(values) != n:
            raise InputError(
                f"feature {spec.name!r}: has {len(values)} values, expected {n} like the others"
            )
        if isinstance(values, np.ndarray) and values.ndim > 1:
            values = values.reshape(-1)
        if spec.dtype == "string":
            feeds[spec.name] = _string(spec, values, n)
        else:
            feeds[spec.name] = _numeric(spec, values, n)
            if spec.dtype != "float32":
                feeds[spec.name] = feeds[spec.name].astype(spec.dtype)
    return feeds
