"""Per-feature running statistics on the reference profile's bins (device-safe: numpy).

Each accumulator takes whole batches (1-D arrays) and bins them with one vectorized
``np.searchsorted`` on the reference ``bin_edges`` from the manifest, so that live
counts line up bin for bin with the training profile.

- Quantile profiles (``"binning": "quantile"``, see :mod:`edgeml.train.reference`): the
  edges are inner edges and the outer bins are open, ``(-inf, e0), [e0, e1), ...,
  [e_last, inf)``: every finite value is binned. Values below the training ``min`` or above
  its ``max`` are also counted as out of range (below / above).
- Older profiles (equal-width edges over min..max): values outside
  ``[bin_edges[0], bin_edges[-1]]`` are out of range and not binned.

Categorical features count values (bounded: past ``max_categories`` distinct values the
rest go to ``other``), values not seen in training (``unseen``) and, in the reference's
order, the counts of the reference's categories (``known``); text features bin their
lengths on ``length_bin_edges``.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import numpy as np

from edgeml.bundle.manifest import Manifest

__all__ = [
    "OTHER",
    "CategoricalStats",
    "FeatureStats",
    "NumericStats",
    "TextStats",
    "make_feature_stats",
    "reference_categories",
]

OTHER = "__other__"  # the reference profile's fold of rare categories (edgeml.train.reference)


def _edges(raw: Any) -> np.ndarray | None:
    """Usable bin edges (at least two finite, non-decreasing floats) or None."""
    if not isinstance(raw, (list, tuple)) or len(raw) < 2:
        return None
    try:
        edges = np.asarray(raw, dtype=np.float64)
    except (TypeError, ValueError):
        return None
    if edges.ndim != 1 or not np.isfinite(edges).all() or (np.diff(edges) < 0).any():
        return None
    return edges


def _inner_edges(raw: Any) -> np.ndarray | None:
    """Inner edges of an open-bin profile (any number, finite, non-decreasing) or None."""
    if not isinstance(raw, (list, tuple)):
        return None
    try:
        edges = np.asarray(raw, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        return None
    if not np.isfinite(edges).all() or (np.diff(edges) < 0).any():
        return None
    return edges


def _bound(value: Any, default: float) -> float:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else default


class _Binned:
    """Counts of values binned on fixed edges, with below/above-range counts.

    ``open_bins``: ``edges`` are inner edges of open outer bins and ``lo``/``hi`` (the
    training range) only decide what is out of range.
    """

    def __init__(self, edges: Any, *, open_bins: bool = False, lo: Any = None,
                 hi: Any = None) -> None:
        self.open = open_bins
        if open_bins:
            self.edges = _inner_edges(edges)
            self.lo, self.hi = _bound(lo, -math.inf), _bound(hi, math.inf)
            nbins = 0 if self.edges is None else len(self.edges) + 1
        else:
            self.edges = _edges(edges)
            nbins = 0 if self.edges is None else len(self.edges) - 1
        self.counts = np.zeros(nbins, dtype=np.int64)
        self.below = 0
        self.above = 0

    def bin(self, v: np.ndarray) -> None:
        """Bin finite values ``v`` (float64, 1-D)."""
        edges = self.edges
        if edges is None or not v.size:
            return
        if self.open:
            nb = int((v < self.lo).sum())
            na = int((v > self.hi).sum())
            self.below += nb
            self.above += na
            idx = np.searchsorted(edges, v, side="right")
            self.counts += np.bincount(idx, minlength=len(self.counts))
            return
        lo, hi = edges[0], edges[-1]
        below = v < lo
        above = v > hi
        nb = int(below.sum())
        na = int(above.sum())
        self.below += nb
        self.above += na
        inside = v[~(below | above)] if nb or na else v
        idx = np.searchsorted(edges, inside, side="right") - 1
        np.minimum(idx, len(self.counts) - 1, out=idx)  # the top edge belongs to the last bin
        self.counts += np.bincount(idx, minlength=len(self.counts))

    @property
    def out_of_range(self) -> int:
        return self.below + self.above


class NumericStats(_Binned):
    """Count, missing, mean/std/min/max and reference-bin counts of a numeric stream."""

    kind = "numeric"

    def __init__(self, name: str, edges: Any = None, *, open_bins: bool = False, lo: Any = None,
                 hi: Any = None) -> None:
        super().__init__(edges, open_bins=open_bins, lo=lo, hi=hi)
        self.name = name
        self.count = 0
        self.missing = 0
        self.sum = 0.0
        self.sumsq = 0.0
        self.min = math.inf
        self.max = -math.inf

    def add(self, x: np.ndarray) -> None:
        v = np.asarray(x, dtype=np.float64).reshape(-1)
        self.count += v.size
        finite = np.isfinite(v)
        if not finite.all():
            self.missing += int(np.isnan(v).sum())
            v = v[finite]
        if not v.size:
            return
        self.sum += float(v.sum())
        self.sumsq += float(np.dot(v, v))
        self.min = min(self.min, float(v.min()))
        self.max = max(self.max, float(v.max()))
        self.bin(v)

    def mean(self) -> float | None:
        n = self.count - self.missing
        return self.sum / n if n else None

    def snapshot(self, kind: bool = True) -> dict[str, Any]:
        n = self.count - self.missing
        mean = self.sum / n if n else None
        std = math.sqrt(max(self.sumsq / n - mean * mean, 0.0)) if n and mean is not None else None
        out: dict[str, Any] = {"kind": self.kind} if kind else {}
        out.update({
            "count": self.count,
            "missing": self.missing,
            "mean": mean,
            "std": std,
            "min": self.min if n else None,
            "max": self.max if n else None,
        })
        if self.edges is not None:
            out.update({"counts": self.counts.tolist(), "below": self.below, "above": self.above,
                        "out_of_range": self.out_of_range})
        return out


class CategoricalStats:
    """Value counts (bounded), missing values and values unseen in training."""

    kind = "categorical"

    def __init__(self, name: str, categories: list[str] | None, max_categories: int = 64) -> None:
        self.name = name
        self.categories = frozenset(categories) if categories else None
        self.order = list(dict.fromkeys(categories or []))  # the reference's categories, in order
        self.max_categories = max_categories
        self.counts: dict[str, int] = {}
        self.other = 0
        self.count = 0
        self.missing = 0
        self.unseen = 0
        self._known: dict[str, int] = {}  # counts of reference categories (never bounded)

    def add(self, x: np.ndarray) -> None:
        values = x.reshape(-1).tolist()
        self.count += len(values)
        tally = Counter(values)
        self.missing += tally.pop("", 0)
        counts, cats, known = self.counts, self.categories, self._known
        for value, n in tally.items():
            if cats is not None and value not in cats:
                self.unseen += n
            else:
                known[value] = known.get(value, 0) + n
            if value in counts:
                counts[value] += n
            elif len(counts) < self.max_categories:
                counts[value] = n
            else:
                self.other += n

    @property
    def out_of_range(self) -> int:
        return self.unseen

    def snapshot(self) -> dict[str, Any]:
        return {"kind": self.kind, "count": self.count, "missing": self.missing,
                "unseen": self.unseen, "counts": dict(self.counts), "other": self.other,
                "known": [self._known.get(c, 0) for c in self.order]}


class TextStats(_Binned):
    """Text lengths binned on the reference ``length_bin_edges``; missing (empty) texts."""

    kind = "text"

    def __init__(self, name: str, edges: Any = None, *, open_bins: bool = False) -> None:
        super().__init__(edges, open_bins=open_bins)
        self.name = name
        self.count = 0
        self.missing = 0
        self.length_sum = 0

    def add(self, x: np.ndarray) -> None:
        values = x.reshape(-1).tolist()
        lengths = np.fromiter(map(len, values), dtype=np.float64, count=len(values))
        self.count += len(values)
        self.missing += int((lengths == 0).sum())
        self.length_sum += int(lengths.sum())
        self.bin(lengths)

    def snapshot(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "kind": self.kind, "count": self.count, "missing": self.missing,
            "mean_length": self.length_sum / self.count if self.count else None,
        }
        if self.edges is not None:
            out.update({"length_counts": self.counts.tolist(), "below": self.below,
                        "above": self.above, "out_of_range": self.out_of_range})
        return out


FeatureStats = NumericStats | CategoricalStats | TextStats


def reference_categories(spec: Any, ref: dict[str, Any]) -> list[str]:
    """The categories of a categorical input, in the order of the ``known`` counts.

    The manifest's ``categories`` when it lists them, else the reference frequencies' keys
    (without the ``__other__`` fold). The fleet monitor uses the same order.
    """
    cats = spec.categories or [k for k in (ref.get("frequencies") or {}) if k != OTHER]
    return [str(c) for c in dict.fromkeys(cats)]


def make_feature_stats(manifest: Manifest, max_categories: int = 64) -> dict[str, FeatureStats]:
    """One accumulator per manifest input, with the reference profile's edges."""
    profile = manifest.reference_profile.get("features") or {}
    out: dict[str, FeatureStats] = {}
    for spec in manifest.inputs:
        ref = profile.get(spec.name) or {}
        quantile = ref.get("binning") == "quantile"
        if spec.kind == "numeric":
            lo = ref.get("min") if ref.get("min") is not None else spec.min
            hi = ref.get("max") if ref.get("max") is not None else spec.max
            out[spec.name] = NumericStats(spec.name, ref.get("bin_edges"), open_bins=quantile,
                                          lo=lo, hi=hi)
        elif spec.kind == "text":
            out[spec.name] = TextStats(spec.name, ref.get("length_bin_edges"), open_bins=quantile)
        else:
            out[spec.name] = CategoricalStats(spec.name, reference_categories(spec, ref) or None,
                                              max_categories)
    return out
