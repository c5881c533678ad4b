"""One metrics window as a vector of counts, and the reference it is compared with.

The drift evaluator sums thousands of windows per query, so each ``edgeml.metrics/2``
window is packed once, at ingest, into a flat int32 vector (:func:`pack_window`, stored
in ``metrics_windows.bins``), laid out per input in the model's input order::

    numeric, text   [count, missing, out_of_range, *bin counts]
    categorical     [count, missing, unseen, *known counts (reference order), unseen]
    prediction      classification [count, *by_class, conf_count, conf_sum_milli, *confidence]
                    regression     [count, missing, out_of_range, *bin counts]
                    anomaly        [count, anomalies, *score bin counts]

(the unseen count appears twice for a categorical input: as a rate and as the extra bin
that chi-square and JS compare with a zero reference share). :class:`Reference` is the
host side of the same layout, built from a device's ``$info.reference``: segment offsets
and widths, and the reference proportions bin for bin. Summing vectors keeps every
statistic exact: counts add up. Host side (numpy).
"""

from __future__ import annotations

import math
import sys
from array import array
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgeml.runtime.stats import CONFIDENCE_BINS

__all__ = ["DTYPE", "HEAD", "MILLI", "Reference", "Segment", "pack_window"]

HEAD = 3  # count, missing, out_of_range/unseen
MILLI = 1000  # the confidence sum is packed in thousandths
DTYPE = "<i4"  # counts of one window; sums are taken in float64


@dataclass(frozen=True)
class Segment:
    """One input (or the prediction) in the packed vector."""

    name: str
    kind: str  # numeric | categorical | text | prediction
    offset: int  # first bin (after the head)
    nbins: int
    ref: np.ndarray  # reference proportions per bin
    missing_rate: float = 0.0

    @property
    def start(self) -> int:
        return self.offset - HEAD


def _ints(values: Any) -> list[int]:
    if not isinstance(values, list):
        return []
    return [int(v) if isinstance(v, (int, float)) and math.isfinite(v) else 0 for v in values]


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _num(value: Any) -> int:
    return int(value) if isinstance(value, (int, float)) and math.isfinite(value) else 0


def _feature_part(snap: Any) -> list[int]:
    if not isinstance(snap, dict):
        return [0, 0, 0]
    kind = snap.get("kind")
    head = [_num(snap.get("count")), _num(snap.get("missing"))]
    if kind == "categorical":
        known = _ints(snap.get("known"))
        unseen = _num(snap.get("unseen"))
        return [*head, unseen, *known, unseen]
    counts = _ints(snap.get("length_counts") if kind == "text" else snap.get("counts"))
    return [*head, _num(snap.get("out_of_range")), *counts]


def _prediction_part(pred: dict[str, Any], task: str) -> list[int]:
    if task == "classification":
        conf = _dict(pred.get("confidence"))
        n = _num(conf.get("count"))
        mean = conf.get("mean")
        total = float(mean) * n if isinstance(mean, (int, float)) and math.isfinite(mean) else 0.0
        counts = _ints(conf.get("counts")) or [0] * CONFIDENCE_BINS
        return [_num(pred.get("count")), *_ints(pred.get("by_class")), n, round(total * MILLI),
                *counts]
    if task == "anomaly":
        scores = _dict(pred.get("scores"))
        return [_num(pred.get("count")), _num(pred.get("anomalies")), *_ints(scores.get("counts"))]
    if task != "regression":
        return []
    return [_num(pred.get("count")), _num(pred.get("missing")), _num(pred.get("out_of_range")),
            *_ints(pred.get("counts"))]


# array("i") is the packed layout on little-endian machines with a 4-byte C int
_NATIVE = sys.byteorder == "little" and array("i").itemsize == 4


