"""Custom scikit-learn transformers used by edgeml pipelines.

Kept deliberately few: each one needs its own ONNX converter
(``edgeml.convert`` registers it with skl2onnx).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, OneToOneFeatureMixin, TransformerMixin
from sklearn.utils.validation import check_is_fitted, validate_data

__all__ = ["OutlierClipper"]


class OutlierClipper(OneToOneFeatureMixin, TransformerMixin, BaseEstimator):
    """Clip each column to ``mean ± k·std`` learned in :meth:`fit`.

    Missing values (NaN) are ignored when learning and passed through unchanged.
    A constant column clips to its single value.

    Learned attributes (float64 arrays of length ``n_features_in_``):
    ``mean_``, ``scale_`` (the standard deviation), ``lower_`` and ``upper_``.
    The ONNX converter only needs ``lower_`` and ``upper_`` (a ``Clip``/``Max``+``Min`` pair).
    """

    def __init__(self, k: float = 3.0) -> None:
        self.k = k

    def fit(self, X: Any, y: Any = None) -> OutlierClipper:
        if not isinstance(self.k, (int, float)) or isinstance(self.k, bool) or not self.k > 0:
            raise ValueError(f"OutlierClipper: k must be a positive number, got {self.k!r}")
        arr = validate_data(self, X, dtype=np.float64, ensure_all_finite="allow-nan", reset=True)
        observed = ~np.isnan(arr)
        counts = observed.sum(axis=0)
        safe = np.where(observed, arr, 0.0)
        mean = np.divide(safe.sum(axis=0), counts, out=np.zeros(arr.shape[1]), where=counts > 0)
        sq = np.where(observed, (arr - mean) ** 2, 0.0)
        var = np.divide(sq.sum(axis=0), counts, out=np.zeros(arr.shape[1]), where=counts > 0)
        self.mean_ = mean.astype(np.float64)
        self.scale_ = np.sqrt(var).astype(np.float64)
        self.lower_ = (self.mean_ - float(self.k) * self.scale_).astype(np.float64)
        self.upper_ = (self.mean_ + float(self.k) * self.scale_).astype(np.float64)
        return self

    def transform(self, X: Any) -> np.ndarray:
        check_is_fitted(self, ("lower_", "upper_"))
        arr = validate_data(self, X, dtype=np.float64, ensure_all_finite="allow-nan", reset=False)
        out: np.ndarray = np.clip(arr, self.lower_, self.upper_)
        return out
