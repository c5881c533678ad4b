"""Holdout split and the cross-validation splitter, from a recipe's ``split`` section.

- ``split.time_column`` set: rows are ordered by that column and the *last* ``holdout``
  fraction (by time) is the holdout; cross-validation is a ``TimeSeriesSplit``.
- otherwise a shuffled split seeded with ``split.seed``, stratified on the target when
  ``split.stratify`` and the task is classification (or anomaly with a label column);
  cross-validation is ``StratifiedKFold``/``KFold`` with the same seed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn.model_selection import KFold, StratifiedKFold, TimeSeriesSplit, train_test_split

from edgeml.errors import DataError
from edgeml.train.recipe import SplitSpec

__all__ = ["Split", "cv_splitter", "holdout_split"]


@dataclass(frozen=True)
class Split:
    X_train: pd.DataFrame
    X_holdout: pd.DataFrame
    y_train: pd.Series | None
    y_holdout: pd.Series | None


def _stratified(spec: SplitSpec, task: str, y: pd.Series | None) -> bool:
    return spec.stratify and y is not None and task in ("classification", "anomaly")


def holdout_split(X: pd.DataFrame, y: pd.Series | None, spec: SplitSpec, *, task: str,
                  order: pd.Series | None = None) -> Split:
    """Split features ``X`` (and target ``y``) into training and holdout parts.

    ``order`` is the time column's values (needed when ``spec.time_column`` is set).
    """
    n = len(X)
    n_hold = int(np.ceil(n * spec.holdout))
    if n < 4 or n_hold < 1 or n - n_hold < 2:
        raise DataError(f"too few rows ({n}) to hold out {spec.holdout:g} of them")
    if spec.time_column:
        if order is None:
            raise DataError(f"split.time_column {spec.time_column!r} is not in the data")
        idx = np.argsort(np.asarray(order), kind="stable")
        train_idx, hold_idx = idx[: n - n_hold], idx[n - n_hold :]
        X_tr, X_ho = X.iloc[train_idx], X.iloc[hold_idx]
        y_tr = y.iloc[train_idx] if y is not None else None
        y_ho = y.iloc[hold_idx] if y is not None else None
        return Split(X_tr, X_ho, y_tr, y_ho)
    strat = y if _stratified(spec, task, y) else None
    if strat is not None:
        counts = strat.value_counts()
        rare = counts[counts < 2]
        if len(rare):
            raise DataError(
                f"cannot stratify: class(es) {', '.join(map(str, rare.index))} have fewer than "
                "2 rows (set split.stratify: false or add data)"
            )
    parts: list[Any] = [X] if y is None else [X, y]
    try:
        out = train_test_split(
            *parts, test_size=spec.holdout, random_state=spec.seed, shuffle=True, stratify=strat
        )
    except ValueError as exc:
        raise DataError(f"cannot split the data: {exc}") from exc
    if y is None:
        return Split(out[0], out[1], None, None)
    return Split(out[0], out[1], out[2], out[3])


def cv_splitter(spec: SplitSpec, *, task: str, y: pd.Series | None) -> Any:
    """The cross-validation splitter for the training part."""
    if spec.time_column:
        return TimeSeriesSplit(n_splits=spec.cv)
    if _stratified(spec, task, y):
        assert y is not None
        smallest = int(y.value_counts().min())
        if smallest < spec.cv:
            raise DataError(
                f"split.cv is {spec.cv} but the rarest class has only {smallest} training rows; "
                "lower split.cv or add data"
            )
        return StratifiedKFold(n_splits=spec.cv, shuffle=True, random_state=spec.seed)
    return KFold(n_splits=spec.cv, shuffle=True, random_state=spec.seed)