def _fast_parts(payload: dict[str, Any], names: list[str] | None,
                task: str | None) -> list[Any] | None:
    """The vector as a flat list of the payload's own values, or None if anything is odd.

    No conversion: :func:`pack_window` gives the list to ``array("i")``, which refuses a
    float, a None or a value out of int32 (then the checked path below handles them).
    """
    features = payload.get("features")
    pred = payload.get("predictions")
    if type(features) is not dict or type(pred) is not dict:
        return None
    parts: list[Any] = []
    for name in names if names is not None else features:
        snap = features.get(name)
        if type(snap) is not dict:
            return None
        kind = snap.get("kind")
        if kind == "categorical":
            known = snap.get("known")
            if type(known) is not list:
                return None
            unseen = snap.get("unseen")
            parts.append(snap.get("count"))
            parts.append(snap.get("missing"))
            parts.append(unseen)
            parts += known
            parts.append(unseen)
        else:
            counts = snap.get("length_counts" if kind == "text" else "counts")
            if type(counts) is not list:
                return None
            parts.append(snap.get("count"))
            parts.append(snap.get("missing"))
            parts.append(snap.get("out_of_range"))
            parts += counts
    task = task or pred.get("kind")
    if task == "classification":
        conf = pred.get("confidence")
        by_class = pred.get("by_class")
        if type(conf) is not dict or type(by_class) is not list:
            return None
        n, mean, counts = conf.get("count"), conf.get("mean"), conf.get("counts")
        if (type(n) is not int or not isinstance(mean, (float, int)) or type(mean) is bool
                or type(counts) is not list or not counts or not math.isfinite(mean)):
            return None
        parts.append(pred.get("count"))
        parts += by_class
        parts.append(n)
        parts.append(round(float(mean) * n * MILLI))
        parts += counts
    elif task == "regression":
        counts = pred.get("counts")
        if type(counts) is not list:
            return None
        parts += (pred.get("count"), pred.get("missing"), pred.get("out_of_range"))
        parts += counts
    elif task == "anomaly":
        scores = pred.get("scores")
        counts = scores.get("counts") if type(scores) is dict else None
        if type(counts) is not list:
            return None
        parts += (pred.get("count"), pred.get("anomalies"))
        parts += counts
    else:
        return None
    return parts


def pack_window(payload: dict[str, Any], names: list[str] | None = None,
                task: str | None = None) -> bytes:
    """The window's counts as int32 little-endian bytes (see the module docstring).

    ``names``: the model's inputs in order (default: the payload's own key order, which
    is the device's; a JSONB column does not keep it). ``task``: default from the payload.
    A well-formed window (integer counts within int32) takes one pass and one
    ``array("i")``; anything else goes through the per-value conversions and clipping.
    """
    if _NATIVE:
        try:
            fast = _fast_parts(payload, names, task)
            if fast is not None:
                return array("i", fast).tobytes()
        except (TypeError, OverflowError, ValueError):
            pass
    features = _dict(payload.get("features"))
    pred = _dict(payload.get("predictions"))
    task = task or str(pred.get("kind") or "")
    parts: list[int] = []
    for name in names if names is not None else list(features):
        parts += _feature_part(features.get(name))
    parts += _prediction_part(pred, task)
    clipped = np.clip(np.asarray(parts, dtype=np.int64), -(2**31), 2**31 - 1)
    return clipped.astype(DTYPE).tobytes()


def _props(counts: Any, width: int) -> np.ndarray:
    c = np.asarray(_ints(counts), dtype=np.float64)
    if c.size != width or c.sum() <= 0:
        return np.full(width, 1.0 / width) if width else np.zeros(0)
    return c / c.sum()


def _bins_of(ref: dict[str, Any], edges_key: str, counts_key: str) -> tuple[int, np.ndarray]:
    edges = ref.get(edges_key)
    if not isinstance(edges, list) or (ref.get("binning") != "quantile" and len(edges) < 2):
        return 0, np.zeros(0)
    width = len(edges) + 1 if ref.get("binning") == "quantile" else len(edges) - 1
    return width, _props(ref.get(counts_key), width)


