"""Per-feature running statistics on the reference profile's bins (device-safe: numpy).

Each accumulator takes whole batches (1-D arrays) and bins them with one vectorized
``np.searchsorted`` on the reference ``bin_edges`` from the manifest, so that live
counts line up bin for bin with the training profile. Values outside
``[bin_edges[0], bin_edges[-1]]`` are counted as out of range (below / above), never
binned. Categorical features count values (bounded: past ``max_categories`` distinct
values the rest go to ``other``) and values not seen in training; text features bin
their lengths on ``length_bin_edges``.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import numpy as np

from edgeml.bundle.manifest import Manifest

__all__ = ["CategoricalStats", "FeatureStats", "NumericStats", "TextStats", "make_feature_stats"]


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


class _Binned:
    """Counts of values binned on fixed edges, with below/above-range counts."""

    def __init__(self, edges: Any) -> None:
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

    def __init__(self, name: str, edges: Any = None) -> None:
        super().__init__(edges)
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
        self.max_categories = max_categories
        self.counts: dict[str, int] = {}
        self.other = 0
        self.count = 0
        self.missing = 0
        self.unseen = 0

    def add(self, x: np.ndarray) -> None:
        values = x.reshape(-1).tolist()
        self.count += len(values)
        tally = Counter(values)
        self.missing += tally.pop("", 0)
        counts, cats = self.counts, self.categories
        for value, n in tally.items():
            if cats is not None and value not in cats:
                self.unseen += n
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
                "unseen": self.unseen, "counts": dict(self.counts), "other": self.other}


class TextStats(_Binned):
    """Text lengths binned on the reference ``length_bin_edges``; missing (empty) texts."""

    kind = "text"

    def __init__(self, name: str, edges: Any = None) -> None:
        super().__init__(edges)
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


def make_feature_stats(manifest: Manifest, max_categories: int = 64) -> dict[str, FeatureStats]:
    """One accumulator per manifest input, with the reference profile's edges."""
    profile = manifest.reference_profile.get("features") or {}
    out: dict[str, FeatureStats] = {}
    for spec in manifest.inputs:
        ref = profile.get(spec.name) or {}
        if spec.kind == "numeric":
            out[spec.name] = NumericStats(spec.name, ref.get("bin_edges"))
        elif spec.kind == "text":
            out[spec.name] = TextStats(spec.name, ref.get("length_bin_edges"))
        else:
            known = spec.categories or list((ref.get("frequencies") or {}).keys()) or None
            out[spec.name] = CategoricalStats(spec.name, known, max_categories)
    return out