@dataclass
class Reference:
    """The reference side of one model version, aligned with :func:`pack_window`'s layout."""

    name: str
    version: int
    task: str
    inputs: list[str]
    segments: list[Segment]
    prediction: Segment | None
    width: int
    classes: list[str] = field(default_factory=list)
    holdout: dict[str, float] = field(default_factory=dict)
    confidence_accuracy: list[float | None] = field(default_factory=list)
    confidence_counts: list[int] = field(default_factory=list)
    confidence_mean: float | None = None
    conf_offset: int = -1  # index of conf_count in the vector (classification)

    @classmethod
    def from_reference(cls, name: str, version: int, ref: dict[str, Any]) -> Reference:
        """From ``$info.reference`` (:func:`edgeml.runtime.payloads.reference`)."""
        return cls.build(
            name=name, version=version, task=str(ref.get("task") or ""),
            inputs=[str(n) for n in ref.get("inputs") or []], profile=ref.get("profile") or {},
            categories=ref.get("categories") or {}, classes=ref.get("classes") or [],
            metrics=ref.get("metrics") or {})

    @classmethod
    def from_manifest(cls, manifest: Any) -> Reference:
        from edgeml.runtime.payloads import reference

        return cls.from_reference(manifest.name, manifest.version, reference(manifest))

    @classmethod
    def build(cls, *, name: str, version: int, task: str, inputs: list[str],
              profile: dict[str, Any], categories: dict[str, list[str]], classes: list[str],
              metrics: dict[str, Any]) -> Reference:
        feats = profile.get("features") or {}
        segments: list[Segment] = []
        pos = 0
        for input_name in inputs:
            fr = feats.get(input_name) or {}
            kind = str(fr.get("kind") or ("categorical" if input_name in categories else "numeric"))
            if kind == "categorical":
                cats = list(categories.get(input_name) or [])
                freq = fr.get("frequencies") or {}
                ref_p = np.asarray([float(freq.get(c, 0.0)) for c in cats] + [0.0])
                width = len(cats) + 1
                ref_p = ref_p / ref_p.sum() if ref_p.sum() > 0 else np.full(width, 1.0 / width)
            elif kind == "text":
                width, ref_p = _bins_of(fr, "length_bin_edges", "length_counts")
            else:
                width, ref_p = _bins_of(fr, "bin_edges", "counts")
            rate = fr.get("missing_rate")
            segments.append(Segment(input_name, kind, pos + HEAD, width, ref_p,
                                    float(rate) if isinstance(rate, (int, float)) else 0.0))
            pos += HEAD + width
        pr = profile.get("prediction") or {}
        prediction: Segment | None = None
        conf_offset = -1
        conf_acc: list[float | None] = []
        conf_counts: list[int] = []
        conf_mean: float | None = None
        if task == "classification":
            freq = pr.get("frequencies") or {}
            ref_p = np.asarray([float(freq.get(c, 0.0)) for c in classes])
            width = len(classes)
            prediction = Segment("prediction", "prediction", pos + 1, width,
                                 ref_p / ref_p.sum() if ref_p.sum() > 0 else np.full(width, 1.0 / max(width, 1)))
            conf_offset = pos + 1 + width
            pos += 1 + width + 2 + CONFIDENCE_BINS
            conf = pr.get("confidence") or {}
            conf_acc = list(conf.get("accuracy") or [])
            conf_counts = _ints(conf.get("counts"))
            conf_mean = conf.get("mean") if isinstance(conf.get("mean"), (int, float)) else None
        elif task == "anomaly":
            width, ref_p = _bins_of(pr, "bin_edges", "counts")
            prediction = Segment("prediction", "prediction", pos + 2, width, ref_p)
            pos += 2 + width
        elif task == "regression":
            width, ref_p = _bins_of(pr, "bin_edges", "counts")
            prediction = Segment("prediction", "prediction", pos + HEAD, width, ref_p)
            pos += HEAD + width
        holdout = metrics.get("holdout") if isinstance(metrics.get("holdout"), dict) else {}
        scalars = {str(k): float(v) for k, v in (holdout or {}).items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)}
        return cls(name=name, version=version, task=task, inputs=inputs, segments=segments,
                   prediction=prediction, width=pos, classes=[str(c) for c in classes],
                   holdout=scalars, confidence_accuracy=conf_acc, confidence_counts=conf_counts,
                   confidence_mean=conf_mean, conf_offset=conf_offset)

    def unpack(self, blobs: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
        """Stack packed windows into ``[rows, width]``; also a mask of the rows that fit."""
        sizes = np.fromiter((len(b) for b in blobs), dtype=np.int64, count=len(blobs))
        ok = sizes == self.width * 4
        good = blobs if ok.all() else [b for b, fit in zip(blobs, ok.tolist(), strict=True) if fit]
        if not good:
            return np.zeros((0, self.width), dtype=np.int32), ok
        return np.frombuffer(b"".join(good), dtype=DTYPE).reshape(len(good), self.width), ok
